"""torch.library custom op for proxyattn.attention, with a fake (meta) implementation, so
torch.compile traces it without graph breaks. Imported on first use with torch tensors.

Eager calls that autograd does not record go straight to the library: the custom op's
dispatch cost 0.1-0.2 ms of host time per call on the H100 machine (bench/call_bench.py,
2026-11-24), two to three times the library's own launches."""
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _api

_SETTING_NAMES = ("gamma", "num_proxy_groups", "block_size", "stride", "min_budget_tokens", "budget_mode",
                  "force_sink", "force_local", "dense_below", "softmax_scale", "anchor_blocks")


@torch.library.custom_op("proxyattn::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: float, num_proxy_groups: int,
                  block_size: int, stride: int, min_budget_tokens: int, budget_mode: int, force_sink: bool,
                  force_local: bool, dense_below: int, softmax_scale: float,
                  anchor_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    settings = dict(gamma=gamma, num_proxy_groups=num_proxy_groups, block_size=block_size, stride=stride,
                    min_budget_tokens=min_budget_tokens,
                    budget_mode={v: k for k, v in _api.BUDGET_MODES.items()}[budget_mode],
                    force_sink=force_sink, force_local=force_local, dense_below=dense_below,
                    softmax_scale=softmax_scale, anchor_blocks=anchor_blocks)
    out, lse = _api._attention_eager(q, k, v, True, settings)
    return out, lse


@_attention_op.register_fake
def _(q, k, v, gamma, num_proxy_groups, block_size, stride, min_budget_tokens, budget_mode, force_sink,
      force_local, dense_below, softmax_scale, anchor_blocks):
    b, n, hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, hq, n), dtype=torch.float32)


def _eager_inference(*tensors):
    """Whether a call may skip the op: plain CPU or CUDA tensors, outside torch.compile and
    any dispatch mode (fake, meta and subclass tensors, e.g. for shape inference, take the
    op and its fake implementation), and not recorded by autograd."""
    return (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None and
            all(type(t) is torch.Tensor and t.device.type in ("cpu", "cuda") for t in tensors) and
            not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def attention(q, k, v, return_lse, settings):
    """Calls the library directly in eager inference, else the custom op with settings
    resolved to plain values (schema types): under torch.compile, for fake and meta tensors,
    and where autograd would record the call (the op has no backward; it says so at
    backward time)."""
    if _eager_inference(q, k, v):  # attention() has checked the arguments
        return _api._attention_checked(q, k, v, return_lse, settings)
    d = q.shape[-1]
    s = dict(settings)
    s["budget_mode"] = _api.BUDGET_MODES[s["budget_mode"]]
    if s["dense_below"] is None:
        s["dense_below"] = s["min_budget_tokens"]
    if s["softmax_scale"] is None:
        s["softmax_scale"] = d ** -0.5
    s["anchor_blocks"] = _api.anchor_blocks_code(s["anchor_blocks"])
    out, lse = torch.ops.proxyattn.attention(q, k, v, *(s[name] for name in _SETTING_NAMES))
    return (out, lse) if return_lse else out
