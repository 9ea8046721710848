"""Context-parallel prefill of a whole transformers causal LM: every rank of the group runs the
model on its zigzag shard of one prompt (its tokens at their positions), each attention layer
through attention() over the group; embeddings, norms, MLPs and RoPE are per token and run on
the rank's tokens alone. The ranks together give the prompt's next-token logits::

    ids = proxyattn.distributed.shard(prompt_ids, rank, world_size, block_size=128)
    logits = proxyattn.distributed.prefill(model, ids, seq_len=len(prompt_ids), gamma=0.95)

Attention runs as transformers' attn_implementation "proxyattn_cp" for the call (the model's
own is restored after it); no attention mask is built for it, as the layout fixes causality.
No KV cache is kept: this is the prompt's time to first token, not a generation."""
import contextlib
import dataclasses

import torch
import torch.distributed as dist

from .._settings import settings_of
from . import collectives
from .attention import EXCHANGES, attention
from .layout import ZigzagLayout, shard

NAME = "proxyattn_cp"


@dataclasses.dataclass(frozen=True)
class _Call:
    seq_len: int
    group: object
    exchange: str
    settings: object      # proxyattn.Settings of the sparse layers
    dense_layers: frozenset


_call = None  # the prefill() in progress


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function of "proxyattn_cp": query [1, Hq, shard_tokens, d], key and
    value [1, Hkv, shard_tokens, d] -> (output [1, shard_tokens, Hq, d], None)."""
    if _call is None:
        raise RuntimeError(f'attn_implementation "{NAME}" runs inside proxyattn.distributed.prefill() only')
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [shard_tokens, H, d]
    changes = {} if scaling is None else {"softmax_scale": float(scaling)}  # the model's
    if getattr(module, "layer_idx", None) in _call.dense_layers:
        changes["dense_below"] = _call.seq_len + 1  # every piece dense, over the same exchange
    out = attention(q, k, v, _call.seq_len, group=_call.group, exchange=_call.exchange, settings=_call.settings,
                    **changes)
    return out[None], None


def _register():
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, attention_forward)


@contextlib.contextmanager
def _running(model, call):
    global _call
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    _call = call
    try:
        yield
    finally:
        _call = None
        model.set_attn_implementation(previous)


def _head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def prefill(model, input_ids, seq_len, *, group=None, exchange="gather", dense_layers=(), settings=None,
            **changes):
    """The next-token logits [vocab] (float32, on every rank) of a prompt of seq_len tokens whose
    zigzag shard input_ids [shard_tokens] (shard(prompt_ids, rank, world_size, block_size) with
    the settings' block_size) this rank holds; model is a transformers causal LM on the group's
    device (CUDA for NCCL, the CPU for gloo), every rank calling with the same model, seq_len,
    exchange, dense_layers and settings. dense_layers: layer indices whose attention runs dense
    (over the same exchange). Settings as in proxyattn.attention(); the model's softmax scale
    replaces softmax_scale. Raises ValueError (on every rank, as they agree on the layout) when
    some rank would hold no token, and DistributedInputError when the ranks' calls differ."""
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange = {exchange!r}: one of {EXCHANGES}")
    settings = settings_of(settings, **changes)
    layers = set()
    for layer in dense_layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"dense_layers: {layer!r} is not a layer index (an int >= 0)")
        layers.add(layer)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    block = settings.resolve(_head_dim(model.config)).block_size
    layout = ZigzagLayout(seq_len, world, block)
    empty = [r for r in range(world) if layout.shard_len(r) == 0]
    if empty:
        raise ValueError(f"seq_len = {seq_len}: ranks {empty} of {world} would hold no token (block_size {block}): "
                         f"prefill a prompt this short on fewer ranks")
    ids = input_ids.reshape(-1)
    if ids.shape[0] != layout.shard_len(rank):
        raise ValueError(f"input_ids: {ids.shape[0]} tokens, but the zigzag layout of seq_len = {seq_len} over "
                         f"{world} ranks (block_size = {block}) gives rank {rank} {layout.shard_len(rank)} "
                         f"(proxyattn.distributed.shard)")
    positions = shard(torch.arange(seq_len, device=ids.device), rank, world, block)
    with _running(model, _Call(seq_len, group, exchange, settings, frozenset(layers))), torch.no_grad():
        out = model(input_ids=ids[None], position_ids=positions[None], use_cache=False, logits_to_keep=1)
    # The last piece ends its owner's shard: that rank's last row is the prompt's last token.
    logits = out.logits[0, -1].float().contiguous()
    owner = layout.owner(layout.last_piece())
    dist.broadcast(logits, src=collectives.global_rank(group, owner), group=group)
    return logits
