"""Chunked prefill and paged caches from Python (issue 22): attention_varlen with cu_seqlens_k
(flash-attn's flash_attn_varlen_func) and attention_with_kvcache (flash_attn_with_kvcache's
paged form) with and without a ProxyState, on numpy arrays and torch tensors, on the CPU
backend: chunks against one-shot prefills of the prompt cut at their end, paged against
packed, decode steps against dense attention, and every bad argument named."""
import numpy as np
import pytest

import proxyattn
from proxyattn import _api, _C

try:
    import torch
except ImportError:
    torch = None

HQ, HKV, D = 4, 2, 32
# The C tests' setting (tests/cpu/test_chunked.cpp): sparse from 512 keys on.
SETTINGS = dict(block_size=64, min_budget_tokens=256, dense_below=512, gamma=0.9)
N = 1300


def as_fw(fw, x):
    return torch.from_numpy(np.ascontiguousarray(x)) if fw == "torch" else x


def as_numpy(x):
    return x.numpy() if torch is not None and isinstance(x, torch.Tensor) else np.asarray(x)


def prompt(n=N, seed=7):
    """A structured prompt (sinks, local band, verticals, needles), float32 [n, H, d]."""
    q = np.empty((n, HQ, D), np.float32)
    k, v = np.empty((n, HKV, D), np.float32), np.empty((n, HKV, D), np.float32)
    _C.synth_generate([0, n], seed, q, k, v)
    return q, k, v


class Cache:
    """A paged cache of pages in a shuffled order, NaN where no sequence wrote (a read of a page
    the block table does not give would show)."""

    def __init__(self, page_size, max_pages, num_seqs=1, spare=3, seed=3):
        self.page_size = page_size
        self.num_pages = num_seqs * max_pages + spare
        self.k = np.full((self.num_pages, page_size, HKV, D), np.nan, np.float32)
        self.v = self.k.copy()
        pages = np.random.default_rng(seed).permutation(self.num_pages).astype(np.int32)
        self.table = pages[:num_seqs * max_pages].reshape(num_seqs, max_pages)

    def write(self, seq, k, v, begin, end):
        """Positions [begin, end) of sequence seq (the engine's cache update)."""
        for t in range(begin, end):
            page = self.table[seq, t // self.page_size]
            self.k[page, t % self.page_size] = k[t]
            self.v[page, t % self.page_size] = v[t]


def close(a, b, tol=1e-5):
    a, b = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
    return a.shape == b.shape and np.all(np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b)))


def one_shot(q, k, v, end):
    """out [end, Hq, d] and lse [Hq, end] of a one-shot prefill of the prompt cut at end."""
    return proxyattn.attention_varlen(q[:end], k[:end], v[:end], [0, end], return_lse=True, **SETTINGS)


# ---- chunked prefill through attention_varlen ---------------------------------------------------------
def test_block_aligned_chunks_equal_the_one_shot_prefill(fw):
    """Chunks of 5 blocks: each chunk's rows are those of a one-shot prefill of the prompt cut at
    its end (the CPU library gives equal index rows), outputs and LSE alike."""
    n = 1280
    q, k, v = (as_fw(fw, t) for t in prompt(n))
    for begin in range(0, n, 320):
        end = begin + 320
        out, lse = proxyattn.attention_varlen(q[begin:end], k[:end], v[:end], [0, end - begin], [0, end],
                                              end - begin, end, return_lse=True, **SETTINGS)
        ref_out, ref_lse = one_shot(q, k, v, end)
        assert tuple(out.shape) == (end - begin, HQ, D) and tuple(lse.shape) == (HQ, end - begin)
        assert close(out, ref_out[begin:end]) and close(lse, ref_lse[:, begin:end]), f"chunk [{begin}, {end})"
    dense = proxyattn.dense_attention(q, k, v)
    assert not close(out, dense[960:], 1e-3)  # the last chunk ran sparse


def test_keys_given_as_the_queries_are_a_whole_prompt(fw):
    """cu_seqlens_k equal to cu_seqlens_q (flash-attn callers pass both) is the whole-prompt call."""
    q, k, v = (as_fw(fw, t) for t in prompt(900))
    cu = [0, 400, 900]
    a = proxyattn.attention_varlen(q, k, v, cu, cu, **SETTINGS)
    b = proxyattn.attention_varlen(q, k, v, cu, **SETTINGS)
    assert np.array_equal(as_numpy(a), as_numpy(b))


