"""torch.library custom ops for proxyattn.attention, attention_varlen and
attention_with_kvcache, with fake (meta) implementations, so torch.compile traces them without
graph breaks. Imported on first use with torch tensors.

Eager calls that autograd does not record go straight to the library: the custom op's
dispatch costs 0.1-0.2 ms of host time per call on the H100 machine (python -m proxyattn.bench call,
bench/results/calls-before-*), two to three times the library's own launches.

The ops take lengths (cu_seqlens, cache_seqlens) as tensors, lists turned into host tensors
before the call; their values are read, and checked, when the op runs. The fake
implementations need only q's shape: out like q, lse [Hq, total_q] (attention: [B, Hq, N])."""
import inspect
from typing import Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _api, _C
from ._settings import ConfigValues

# The ops' last arguments: pa_config's values (Settings.resolve), named and typed by the C
# struct's fields, so that the settings cross the op as plain ints and floats, resolved once.
_CONFIG_ARGUMENTS = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                       annotation=float if is_float else int)
                     for name, _, _, is_float in _C.CONFIG_FIELDS]


def _config_arguments(fn):
    """fn(..., *config) with the signature torch.library infers the op's schema from: its own
    arguments, then _CONFIG_ARGUMENTS in place of *config."""
    signature = inspect.signature(fn)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_POSITIONAL]
    fn.__signature__ = signature.replace(parameters=own + _CONFIG_ARGUMENTS)
    return fn


@torch.library.custom_op("proxyattn::attention", mutates_args=())
@_config_arguments
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *config) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _api._attention_eager(q, k, v, True, ConfigValues(*config))
    return out, lse


@_attention_op.register_fake
def _(q, k, v, *config):
    b, n, hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, hq, n), dtype=torch.float32)


@torch.library.custom_op("proxyattn::attention_varlen", mutates_args=())
@_config_arguments
def _varlen_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: Optional[torch.Tensor], max_seqlen_q: Optional[int], max_seqlen_k: Optional[int],
               *config) -> tuple[torch.Tensor, torch.Tensor]:
    return _api._attention_varlen_checked(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, True,
                                          ConfigValues(*config))


@torch.library.custom_op("proxyattn::attention_with_kvcache", mutates_args=("proxy_state",))
@_config_arguments
def _kvcache_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: Optional[int],
                proxy_state: Optional[torch.Tensor], *config) -> tuple[torch.Tensor, torch.Tensor]:
    """proxy_state: the ProxyState's tensor (the call writes its positions' proxies there)."""
    config = ConfigValues(*config)
    state = None if proxy_state is None else _api.ProxyState._wrap(proxy_state, k_cache, config)
    return _api._kvcache_checked(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q, max_seqlen_q, state,
                                 True, config)


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


def attention(q, k, v, return_lse, config):
    """Calls the library directly in eager inference, else the custom op with config (pa_config's
    values, Settings.resolve) as its last arguments: under torch.compile, for fake and meta
    tensors, and where autograd would record the call (the op has no backward; it says so at
    backward time)."""
    if _eager_inference(q, k, v):  # attention() has checked the arguments
        return _api._attention_checked(q, k, v, return_lse, config)
    out, lse = torch.ops.proxyattn.attention(q, k, v, *config)
    return (out, lse) if return_lse else out


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, return_lse, config):
    """attention_varlen() on torch tensors whose shapes are checked, as attention(): (out, lse
    or None)."""
    if _eager_inference(q, k, v):
        return _api._attention_varlen_checked(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              return_lse, config)
    cu_name = _api._varlen_names(cu_seqlens_k is not None)[0]
    out, lse = torch.ops.proxyattn.attention_varlen(q, k, v, _lengths(cu_seqlens_q, cu_name, "[num_seqs + 1]"),
                                                    _lengths(cu_seqlens_k, "cu_seqlens_k", "[num_seqs + 1]"),
                                                    max_seqlen_q, max_seqlen_k, *config)
    return out, (lse if return_lse else None)


def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q, max_seqlen_q, proxy_state,
                           return_lse, config):
    """attention_with_kvcache() on a packed q and tensors whose shapes are checked, as
    attention(): (out, lse or None). The op mutates the state's tensor."""
    state_tensor = None if proxy_state is None else proxy_state.tensor
    tensors = [t for t in (q, k_cache, v_cache, state_tensor) if t is not None]
    if _eager_inference(*tensors):
        return _api._kvcache_checked(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q, max_seqlen_q,
                                     proxy_state, return_lse, config)
    out, lse = torch.ops.proxyattn.attention_with_kvcache(q, k_cache, v_cache,
                                                          _lengths(cache_seqlens, "cache_seqlens", "[num_seqs]"),
                                                          block_table,
                                                          _lengths(cu_seqlens_q, "cu_seqlens_q", "[num_seqs + 1]"),
                                                          max_seqlen_q, state_tensor, *config)
    return out, (lse if return_lse else None)
