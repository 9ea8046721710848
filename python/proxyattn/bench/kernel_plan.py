"""Plans of the kernel suites (attention, energy, chunked, profile, estimate): device plans of
one sequence on this module's library or on a second build of it (_C.Library, an A/B in one
run), their index written by hand (masks.py) or estimated, their tuning changed per call."""
import os

import torch

import proxyattn
from proxyattn import _C
from proxyattn._api import _dl

from .config import BLOCK_SIZE

SM80 = {"attn_kernel": _C.TUNING_KERNEL_SM80}  # our sm80 kernel (row-major item order, params.hpp)
LIBRARY_FILE = "libproxyattn.so"  # a shared build's library (BUILD_SHARED_LIBS=ON)


def load_library(build_dir):
    """The shared library of a build folder, for plans of that build (Plan's library)."""
    return _C.Library(os.path.join(build_dir, LIBRARY_FILE))


def index_config(d):
    """The settings of a plan whose index is written by hand: block BLOCK_SIZE, one proxy
    group, no budget floor, no sequence dense by its length."""
    return proxyattn.Settings(block_size=BLOCK_SIZE, min_budget_tokens=0, dense_below=0,
                              num_proxy_groups=1).resolve(d)


def plan(shape, q_len, like, config, kv_len=None, library=None, page_size=0, num_pages=0):
    """A plan of one sequence of q_len tokens, or with kv_len a chunk's: q_len queries at the
    end of kv_len keys, packed or, with page_size, in a paged cache of num_pages pages."""
    return proxyattn.Plan([0, q_len], shape.hq, shape.hkv, shape.d, like, config,
                          cu_seqlens_k=None if kv_len is None else [0, kv_len], page_size=page_size,
                          num_pages=num_pages, max_pages_per_seq=num_pages, library=library)


def random_inputs(n, shape):
    """Random bf16 q [N, Hq, d], k and v [N, Hkv, d], o like q, and q, k, v as [1, H, N, d]
    (the layout cuDNN and Flex take)."""
    q = torch.randn(n, shape.hq, shape.d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, shape.hkv, shape.d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(n, shape.hkv, shape.d, device="cuda", dtype=torch.bfloat16)
    qt, kt, vt = (x.permute(1, 0, 2).contiguous()[None] for x in (q, k, v))
    return q, k, v, torch.empty_like(q), qt, kt, vt


def attend_call(p, q, k, v, o, stream):
    """A call of pa_attend on plan p (its index set)."""
    return lambda: p._plan.attend(_dl(q), _dl(k), _dl(v), _dl(o), None, stream)


def attend_kv_call(p, q, k, v, o, stream, block_table=None):
    """A call of pa_attend_kv on a chunk's plan p: keys packed, or a paged cache with its table."""
    return lambda: p._plan.attend_kv(_dl(q), _dl(k), _dl(v), _dl(block_table), None, _dl(o), None, stream)


def estimate_call(p, q, k, stream):
    """A call of pa_estimate on plan p with its own workspace."""
    return lambda: p._plan.estimate(_dl(q), _dl(k), _dl(p._workspace), stream)


def estimate_kv_call(p, q, k_cache, block_table, state, stream):
    """A call of pa_estimate_kv on a chunk's plan p from a paged cache with its ProxyState."""
    return lambda: p._plan.estimate_kv(_dl(q), _dl(k_cache), _dl(block_table), state._handle, _dl(p._workspace),
                                       stream)


def tuned(p, fn, **fields):
    """A call running fn() with these fields of plan p's tuning changed, and the tuning p has
    now restored after it (both made here, where Plan.set_tuning checks the fields: a call
    costs two host calls)."""
    base = p._plan.tuning()
    p.set_tuning(**fields)
    changed = p._plan.tuning()
    p._plan.set_tuning(base)

    def call():
        p._plan.set_tuning(changed)
        try:
            return fn()
        finally:
            p._plan.set_tuning(base)
    return call