def test_older_signature_still_works(fw):
    """attention_varlen(q, k, v, cu_seqlens, max_seqlen) and its keywords, as before."""
    q, k, v = (as_fw(fw, t) for t in prompt(600))
    expected = as_numpy(proxyattn.attention_varlen(q, k, v, [0, 600], **SETTINGS))
    for out in (proxyattn.attention_varlen(q, k, v, [0, 600], 600, **SETTINGS),
                proxyattn.attention_varlen(q, k, v, [0, 600], np.int64(700), **SETTINGS),
                proxyattn.attention_varlen(q, k, v, cu_seqlens=[0, 600], max_seqlen=600, **SETTINGS),
                proxyattn.attention_varlen(q, k, v, cu_seqlens_q=[0, 600], max_seqlen_q=600, **SETTINGS)):
        assert np.array_equal(as_numpy(out), expected)


# ---- paged caches ------------------------------------------------------------------------------------
def test_paged_with_a_shuffled_block_table_equals_packed(fw):
    """A batch of a chunk after a prefix and a decode step, from pages in shuffled order, gives
    the bits of the same batch with packed keys; pages no sequence uses are NaN."""
    q, k, v = prompt()
    seqs = [(700, 1300), (999, 1000)]
    cache = Cache(64, 21, num_seqs=2)
    for s, (_, end) in enumerate(seqs):
        cache.write(s, k, v, 0, end)
    q_packed = np.concatenate([q[b:e] for b, e in seqs])
    cu_q, cu_k = [0, 600, 601], [0, 1300, 2300]
    k_packed = np.concatenate([k[:e] for _, e in seqs])
    v_packed = np.concatenate([v[:e] for _, e in seqs])
    packed, packed_lse = proxyattn.attention_varlen(*(as_fw(fw, t) for t in (q_packed, k_packed, v_packed)), cu_q,
                                                    cu_k, return_lse=True, **SETTINGS)
    paged, paged_lse = proxyattn.attention_with_kvcache(
        *(as_fw(fw, t) for t in (q_packed, cache.k, cache.v)), [1300, 1000], as_fw(fw, cache.table), cu_q,
        return_lse=True, **SETTINGS)
    assert np.array_equal(as_numpy(paged), as_numpy(packed)) and np.array_equal(as_numpy(paged_lse),
                                                                                as_numpy(packed_lse))
    assert np.isfinite(as_numpy(paged)).all()


