"""Hugging Face transformers (5.x) integration.

    import proxyattn.hf
    proxyattn.hf.enable(gamma=0.95)                     # registers attn_implementation="proxyattn"
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="proxyattn")

    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="paged|proxyattn")
    model.generate_batch(prompts, ...)                  # transformers' continuous batching

"paged|proxyattn" (proxyattn/_hf_paged.py) is the continuous-batching engine's attention:
prefill chunks of at least a block of queries and `dense_below` keys run ProxyAttn, with each
layer's estimation state beside its cache pages; decode steps and short chunks run the
engine's paged SDPA. On a forward without the engine's paged cache (model.generate) it runs
"proxyattn" without a padding mask (the model makes none for this name): load padded batches
for model.generate with "proxyattn".

Prefill (no cached prefix, no padding, at least `dense_below` tokens) runs ProxyAttn;
decoding, short prompts, padded batches and the layers named in `dense_layers` run
transformers' own SDPA attention, and so do calls the library cannot run on their device
(ProxyAttnUnsupported: e.g. head_dim other than 64 and 128, or float32, on a GPU), with a
warning the first time for each reason.
"""
import warnings

from . import _api, _hf_paged
from ._C import ProxyAttnUnsupported
from ._settings import DEFAULT, settings_of

NAME = "proxyattn"
PAGED_NAME = _hf_paged.NAME
_settings = DEFAULT  # enable()'s proxyattn.Settings
_dense_layers = set()  # layer_idx of the layers that always run dense
_warned = set()  # the unsupported cases already reported


def _can_use_proxyattn(query, key, attention_mask, dropout):
    """Causal prefill of whole sequences: queries and keys of the same length, no padding
    mask (the registered mask function leaves a pure causal mask as None), no dropout."""
    n = query.shape[2]
    dense_below = _settings.resolve(query.shape[-1]).dense_below
    return attention_mask is None and dropout == 0.0 and key.shape[2] == n and n >= max(dense_below, 1)


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, Hq, N, d], key/value [B, Hkv, N, d] ->
    (output [B, N, Hq, d], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if getattr(module, "layer_idx", None) in _dense_layers or \
            not _can_use_proxyattn(query, key, attention_mask, dropout if module.training else 0.0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    scale = {} if scaling is None else {"softmax_scale": float(scaling)}  # the model's
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, N, H, d] views
    try:
        out = _api.attention(q, k, v, settings=_settings, **scale)
    except ProxyAttnUnsupported as e:  # raised before any output is written
        if str(e) not in _warned:
            _warned.add(str(e))
            warnings.warn(f"proxyattn: running transformers' SDPA attention instead: {e}", stacklevel=2)
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    return out, None


def _current_settings():
    return _settings


paged_attention_forward = _hf_paged.make_attention(attention_forward, _current_settings, _dense_layers)


def enable(dense_layers=(), *, settings=None, **changes):
    """Registers attn_implementation="proxyattn" (model.generate and plain forwards) and
    "paged|proxyattn" (transformers' continuous batching: generate_batch, the serving app)
    with transformers; settings as in
    proxyattn.attention (a proxyattn.Settings and/or keyword settings: gamma,
    num_proxy_groups, block_size, min_budget_tokens, ...), checked here: invalid ones raise
    now, naming the field. A model's own softmax scale (its attention's `scaling`) replaces
    softmax_scale. dense_layers: layer indices (transformers' layer_idx) that always run
    dense, e.g. [0] for models whose first layer's attention the last query block's budget
    underestimates (docs/accuracy.md, Qwen2.5-Coder-0.5B)."""
    global _settings
    settings = settings_of(settings, **changes)
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    layers = set()
    for layer in dense_layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"dense_layers: {layer!r} is not a layer index (an int >= 0)")
        layers.add(layer)
    _settings = settings
    _dense_layers.clear()
    _dense_layers.update(layers)
    AttentionInterface.register(NAME, attention_forward)
    AttentionInterface.register(PAGED_NAME, paged_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # (none for PAGED_NAME: the engine's forwards take no mask)
