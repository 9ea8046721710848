"""torch.library custom ops for proxyattn.attention, attention_varlen and
attention_with_kvcache, with fake (meta) implementations, so torch.compile traces them without
graph breaks. Imported on first use with torch tensors.

Eager calls that autograd does not record go straight to the library: the custom op's
dispatch costs 0.1-0.2 ms of host time per call on the H100 machine (bench/call_bench.py,
bench/results/calls-before-*), two to three times the library's own launches.

The ops take lengths (cu_seqlens, cache_seqlens) as tensors, lists turned into host tensors
before the call; their values are read, and checked, when the op runs. The fake
implementations need only q's shape: out like q, lse [Hq, total_q] (attention: [B, Hq, N])."""
from typing import Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _api

_SETTING_NAMES = ("gamma", "num_proxy_groups", "block_size", "stride", "min_budget_tokens", "budget_mode",
                  "force_sink", "force_local", "dense_below", "softmax_scale", "anchor_blocks")
_BUDGET_MODE_NAMES = {v: k for k, v in _api.BUDGET_MODES.items()}


def _settings(values):
    """The settings of an op's setting arguments (_SETTING_NAMES order), for make_config."""
    settings = dict(zip(_SETTING_NAMES, values))
    settings["budget_mode"] = _BUDGET_MODE_NAMES[settings["budget_mode"]]
    return settings


