"""proxyattn: ProxyAttn block-sparse attention for the prefill of long prompts.

Drop-in attention in the flash-attn convention::

    out = proxyattn.attention(q, k, v, gamma=0.95)          # q [B, N, Hq, d], k/v [B, N, Hkv, d]
    out = proxyattn.attention_varlen(q, k, v, cu_seqlens, max_seqlen)   # packed [total, H, d]
    out = proxyattn.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k)   # a chunk after its prefix
    out = proxyattn.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, block_table,
                                           proxy_state=state)   # a paged cache (vLLM's layout)
    plan = proxyattn.estimate(q, k)                          # inspectable: budgets, density, ...
    out = proxyattn.attend(plan, q, k, v)

Settings (proxyattn.Settings: gamma, block_size, stride, ...) go to every call as keyword
arguments or as one object, checked by the library when it is made::

    settings = proxyattn.Settings(gamma=0.9, num_proxy_groups=2)
    out = proxyattn.attention(q, k, v, settings=settings)

Tensors may be torch tensors (CPU or CUDA; calls run on the current CUDA stream, buffers
come from torch's allocator) or numpy arrays (CPU). Causal attention only (prefill).
"""
from . import _C
from ._C import ProxyAttnError, ProxyAttnUnsupported
from ._api import (Plan, ProxyState, attend, attention, attention_varlen, attention_with_kvcache, clear_plan_cache,
                   dense_attention, estimate, set_num_threads)
from ._settings import Settings

__all__ = [
    "Plan",
    "ProxyAttnError",
    "ProxyAttnUnsupported",
    "ProxyState",
    "Settings",
    "attend",
    "attention",
    "attention_varlen",
    "attention_with_kvcache",
    "clear_plan_cache",
    "dense_attention",
    "estimate",
    "set_num_threads",
]
__version__ = "0.1.0"
