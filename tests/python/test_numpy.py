"""The Python API on numpy arrays (CPU backend): results against a numpy reference, the
plan's inspection, and errors that name the argument."""
import numpy as np
import pytest

import proxyattn

SETTINGS = dict(block_size=64, min_budget_tokens=128, gamma=0.9)


def qkv(b, n, hq, hkv, d, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, n, hq, d)).astype(dtype) * 1.5,
            rng.standard_normal((b, n, hkv, d)).astype(dtype) * 1.5,
            rng.standard_normal((b, n, hkv, d)).astype(dtype))


def masked_reference(q, k, v, kept, block, scale):
    """fp64 attention of one sequence [N, H, d] restricted to kept[h][m] key blocks."""
    n, hq, d = q.shape
    group = hq // k.shape[1]
    out = np.zeros((n, hq, d))
    for h in range(hq):
        s = (q[:, h].astype(np.float64) @ k[:, h // group].astype(np.float64).T) * scale
        allowed = np.tril(np.ones((n, n), bool))
        blocks = np.zeros((n, n), bool)
        for m, row in enumerate(kept[h]):
            for kb in row:
                blocks[m * block:(m + 1) * block, kb * block:(kb + 1) * block] = True
        s = np.where(allowed & blocks, s, -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        out[:, h] = (p / p.sum(1, keepdims=True)) @ v[:, h // group].astype(np.float64)
    return out


def kept_sets(plan, seq):
    num, idx = plan.to_flex(seq)
    return [[list(idx[h, m, :num[h, m]]) for m in range(num.shape[1])] for h in range(num.shape[0])]


def test_attention_matches_masked_reference():
    q, k, v = qkv(2, 700, 4, 2, 32)
    out = proxyattn.attention(q, k, v, **SETTINGS)
    plan = proxyattn.estimate(q, k, **SETTINGS)
    plan.check()
    for b in range(2):
        ref = masked_reference(q[b], k[b], v[b], kept_sets(plan, b), 64, 32 ** -0.5)
        assert np.linalg.norm(out[b] - ref) / np.linalg.norm(ref) < 2e-6


def test_full_budget_equals_dense():
    q, k, v = qkv(1, 500, 4, 1, 64, seed=1)
    out, lse = proxyattn.attention(q, k, v, block_size=64, gamma=1.0, min_budget_tokens=1 << 20,
                                   dense_below=0, return_lse=True)
    dense, dense_lse = proxyattn.dense_attention(q, k, v, return_lse=True)
    assert lse.shape == (1, 4, 500)
    assert np.linalg.norm(out - dense) / np.linalg.norm(dense) < 1e-6
    assert np.abs(lse - dense_lse).max() < 1e-5


def test_varlen_equals_batched():
    q, k, v = qkv(2, 600, 4, 2, 32, seed=2)
    flat = [t.reshape(1200, t.shape[2], 32) for t in (q, k, v)]
    out_varlen = proxyattn.attention_varlen(*flat, np.array([0, 600, 1200], np.int32), 600, **SETTINGS)
    out = proxyattn.attention(q, k, v, **SETTINGS)
    assert np.array_equal(out_varlen.reshape(2, 600, 4, 32), out)


def test_plan_cache_reuses_and_clears():
    """attention() reuses a plan per shapes and settings; clear_plan_cache() drops them, and
    results stay the same after it."""
    from proxyattn import _api

    q, k, v = qkv(1, 500, 4, 2, 32, seed=5)
    proxyattn.clear_plan_cache()
    first = proxyattn.attention(q, k, v, **SETTINGS)
    second = proxyattn.attention(q, k, v, **SETTINGS)
    assert len(_api._PLAN_CACHE) == 1 and np.array_equal(first, second)
    proxyattn.clear_plan_cache()
    assert len(_api._PLAN_CACHE) == 0
    assert np.array_equal(proxyattn.attention(q, k, v, **SETTINGS), first)


def test_plan_inspection():
    q, k, _ = qkv(1, 1000, 8, 2, 32, seed=3)
    plan = proxyattn.estimate(q, k, num_proxy_groups=2, **SETTINGS)
    heads = plan.heads()
    assert heads["budget_blocks"].shape == (1, 8)
    assert (heads["budget_blocks"] >= 2).all() and (heads["needed_blocks"] <= 16).all()
    assert 0 < plan.density <= 1
    stats = plan.stats()
    assert stats["causal_pairs"] == 8 * 16 * 17 // 2
    order, count = plan.index()
    assert count.shape == (16, 8) and order.size == 2 * 16 * 17 // 2
    assert heads["anchors"].shape == (1, 8, 8)  # "auto": 32 anchors per group of 4 heads
    assert proxyattn.estimate(q, k, num_proxy_groups=2, anchor_blocks=0, **SETTINGS).heads()["anchors"].shape == (1, 8, 0)


def test_anchor_blocks_are_kept_by_their_group():
    q, k, _ = qkv(1, 1000, 8, 2, 32, seed=4)
    plan = proxyattn.estimate(q, k, num_proxy_groups=2, anchor_blocks=2, **SETTINGS)
    plan.check()
    anchors = plan.heads()["anchors"][0]  # [Hq, 2]
    assert anchors.shape == (8, 2) and (anchors > 0).all() and (anchors < 15).all()  # sink, last excluded
    kept = kept_sets(plan, 0)
    for h in range(8):
        group = range(h // 4 * 4, h // 4 * 4 + 4)
        for a in {int(x) for g in group for x in anchors[g]}:
            assert all(a in kept[h][m] for m in range(a, 16)), (h, a)


def test_plan_tuning_set_and_refused_by_name():
    q, k, v = qkv(1, 300, 4, 2, 32, seed=5)
    plan = proxyattn.estimate(q, k, **SETTINGS)
    assert plan.tuning() == dict(attn_kernel=0, attn_packing=0, attn_rows_per_chunk=0, attn_persistent=1,
                                 attn_consumer_turns=1, attn_rank_heads=1, attn_max_ctas=0, est_block_logits=1)
    plan.set_tuning(attn_max_ctas=3, est_block_logits=0)
    assert plan.tuning()["attn_max_ctas"] == 3 and plan.tuning()["est_block_logits"] == 0
    with pytest.raises(proxyattn.ProxyAttnError, match="tuning.attn_rows_per_chunk = -1"):
        plan.set_tuning(attn_rows_per_chunk=-1)
    assert plan.tuning()["attn_rows_per_chunk"] == 0 and plan.tuning()["attn_max_ctas"] == 3
    with pytest.raises(TypeError, match="unknown field 'rows'"):
        plan.set_tuning(rows=1)
    out = proxyattn.attend(plan, q, k, v)  # a host plan runs whatever its tuning
    assert out.shape == q.shape


def test_errors_name_the_argument():
    q, k, v = qkv(1, 300, 4, 2, 32)
    with pytest.raises(ValueError, match="q heads"):
        proxyattn.attention(q, q[:, :, :3], q[:, :, :3])
    with pytest.raises(ValueError, match="k and v"):
        proxyattn.attention(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match="expected 4 dimensions"):
        proxyattn.attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="causal"):
        proxyattn.attention(q, k, v, causal=False)
    with pytest.raises(proxyattn.ProxyAttnError, match="gamma"):
        proxyattn.attention(q, k, v, gamma=1.5)
    with pytest.raises(proxyattn.ProxyAttnError, match="num_proxy_groups = 3"):
        proxyattn.attention(q, k, v, num_proxy_groups=3)
    with pytest.raises(ValueError, match="budget_mode"):
        proxyattn.attention(q, k, v, budget_mode="relative")
    with pytest.raises(TypeError, match="dtypes differ"):
        proxyattn.attention(q, k.astype(np.float16), v)
    with pytest.raises(TypeError, match="dtype must be"):
        proxyattn.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    with pytest.raises(ValueError, match=r"cu_seqlens decreases at 2"):
        proxyattn.attention_varlen(q[0], k[0], v[0], [0, 200, 100])
    with pytest.raises(ValueError, match=r"cu_seqlens\[1\] = 299 differs from the token count of q"):
        proxyattn.attention_varlen(q[0], k[0], v[0], [0, 299])


def test_float16_and_strided_inputs():
    q, k, v = qkv(1, 400, 4, 2, 32, seed=4, dtype=np.float16)
    qt = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # [B, N, H, d] view of [B, H, N, d]
    a = proxyattn.attention(q, k, v, **SETTINGS)
    b = proxyattn.attention(qt, k, v, **SETTINGS)
    assert a.dtype == np.float16
    assert np.array_equal(a, b)