def _setting_arguments(d, settings):
    """The ops' setting arguments (_SETTING_NAMES order, schema types) of a call's keyword
    settings: make_config's defaults filled and resolved in plain Python, which torch.compile
    traces (make_config builds a library object it cannot)."""
    unknown = sorted(set(settings) - set(_api.SETTING_DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected setting {unknown[0]!r} (settings: {', '.join(_SETTING_NAMES)})")
    s = {**_api.SETTING_DEFAULTS, **settings}
    if s["budget_mode"] not in _api.BUDGET_MODES:
        raise ValueError(f"budget_mode: {s['budget_mode']!r} is not one of {sorted(_api.BUDGET_MODES)}")
    s["budget_mode"] = _api.BUDGET_MODES[s["budget_mode"]]
    if s["dense_below"] is None:
        s["dense_below"] = s["min_budget_tokens"]
    if s["softmax_scale"] is None:
        s["softmax_scale"] = d ** -0.5
    s["anchor_blocks"] = _api.anchor_blocks_code(s["anchor_blocks"])
    types = {"gamma": float, "softmax_scale": float, "force_sink": bool, "force_local": bool}
    return [types.get(name, int)(s[name]) for name in _SETTING_NAMES]


@torch.library.custom_op("proxyattn::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: float, num_proxy_groups: int,
                  block_size: int, stride: int, min_budget_tokens: int, budget_mode: int, force_sink: bool,
                  force_local: bool, dense_below: int, softmax_scale: float,
                  anchor_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    settings = _settings((gamma, num_proxy_groups, block_size, stride, min_budget_tokens, budget_mode, force_sink,
                          force_local, dense_below, softmax_scale, anchor_blocks))
    out, lse = _api._attention_eager(q, k, v, True, settings)
    return out, lse


@_attention_op.register_fake
def _(q, k, v, *settings):
    b, n, hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, hq, n), dtype=torch.float32)


@torch.library.custom_op("proxyattn::attention_varlen", mutates_args=())
def _varlen_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: Optional[torch.Tensor], max_seqlen_q: Optional[int], max_seqlen_k: Optional[int],
               gamma: float, num_proxy_groups: int, block_size: int, stride: int, min_budget_tokens: int,
               budget_mode: int, force_sink: bool, force_local: bool, dense_below: int, softmax_scale: float,
               anchor_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    settings = _settings((gamma, num_proxy_groups, block_size, stride, min_budget_tokens, budget_mode, force_sink,
                          force_local, dense_below, softmax_scale, anchor_blocks))
    return _api._attention_varlen_checked(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, True,
                                          settings)


@torch.library.custom_op("proxyattn::attention_with_kvcache", mutates_args=("proxy_state",))
def _kvcache_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: Optional[int],
                proxy_state: Optional[torch.Tensor], gamma: float, num_proxy_groups: int, block_size: int,
                stride: int, min_budget_tokens: int, budget_mode: int, force_sink: bool, force_local: bool,
                dense_below: int, softmax_scale: float, anchor_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """proxy_state: the ProxyState's tensor (the call writes its positions' proxies there)."""
    settings = _settings((gamma, num_proxy_groups, block_size, stride, min_budget_tokens, budget_mode, force_sink,
                          force_local, dense_below, softmax_scale, anchor_blocks))
    state = None if proxy_state is None else _api.ProxyState._wrap(proxy_state, k_cache, num_proxy_groups, stride)
    return _api._kvcache_checked(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q, max_seqlen_q, state,
                                 True, settings)


def _packed_fake(q, *args):
    """out and lse of a packed q [total_q, Hq, d]."""
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


_varlen_op.register_fake(_packed_fake)
_kvcache_op.register_fake(_packed_fake)


def _eager_inference(*tensors):
    """Whether a call may skip the op: plain CPU or CUDA tensors, outside torch.compile and
    any dispatch mode (fake, meta and subclass tensors, e.g. for shape inference, take the
    op and its fake implementation), and not recorded by autograd."""
    return (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None and
            all(type(t) is torch.Tensor and t.device.type in ("cpu", "cuda") for t in tensors) and
            not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def _lengths(x, name, layout):
    """Lengths for an op: tensors as they are, lists and arrays as host int64 tensors of their
    values, checked to be integers (name, layout in messages) before they become a tensor."""
    if x is None or isinstance(x, torch.Tensor):
        return x
    return torch.tensor(_api._host_ints(x, name, layout), dtype=torch.int64)


def attention(q, k, v, return_lse, settings):
    """Calls the library directly in eager inference, else the custom op with settings
    resolved to plain values (schema types): under torch.compile, for fake and meta tensors,
    and where autograd would record the call (the op has no backward; it says so at
    backward time)."""
    if _eager_inference(q, k, v):  # attention() has checked the arguments
        return _api._attention_checked(q, k, v, return_lse, settings)
    out, lse = torch.ops.proxyattn.attention(q, k, v, *_setting_arguments(q.shape[-1], settings))
    return (out, lse) if return_lse else out


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, return_lse, settings):
    """attention_varlen() on torch tensors whose shapes are checked, as attention(): (out, lse
    or None)."""
    if _eager_inference(q, k, v):
        return _api._attention_varlen_checked(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              return_lse, settings)
    cu_name = _api._varlen_names(cu_seqlens_k is not None)[0]
    out, lse = torch.ops.proxyattn.attention_varlen(q, k, v, _lengths(cu_seqlens_q, cu_name, "[num_seqs + 1]"),
                                                    _lengths(cu_seqlens_k, "cu_seqlens_k", "[num_seqs + 1]"),
                                                    max_seqlen_q, max_seqlen_k,
                                                    *_setting_arguments(q.shape[-1], settings))
    return out, (lse if return_lse else None)


def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q, max_seqlen_q, proxy_state,
                           return_lse, settings):
    """attention_with_kvcache() on a packed q and tensors whose shapes are checked, as
    attention(): (out, lse or None). The op mutates the state's tensor."""
    state_tensor = None if proxy_state is None else proxy_state.tensor
    tensors = [t for t in (q, k_cache, v_cache, state_tensor) if t is not None]
    if _eager_inference(*tensors):
        return _api._kvcache_checked(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q, max_seqlen_q,
                                     proxy_state, return_lse, settings)
    out, lse = torch.ops.proxyattn.attention_with_kvcache(q, k_cache, v_cache,
                                                          _lengths(cache_seqlens, "cache_seqlens", "[num_seqs]"),
                                                          block_table,
                                                          _lengths(cu_seqlens_q, "cu_seqlens_q", "[num_seqs + 1]"),
                                                          max_seqlen_q, state_tensor,
                                                          *_setting_arguments(q.shape[-1], settings))
    return out, (lse if return_lse else None)