@pytest.mark.parametrize("page_size", [16, 64, 128])
def test_uniform_q_and_page_sizes(fw, page_size):
    """q [B, q_len, Hq, d]: out like q, lse [B, Hq, q_len]; the same bits at every page size."""
    q, k, v = prompt()
    cache = Cache(page_size, -(-N // page_size))
    cache.write(0, k, v, 0, N)
    out, lse = proxyattn.attention_with_kvcache(as_fw(fw, q[None, 700:]), as_fw(fw, cache.k), as_fw(fw, cache.v),
                                                as_fw(fw, np.array([N], np.int32)), cache.table.tolist(),
                                                return_lse=True, **SETTINGS)
    assert tuple(out.shape) == (1, 600, HQ, D) and tuple(lse.shape) == (1, HQ, 600)
    packed, packed_lse = proxyattn.attention_varlen(*(as_fw(fw, t) for t in (q[700:], k, v)), [0, 600], [0, N],
                                                    return_lse=True, **SETTINGS)
    assert np.array_equal(as_numpy(out)[0], as_numpy(packed))
    assert np.array_equal(as_numpy(lse)[0], as_numpy(packed_lse))


def test_chunks_with_a_proxy_state_equal_the_one_shot_prefill(fw):
    """Chunks of 700 tokens (the second starts inside a block) into a cache with its estimation
    state: every chunk's rows equal a one-shot prefill's, its partial first block too."""
    q, k, v = prompt()
    cache = Cache(64, 21)
    kc, vc = as_fw(fw, cache.k), as_fw(fw, cache.v)  # torch.from_numpy shares the memory cache.write fills
    state = proxyattn.ProxyState(kc, num_proxy_groups=1, stride=4)
    assert as_numpy(state.tensor).nbytes == cache.num_pages * (64 // 4) * 2 * 1 * D * 4
    qf, kf, vf = (as_fw(fw, t) for t in (q, k, v))
    for begin, end in ((0, 700), (700, N)):
        cache.write(0, k, v, begin, end)
        out, lse = proxyattn.attention_with_kvcache(qf[None, begin:end], kc, vc, [end], cache.table,
                                                    proxy_state=state, return_lse=True, **SETTINGS)
        ref_out, ref_lse = one_shot(qf, kf, vf, end)
        assert close(out[0], ref_out[begin:end]) and close(lse[0], ref_lse[:, begin:end]), f"chunk [{begin}, {end})"
    assert np.any(as_numpy(state.tensor) != 0)  # the calls wrote their proxies


def test_decode_step_is_dense_attention(fw):
    """One query at the end of the cache (a decode step) equals dense attention's last row."""
    q, k, v = prompt()
    cache = Cache(16, -(-N // 16))
    cache.write(0, k, v, 0, N)
    dense, dense_lse = proxyattn.dense_attention(*(as_fw(fw, t) for t in (q, k, v)), return_lse=True)
    kc, vc = as_fw(fw, cache.k), as_fw(fw, cache.v)
    out, lse = proxyattn.attention_with_kvcache(as_fw(fw, q[N - 1:]), kc, vc, [N], as_fw(fw, cache.table), [0, 1],
                                                max_seqlen_q=1, return_lse=True, **SETTINGS)
    assert tuple(out.shape) == (1, HQ, D) and tuple(lse.shape) == (HQ, 1)
    assert close(out, dense[N - 1:]) and close(lse, dense_lse[:, N - 1:])
    out, lse = proxyattn.attention_varlen(*(as_fw(fw, t) for t in (q[N - 1:], k, v)), [0, 1], [0, N],
                                          return_lse=True, **SETTINGS)
    assert close(out, dense[N - 1:]) and close(lse, dense_lse[:, N - 1:])


def test_empty_batch(fw):
    q, k, v = prompt(64)
    cache = Cache(64, 1)
    out, lse = proxyattn.attention_with_kvcache(as_fw(fw, q[:0].reshape(0, 5, HQ, D)), as_fw(fw, cache.k),
                                                as_fw(fw, cache.v), [], np.zeros((0, 1), np.int32), return_lse=True)
    assert tuple(out.shape) == (0, 5, HQ, D) and tuple(lse.shape) == (0, HQ, 5)


def test_the_module_calls_agree():
    """_C.Plan's estimate_kv + attend_kv give forward_kv's bits."""
    q, k, v = prompt()
    cache = Cache(64, 21)
    cache.write(0, k, v, 0, N)
    config = proxyattn.Settings(**SETTINGS).resolve(D)
    plan = _api.Plan([0, 600], HQ, HKV, D, q, config, [0, N], 64, cache.num_pages, 21)
    qc = np.ascontiguousarray(q[700:])
    out1, out2 = np.empty_like(qc), np.empty_like(qc)
    plan._plan.estimate_kv(qc, cache.k, cache.table, None, plan._workspace, 0)
    plan._plan.attend_kv(qc, cache.k, cache.v, cache.table, None, out1, None, 0)
    plan._plan.forward_kv(qc, cache.k, cache.v, cache.table, None, out2, None, plan._workspace, 0)
    assert np.array_equal(out1, out2)
    num, idx = plan.to_flex(0)  # the chunk's rows 10 .. 20 of 21 key blocks
    assert num.shape == (HQ, 11) and idx.shape == (HQ, 11, 21)


# ---- errors that name the argument -----------------------------------------------------------------------
def varlen_call(**change):
    q, k, v = prompt()
    args = dict(q=q[700:], k=k, v=v, cu_seqlens_q=[0, 600], cu_seqlens_k=[0, N])
    args.update(change)
    return lambda: proxyattn.attention_varlen(**args, **SETTINGS)


@pytest.mark.parametrize("change, error, message", [
    (dict(cu_seqlens_k=[0, 1000]), ValueError,
     r"cu_seqlens_k\[1\] = 1000 differs from the token count of k \(k\.shape\[0\] = 1300\)"),
    (dict(cu_seqlens_k=[0, 500, N]), ValueError, r"cu_seqlens_k: 3 entries but cu_seqlens_q has 2"),
    (dict(cu_seqlens_q=[0, 300, 600], cu_seqlens_k=[0, 200, N]), ValueError,
     r"sequence 0: 300 queries but 200 keys \(cu_seqlens_k\)"),
    (dict(cu_seqlens_q=[0, 500]), ValueError,
     r"cu_seqlens_q\[1\] = 500 differs from the token count of q \(q\.shape\[0\] = 600\)"),
    (dict(cu_seqlens_k=[0, 1300.0]), TypeError, r"cu_seqlens_k\[1\] = 1300.0 is not an integer"),
    (dict(cu_seqlens_k=np.array([[0, N]])), ValueError, r"cu_seqlens_k: expected 1 dimension"),
    (dict(cu_seqlens_k=[0, 700, 600]), ValueError, r"cu_seqlens_k decreases at 2"),
    (dict(max_seqlen_k=1000), ValueError,
     r"max_seqlen_k = 1000 is smaller than the longest sequence of cu_seqlens_k \(sequence 0: 1300 tokens\)"),
    (dict(max_seqlen_q=10), ValueError, r"max_seqlen_q = 10 is smaller than the longest sequence of cu_seqlens_q"),
    (dict(v=np.zeros((N, HKV, 16), np.float32)), ValueError, r"k and v: shapes differ"),
    (dict(k=np.zeros((N, HKV, 16), np.float32), v=np.zeros((N, HKV, 16), np.float32)), ValueError,
     r"head_dim must match"),
    (dict(cu_seqlens=[0, 600]), TypeError, r"cu_seqlens and cu_seqlens_q: both given"),
    (dict(cu_seqlens_k=600, max_seqlen_q=600), TypeError, r"cu_seqlens_k = 600: a number"),
    (dict(cu_seqlens_k=None), ValueError, r"batch, tokens and head_dim must match"),
])
def test_varlen_errors_name_the_argument(change, error, message):
    with pytest.raises(error, match=message):
        varlen_call(**change)()


def kvcache_call(fw="numpy", **change):
    q, k, v = prompt()
    cache = Cache(64, 21)
    cache.write(0, k, v, 0, N)
    args = dict(q=q[700:], k_cache=cache.k, v_cache=cache.v, cache_seqlens=[N], block_table=cache.table,
                cu_seqlens_q=[0, 600])
    for name, value in change.items():
        args[name] = value(cache) if callable(value) else value
    args = {name: as_fw(fw, x) if isinstance(x, np.ndarray) else x for name, x in args.items()}
    settings = dict(SETTINGS, **args.pop("settings", {}))
    return lambda: proxyattn.attention_with_kvcache(**args, **settings)


def other_table(cache, page, value):
    table = cache.table.copy()
    table[0, page] = value
    return table


@pytest.mark.parametrize("change, error, message", [
    (dict(cache_seqlens=[1400]), ValueError,
     r"cache_seqlens\[0\] = 1400 exceeds the block table's 21 pages of 64 tokens \(block_table\.shape\[1\] x "
     r"k_cache\.shape\[1\] = 1344\)"),
    (dict(cache_seqlens=[500]), ValueError, r"sequence 0: 600 queries but cache_seqlens\[0\] = 500, which counts the "
                                            r"new queries' keys too"),
    (dict(cache_seqlens=[N, N]), ValueError, r"cache_seqlens: 2 lengths for 1 sequences"),
    (dict(cache_seqlens=[1300.5]), TypeError, r"cache_seqlens\[0\] = 1300.5 is not an integer"),
    (dict(cache_seqlens=N), TypeError, r"cache_seqlens: expected a list"),
    (dict(block_table=lambda c: c.table.astype(np.int64)), TypeError,
     r"block_table: dtype (torch\.)?int64, expected int32"),
    (dict(block_table=[[0.5] * 21]), TypeError, r"block_table\[0\]\[0\] = 0.5 is not an integer"),
    (dict(block_table=lambda c: np.zeros((2, 21), np.int32)), ValueError,
     r"block_table: shape \(2, 21\), expected \[num_seqs, max_pages\] with num_seqs = 1"),
    (dict(block_table=lambda c: c.table[0]), ValueError, r"block_table: shape \(21,\)"),
    (dict(block_table=lambda c: other_table(c, 3, c.num_pages)), ValueError,
     r"block_table\[0\]\[3\] = 24: outside k_cache's 24 pages \(k_cache\.shape\[0\]\)"),
    (dict(block_table=lambda c: other_table(c, 20, -1)), ValueError, r"block_table\[0\]\[20\] = -1: outside"),
    (dict(block_table="pages"), TypeError, r"block_table: expected an int32 numpy array or torch tensor"),
    (dict(cu_seqlens_q=None), ValueError, r"cu_seqlens_q: needed with a packed q"),
    (dict(cu_seqlens_q=[0, 500]), ValueError, r"cu_seqlens_q\[1\] = 500 differs from the token count of q"),
    (dict(q=lambda c: np.zeros((1, 600, HQ, D), np.float32)), ValueError, r"cu_seqlens_q: given with q"),
    (dict(q=lambda c: np.zeros((600, HQ, 16), np.float32)), ValueError, r"q .* and k_cache .*: head_dim must match"),
    (dict(q=lambda c: np.zeros((600, 3, D), np.float32)), ValueError, r"q heads \(3\) must be a multiple of k_cache"),
    (dict(q=lambda c: np.zeros((600, HQ, D), np.float16)), TypeError, r"q, k_cache, v_cache: dtypes differ"),
    (dict(k_cache=lambda c: c.k[0]), ValueError, r"k_cache: expected 4 dimensions \[num_pages, page_size, Hkv, d\]"),
    (dict(v_cache=lambda c: c.v[:-1]), ValueError, r"k_cache and v_cache: shapes differ"),
    (dict(k_cache=lambda c: c.k[:, :, :, ::2].copy(), v_cache=lambda c: c.v[:, :, :, ::2].copy()), ValueError,
     r"head_dim must match"),
    (dict(max_seqlen_q=500), ValueError, r"max_seqlen_q = 500 is smaller than the longest sequence of cu_seqlens_q"),
    (dict(proxy_state="state"), TypeError, r"proxy_state: expected a proxyattn.ProxyState, got str"),
    (dict(settings=dict(causal=False)), ValueError, r"causal=False"),
])
def test_kvcache_errors_name_the_argument(fw, change, error, message):
    call = kvcache_call(fw, **change)
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("make, message", [
    (lambda k: proxyattn.ProxyState(k[:-1]),
     r"proxy_state: made for a cache of shape \(23, 64, 2, 32\) (torch\.)?float32 on cpu, but k_cache is "
     r"\(24, 64, 2, 32\)"),
    (lambda k: proxyattn.ProxyState(k, num_proxy_groups=2),
     r"proxy_state: made with num_proxy_groups = 2 but the call has num_proxy_groups = 1"),
    (lambda k: proxyattn.ProxyState(k, stride=8), r"proxy_state: made with stride = 8 but the call has stride = 4"),
])
def test_proxy_state_of_other_shapes_is_refused(fw, make, message):
    q, k, v = prompt()
    cache = Cache(64, 21)
    kc, vc = as_fw(fw, cache.k), as_fw(fw, cache.v)
    with pytest.raises(ValueError, match=message):
        proxyattn.attention_with_kvcache(as_fw(fw, q[:10]), kc, vc, [10], cache.table, [0, 10], proxy_state=make(kc),
                                         **SETTINGS)


def test_kvcache_errors_before_the_library(fw):
    """Pages the library reads as [num_pages * page_size] rows: a cache view whose pages are not
    page_size rows apart is refused by the module (naming it), as is a state of other shapes by
    the library."""
    q, k, v = prompt()
    cache = Cache(64, 21)
    half = [as_fw(fw, t)[:, :32] for t in (cache.k, cache.v)]  # pages of 32 rows, 64 apart
    with pytest.raises(ValueError, match=r"k_cache: pages 4096 elements apart, expected page_size x the token "
                                         r"stride = 2048"):
        proxyattn.attention_with_kvcache(as_fw(fw, q[:10]), *half, [10], cache.table, [0, 10])
    with pytest.raises(ValueError, match=r"k_cache: pages of 30 tokens \(k_cache.shape\[1\]\): an estimation state "
                                         r"needs pages of a multiple of stride = 4"):
        proxyattn.ProxyState(as_fw(fw, np.zeros((4, 30, HKV, D), np.float32)))
    with pytest.raises(TypeError, match=r"num_proxy_groups = 1.5 is not an integer"):
        proxyattn.ProxyState(as_fw(fw, cache.k), num_proxy_groups=1.5)
    with pytest.raises(proxyattn.ProxyAttnError, match=r"num_proxy_groups"):
        proxyattn.ProxyState(as_fw(fw, cache.k), num_proxy_groups=3)  # does not divide Hkv = 2
    state = proxyattn.ProxyState(as_fw(fw, cache.k))
    with pytest.raises(proxyattn.ProxyAttnError, match=r"PA_STATUS_BUFFER_TOO_SMALL"):
        g2 = proxyattn.Settings(num_proxy_groups=2).resolve(D)  # g = 2 needs twice the bytes
        _api.ProxyState._wrap(state.tensor, as_fw(fw, cache.k), g2)


def test_module_checks_the_block_table():
    q, k, v = prompt()
    cache = Cache(64, 21)
    config = proxyattn.Settings(**SETTINGS).resolve(D)
    plan = _api.Plan([0, 600], HQ, HKV, D, q, config, [0, N], 64, cache.num_pages, 21)
    qc, out = np.ascontiguousarray(q[700:]), np.empty((600, HQ, D), np.float32)
    with pytest.raises(ValueError, match=r"block_table: expected a contiguous int32 array of shape \(1, 21\)"):
        plan._plan.forward_kv(qc, cache.k, cache.v, cache.table[:, :20], None, out, None, plan._workspace, 0)
    with pytest.raises(ValueError, match=r"block_table: expected a contiguous int32 array"):
        plan._plan.forward_kv(qc, cache.k, cache.v, cache.table.astype(np.int64), None, out, None, plan._workspace, 0)
    with pytest.raises(ValueError, match=r"k_cache: shape \[24, 64, 4, 32\], expected \[24, 64, 2, 32\]"):
        plan._plan.forward_kv(qc, np.zeros((24, 64, 4, 32), np.float32), cache.v, cache.table, None, out, None,
                              plan._workspace, 0)
    with pytest.raises(proxyattn.ProxyAttnError, match=r"kv.block_table is NULL"):
        plan._plan.forward_kv(qc, cache.k, cache.v, None, None, out, None, plan._workspace, 0)
    bad = cache.table.copy()
    bad[0, 5] = 99
    with pytest.raises(proxyattn.ProxyAttnError, match=r"kv.block_table\[0\]\[5\] = 99"):  # the library's own check
        plan._plan.forward_kv(qc, cache.k, cache.v, bad, None, out, None, plan._workspace, 0)
    state = proxyattn.ProxyState(cache.k, num_proxy_groups=2)
    with pytest.raises(proxyattn.ProxyAttnError, match=r"kv.proxy_state.num_proxy_groups = 2 but the plan has 1"):
        plan._plan.forward_kv(qc, cache.k, cache.v, cache.table, state._handle, out, None, plan._workspace, 0)
    with pytest.raises(ValueError, match=r"cu_seqlens_k: 3 entries but cu_seqlens has 2"):
        _C.Problem([0, 600], HQ, HKV, D, 0, [0, 600, N])
    with pytest.raises(ValueError, match=r"cu_seqlens_k\[1\] = 4294967296 does not fit the int32"):
        _C.Problem([0, 600], HQ, HKV, D, 0, [0, 2**32])
    with pytest.raises(ValueError, match=r"num_pages = -1: must lie in \[0, 2\^31\)"):
        _C.Problem([0, 600], HQ, HKV, D, 0, [0, N], 64, -1, 21)


# ---- torch: the custom ops -----------------------------------------------------------------------------
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def torch_case():
    q, k, v = (torch.from_numpy(t) for t in prompt())
    cache = Cache(64, 21)
    cache.write(0, *prompt()[1:], 0, N)
    return q, k, v, cache, torch.from_numpy(cache.k), torch.from_numpy(cache.v), torch.from_numpy(cache.table)


@needs_torch
def test_compile_traces_both_ops():
    """torch.compile(fullgraph=True) traces attention_varlen and attention_with_kvcache (lengths
    as lists and as tensors); the compiled calls give the eager bits, and write the state as
    the eager calls do."""
    q, k, v, cache, kc, vc, table = torch_case()

    def varlen(q, k, v, cu_k):
        return proxyattn.attention_varlen(q, k, v, [0, 600], cu_k, return_lse=True, **SETTINGS)

    def paged(q, kc, vc, table, state):
        out, lse = proxyattn.attention_with_kvcache(q, kc, vc, [N], table, proxy_state=state, return_lse=True,
                                                    **SETTINGS)
        return out * 2, lse

    args = (q[700:], k, v)
    for cu_k in ([0, N], torch.tensor([0, N], dtype=torch.int32)):
        compiled = torch.compile(varlen, fullgraph=True)(*args, cu_k)
        eager = varlen(*args, cu_k)
        assert all(torch.equal(a, b) for a, b in zip(compiled, eager))
    states = [proxyattn.ProxyState(kc) for _ in range(2)]
    compiled = torch.compile(paged, fullgraph=True)(q[None, 700:], kc, vc, table, states[0])
    eager = paged(q[None, 700:], kc, vc, table, states[1])
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))
    assert torch.equal(states[0].tensor, states[1].tensor) and states[0].tensor.any()


@needs_torch
def test_eager_inference_and_the_custom_ops_agree():
    """Calls autograd would record take the ops (no backward: it says so); their bits are the
    direct calls'."""
    q, k, v, cache, kc, vc, table = torch_case()
    with torch.no_grad():
        direct = proxyattn.attention_varlen(q[700:], k, v, [0, 600], [0, N], return_lse=True, **SETTINGS)
        direct_paged = proxyattn.attention_with_kvcache(q[700:], kc, vc, [N], table, [0, 600], **SETTINGS)
    qg = q[700:].clone().requires_grad_()
    through_op = proxyattn.attention_varlen(qg, k, v, [0, 600], [0, N], return_lse=True, **SETTINGS)
    paged_op = proxyattn.attention_with_kvcache(qg, kc, vc, torch.tensor([N]), table, torch.tensor([0, 600]),
                                                **SETTINGS)
    assert through_op[0].grad_fn is not None and paged_op.grad_fn is not None
    assert all(torch.equal(a, b.detach()) for a, b in zip(direct, through_op))
    assert torch.equal(direct_paged, paged_op.detach())
    with pytest.raises(RuntimeError, match="autograd"):
        paged_op.sum().backward()


@needs_torch
def test_fake_and_meta_tensors_take_the_ops():
    """Shape inference goes through the fake implementations: out like q, lse [Hq, total_q]
    (uniform q: [B, Hq, q_len])."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(600, HQ, D), torch.empty(N, HKV, D), torch.empty(N, HKV, D)
        out, lse = proxyattn.attention_varlen(q, k, v, [0, 600], [0, N], return_lse=True, **SETTINGS)
        assert out.shape == (600, HQ, D) and lse.shape == (HQ, 600) and lse.dtype == torch.float32
        kc, vc = torch.empty(24, 64, HKV, D), torch.empty(24, 64, HKV, D)
        table = torch.zeros(2, 21, dtype=torch.int32)
        out, lse = proxyattn.attention_with_kvcache(q.reshape(2, 300, HQ, D), kc, vc, [N, 900], table,
                                                    return_lse=True, **SETTINGS)
        assert out.shape == (2, 300, HQ, D) and lse.shape == (2, HQ, 300)
        out, lse = proxyattn.attention_with_kvcache(q, kc, vc, [N, 900], table, [0, 100, 600], return_lse=True,
                                                    **SETTINGS)
        assert out.shape == (600, HQ, D) and lse.shape == (HQ, 600)
    meta = [torch.empty(s, device="meta") for s in ((600, HQ, D), (24, 64, HKV, D), (24, 64, HKV, D))]
    out = proxyattn.attention_with_kvcache(*meta, [N], torch.zeros(1, 21, dtype=torch.int32, device="meta"),
                                           [0, 600], **SETTINGS)
    assert out.device.type == "meta" and out.shape == (600, HQ, D)


@needs_torch
def test_op_path_checks_the_lengths():
    """Lengths given as tensors are read and checked when the op runs."""
    q, k, v, cache, kc, vc, table = torch_case()
    qg = q[700:].clone().requires_grad_()  # takes the op
    with pytest.raises(ValueError, match=r"cache_seqlens\[0\] = 1400 exceeds"):
        proxyattn.attention_with_kvcache(qg, kc, vc, torch.tensor([1400]), table, torch.tensor([0, 600]), **SETTINGS)
    with pytest.raises(ValueError, match=r"cu_seqlens_k\[1\] = 1000 differs from the token count of k"):
        proxyattn.attention_varlen(qg, k, v, torch.tensor([0, 600]), torch.tensor([0, 1000]), **SETTINGS)
    with pytest.raises(TypeError, match=r"cu_seqlens_q\[1\] = 600.0 is not an integer"):
        proxyattn.attention_varlen(qg, k, v, [0, 600.0], [0, N], **SETTINGS)


@pytest.mark.gpu
@pytest.mark.parametrize("table_on_device", [True, False])
def test_cuda_chunked_calls_match_the_cpu(table_on_device):
    """The GPU's chunked and paged calls against the CPU's, head_dim 64 (the GPU's), a device
    block table or a host one copied there. Unused cache rows hold zeros: the sm90 kernel reads
    a page's rows past a sequence's end (masked), so a cache must hold finite values there."""
    d, page = 64, 64
    g = torch.Generator().manual_seed(3)
    q = torch.randn(N, HQ, d, generator=g) * 1.5
    k = torch.randn(N, HKV, d, generator=g) * 1.5
    v = torch.randn(N, HKV, d, generator=g)
    pages = (N + page - 1) // page
    perm = torch.randperm(pages + 3, generator=g)
    table = perm[:pages].to(torch.int32)[None].contiguous()
    kc = torch.zeros(pages + 3, page, HKV, d)
    vc = torch.zeros_like(kc)
    for t in range(N):
        kc[table[0, t // page], t % page] = k[t]
        vc[table[0, t // page], t % page] = v[t]
    dev = [t.to("cuda", torch.bfloat16) for t in (q, k, v, kc, vc)]
    cpu = [t.to(torch.bfloat16) for t in (q, k, v, kc, vc)]
    gpu_table = table.cuda() if table_on_device else table
    out = proxyattn.attention_varlen(dev[0][700:], dev[1], dev[2], [0, 600], [0, N], **SETTINGS)
    paged = proxyattn.attention_with_kvcache(dev[0][None, 700:], dev[3], dev[4], [N], gpu_table,
                                             proxy_state=proxyattn.ProxyState(dev[3]), **SETTINGS)
    ref = proxyattn.attention_varlen(cpu[0][700:], cpu[1], cpu[2], [0, 600], [0, N], **SETTINGS)
    ref_paged = proxyattn.attention_with_kvcache(cpu[0][None, 700:], cpu[3], cpu[4], [N], table,
                                                 proxy_state=proxyattn.ProxyState(cpu[3]), **SETTINGS)
    for a, b in ((out, ref), (paged, ref_paged)):
        assert torch.isfinite(a).all()
        assert ((a.float().cpu() - b.float()).norm() / b.float().norm()).item() < 2e-2


@pytest.mark.gpu
def test_cuda_graph_replays_the_paged_call():
    """torch.cuda.graph captures attention_with_kvcache (estimation with a ProxyState, then
    attention) after one call on the capture stream has made the plan; replays equal eager
    calls, also after new queries are copied into the captured input."""
    d, page = 64, 64
    g = torch.Generator().manual_seed(5)
    pages = (N + page - 1) // page
    kc = (torch.randn(pages, page, HKV, d, generator=g) * 1.5).to("cuda", torch.bfloat16)
    vc = torch.randn(pages, page, HKV, d, generator=g).to("cuda", torch.bfloat16)
    table = torch.arange(pages, dtype=torch.int32, device="cuda")[None]
    q = (torch.randn(1, 600, HQ, d, generator=g) * 1.5).to("cuda", torch.bfloat16)
    state = proxyattn.ProxyState(kc)

    def call():
        return proxyattn.attention_with_kvcache(q, kc, vc, [N], table, proxy_state=state, return_lse=True, **SETTINGS)

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        call()  # the plan of these lengths, made outside capture on the capture stream
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out, lse = call()
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            eager_out, eager_lse = call()
        stream.synchronize()
        assert torch.equal(out, eager_out) and torch.equal(lse, eager_lse)
        q.copy_(torch.flip(q, dims=[1]))
