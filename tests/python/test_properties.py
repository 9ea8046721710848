"""Property tests of the Python front doors (issue 26), with hypothesis: random shapes, strides
(token-strided, head-major, padded, reversed, non-contiguous head_dim views), lengths (varlen,
chunked and paged, empty sequences), dtypes and settings, each sometimes broken in one argument.
Every call either raises ValueError, TypeError or ProxyAttnError naming the argument, or returns
the reference: fp64 attention restricted to the blocks of the call's own plan (its index, read
back with Plan.to_flex), causal with the queries at the end of their keys, and the LSE.

The example counts are bounded for CI (PROXYATTN_PROPERTY_EXAMPLES, default 40 a test; the
examples are derandomized, so a CI run is reproducible); a longer exploration:
    PROXYATTN_PROPERTY_EXAMPLES=2000 pytest tests/python/test_properties.py
"""
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import proxyattn
from proxyattn import _api

EXAMPLES = int(os.environ.get("PROXYATTN_PROPERTY_EXAMPLES", "40"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ERRORS = (ValueError, TypeError, proxyattn.ProxyAttnError)


# ---- the reference ------------------------------------------------------------------------------
def kept_blocks(plan, seq):
    """Kept key blocks of each (head, row) of one sequence of the plan (rows m0 .. Nkb - 1)."""
    num, idx = plan.to_flex(seq)
    return [[set(idx[h, r, :num[h, r]].tolist()) for r in range(num.shape[1])] for h in range(num.shape[0])]


def reference(q, k, v, kept, block, scale):
    """fp64 attention of one sequence: q [n, Hq, d] at positions kv - n .. kv - 1 of k, v
    [kv, Hkv, d], query i seeing key j <= its position in the kept blocks of its row (kept None:
    all). Returns out [n, Hq, d] and lse [Hq, n] (natural log; -inf for a row without keys)."""
    n, hq, d = q.shape
    kv = k.shape[0]
    group = hq // k.shape[1]
    out, lse = np.zeros((n, hq, d)), np.full((hq, n), -np.inf)
    if n == 0:
        return out, lse
    pos = np.arange(kv - n, kv)
    allowed = np.arange(kv)[None, :] <= pos[:, None]
    m0 = (kv - n) // block
    for h in range(hq):
        mask = allowed.copy()
        if kept is not None:
            blocks = np.zeros((n, -(-kv // block)), bool)
            for i, p in enumerate(pos):
                blocks[i, sorted(kept[h][p // block - m0])] = True
            mask &= np.repeat(blocks, block, axis=1)[:, :kv]
        s = np.where(mask, (q[:, h].astype(np.float64) @ k[:, h // group].astype(np.float64).T) * scale, -np.inf)
        top = s.max(1, keepdims=True)
        rows = np.isfinite(top[:, 0])
        p = np.exp(s[rows] - top[rows])
        total = p.sum(1, keepdims=True)
        out[rows, h] = (p / total) @ v[:, h // group].astype(np.float64)
        lse[h, rows] = (top[rows] + np.log(total))[:, 0]
    return out, lse


def assert_close(out, ref, dtype, what):
    out = np.asarray(out, np.float64)
    tol = 2e-4 if dtype == np.float32 else 4e-3
    err = np.abs(out - ref).max(initial=0.0)
    assert err <= tol * (1.0 + np.abs(ref).max(initial=0.0)), f"{what}: max error {err}"


def names(message, argument):
    """Whether an error message names the argument (as a word: "q" in "q: ...", "cu_seqlens[2]")."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(argument)}(?![A-Za-z0-9_])", message) is not None


# ---- strategies -----------------------------------------------------------------------------------
LAYOUTS = ["contiguous", "token_strided", "head_major", "padded", "reversed", "head_dim_strided"]


def view(rng, shape, dtype, layout):
    """A [..., T, H, d] array of random values in the layout: its values, and the view."""
    values = (rng.standard_normal(shape) * 1.2).astype(dtype)
    *lead, t, h, d = shape
    if layout == "token_strided":
        base = np.zeros((*lead, 2 * t, h, d), dtype)
        base[..., ::2, :, :] = values
        return values, base[..., ::2, :, :]
    if layout == "head_major":
        return values, np.ascontiguousarray(np.swapaxes(values, -3, -2)).swapaxes(-3, -2)
    if layout == "padded":
        base = np.zeros((*lead, t, h + 1, d + 3), dtype)
        base[..., :h, :d] = values
        return values, base[..., :h, :d]
    if layout == "reversed":
        return values, np.ascontiguousarray(values[..., ::-1, :, :])[..., ::-1, :, :]
    if layout == "head_dim_strided":
        base = np.zeros((*lead, t, h, 2 * d), dtype)
        base[..., ::2] = values
        return values, base[..., ::2]
    return values, values


@st.composite
def proxy_settings(draw, hkv):
    groups = [g for g in (1, 2, 3) if hkv % g == 0]
    return dict(block_size=draw(st.sampled_from([64, 128])), stride=draw(st.sampled_from([1, 2, 4, 8, 16])),
                gamma=draw(st.floats(0.5, 1.0)), min_budget_tokens=draw(st.sampled_from([0, 64, 128, 1 << 20])),
                dense_below=draw(st.sampled_from([0, 64, 100000])), num_proxy_groups=draw(st.sampled_from(groups)),
                force_sink=draw(st.booleans()), force_local=draw(st.booleans()),
                budget_mode=draw(st.sampled_from(["absolute", "proportional"])),
                anchor_blocks=draw(st.sampled_from(["auto", 0, 1, 3, 8])))


# Broken settings: each must be refused naming its field.
BAD_SETTINGS = [("gamma", 0.0), ("gamma", float("nan")), ("block_size", 96), ("stride", 3),
                ("min_budget_tokens", -1), ("dense_below", -5), ("anchor_blocks", 9), ("budget_mode", "linear"),
                ("softmax_scale", -1.0), ("num_proxy_groups", 0)]


@st.composite
def shapes(draw):
    hkv = draw(st.integers(1, 3))
    return dict(hkv=hkv, hq=hkv * draw(st.integers(1, 3)), d=draw(st.sampled_from([1, 2, 8, 16, 32])),
                dtype=draw(st.sampled_from([np.float32, np.float16])),
                layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**31 - 1)))


# Layouts the front doors may refuse (naming the tensor) instead of reading: the library takes
# a contiguous head_dim and non-negative strides.
REFUSABLE = ("reversed", "head_dim_strided")


def run(call, broken, refusable=()):
    """call(); with a broken argument (its name, or a tuple of its names) it must raise naming it,
    else return the result. refusable: tensors of a layout in REFUSABLE, whose refusal (naming
    them) is an answer too."""
    try:
        result = call()
    except ERRORS as e:
        message = str(e)
        candidates = (broken if isinstance(broken, tuple) else (broken,) if broken else ()) + tuple(refusable)
        named = [name for name in candidates if names(message, name)]
        assert broken is not None or refusable, f"a valid call raised {type(e).__name__}: {message}"
        assert named, f"{type(e).__name__} names none of {broken!r}, {refusable}: {message}"
        event(f"refused, naming {named[0]}")
        return None
    assert broken is None, f"the call took a broken {broken}"
    event("returned")
    return result


def refusable(**layouts):
    return tuple(name for name, layout in layouts.items() if layout in REFUSABLE)


def checked_result(result, return_lse, q0, dtype, cu_q):
    """(out, lse, the call's plan, its invariants checked) of a call that ran and had queries;
    None for a refused call or an empty batch."""
    if result is None:
        return None
    out, lse = result if return_lse else (result, None)
    assert out.shape == q0.shape and out.dtype == dtype
    if cu_q[-1] == 0:
        return None
    plan = only_plan()
    plan.check()
    return out, lse, plan


def only_plan():
    """The plan a cached call (attention, attention_varlen, attention_with_kvcache) used."""
    plans = list(_api._PLAN_CACHE.values())
    assert len(plans) == 1
    return plans[0]


# ---- attention(): q [B, N, Hq, d] -------------------------------------------------------------------
@PROPERTY
@given(data=st.data(), shape=shapes(), b=st.integers(0, 2), n=st.integers(0, 300), return_lse=st.booleans())
def test_attention(data, shape, b, n, return_lse):
    rng = np.random.default_rng(shape["seed"])
    hq, hkv, d, dtype = shape["hq"], shape["hkv"], shape["d"], shape["dtype"]
    q0, q = view(rng, (b, n, hq, d), dtype, shape["layout"])
    k0, k = view(rng, (b, n, hkv, d), dtype, "contiguous")
    v_layout = data.draw(st.sampled_from(LAYOUTS))
    v0, v = view(rng, (b, n, hkv, d), dtype, v_layout)
    may_refuse = refusable(q=shape["layout"], v=v_layout)
    config = data.draw(proxy_settings(hkv))
    broken = None
    defect = data.draw(st.sampled_from(["none"] * 6 + ["setting", "k_heads", "v_dtype", "q_ndim", "k_tokens", "list"]))
    if defect == "setting":
        name, value = data.draw(st.sampled_from(BAD_SETTINGS))
        config[name], broken = value, name
    elif defect == "k_heads" and hq > 1:
        k, broken = np.zeros((b, n, hq + 1, d), dtype), "k"
    elif defect == "v_dtype":
        v, broken = v.astype(np.float64), "v"
    elif defect == "q_ndim":
        q, broken = q.reshape(b * n, hq, d), "q"
    elif defect == "k_tokens" and n > 0:
        k, v, broken = k[:, :-1], v[:, :-1], "k"
    elif defect == "list":
        q, broken = q.tolist(), "q"
    _api.clear_plan_cache()
    result = run(lambda: proxyattn.attention(q, k, v, return_lse=return_lse, **config), broken, may_refuse)
    if result is None:
        return
    out, lse = result if return_lse else (result, None)
    assert out.shape == (b, n, hq, d) and out.dtype == dtype
    if b * n == 0:
        return
    plan = only_plan()
    plan.check()
    for s in range(b):
        ref, ref_lse = reference(q0[s], k0[s], v0[s], kept_blocks(plan, s), config["block_size"], d ** -0.5)
        assert_close(out[s], ref, dtype, f"out of sequence {s}")
        if lse is not None:
            assert_close(lse[s], ref_lse, np.float32, f"lse of sequence {s}")


# ---- attention_varlen(): packed, whole prompts or chunks after a prefix -----------------------------
@st.composite
def varlen_lengths(draw):
    num_seqs = draw(st.integers(1, 4))
    q_len = [draw(st.integers(0, 200)) for _ in range(num_seqs)]
    chunked = draw(st.booleans())
    kv_len = [n + (draw(st.integers(0, 200)) if chunked else 0) for n in q_len]
    return q_len, kv_len, chunked


def prefix(lengths):
    return [int(x) for x in np.concatenate([[0], np.cumsum(lengths)])]


@PROPERTY
@given(data=st.data(), shape=shapes(), lengths=varlen_lengths(), return_lse=st.booleans(),
       form=st.sampled_from(["list", "numpy64", "numpy32", "tuple"]))
def test_attention_varlen(data, shape, lengths, return_lse, form):
    rng = np.random.default_rng(shape["seed"])
    hq, hkv, d, dtype = shape["hq"], shape["hkv"], shape["d"], shape["dtype"]
    q_len, kv_len, chunked = lengths
    cu_q, cu_k = prefix(q_len), prefix(kv_len)
    q0, q = view(rng, (cu_q[-1], hq, d), dtype, shape["layout"])
    k_layout = data.draw(st.sampled_from(LAYOUTS))
    k0, k = view(rng, (cu_k[-1], hkv, d), dtype, k_layout)
    v0, v = view(rng, (cu_k[-1], hkv, d), dtype, "contiguous")
    may_refuse = refusable(q=shape["layout"], k=k_layout)
    config = data.draw(proxy_settings(hkv))
    as_form = {"list": list, "tuple": tuple, "numpy64": lambda x: np.array(x, np.int64),
               "numpy32": lambda x: np.array(x, np.int32)}[form]
    args = dict(cu_seqlens_q=as_form(cu_q), cu_seqlens_k=as_form(cu_k) if chunked else None)
    # A whole prompt's messages name its one cu_seqlens (and max_seqlen): cu_seqlens_q's older name.
    cu_name = "cu_seqlens_q" if chunked else ("cu_seqlens_q", "cu_seqlens")
    broken = None
    defect = data.draw(st.sampled_from(["none"] * 6 + ["past", "short", "decreasing", "first", "float", "max_seqlen",
                                                       "kv_short", "k_count", "setting"]))
    if defect == "past":
        args["cu_seqlens_q"], broken = as_form(cu_q[:-1] + [cu_q[-1] + 1]), cu_name
    elif defect == "short" and cu_q[-1] > 0:
        args["cu_seqlens_q"], broken = as_form(cu_q[:-1] + [cu_q[-1] - 1]), cu_name
    elif defect == "decreasing" and len(cu_q) > 2 and cu_q[1] > 0:
        bad = list(cu_q)
        bad[1] = bad[2] + 1 if bad[2] < bad[-1] else -1
        args["cu_seqlens_q"], broken = as_form(bad), cu_name
    elif defect == "first":
        args["cu_seqlens_q"], broken = as_form([1] + cu_q[1:]), cu_name
    elif defect == "float":
        args["cu_seqlens_q"], broken = np.array(cu_q, np.float32), cu_name
    elif defect == "max_seqlen":
        args["max_seqlen_q"], broken = max(q_len) - 1 if max(q_len) > 0 else -1, (
            "max_seqlen_q" if chunked else ("max_seqlen_q", "max_seqlen"))
    elif defect == "kv_short" and chunked and any(q_len):
        s = next(i for i, n in enumerate(q_len) if n > 0)
        bad = list(kv_len)
        bad[s] = q_len[s] - 1
        args["cu_seqlens_k"], broken = as_form(prefix(bad)), "cu_seqlens_k"
        k = v = np.zeros((prefix(bad)[-1], hkv, d), dtype)
    elif defect == "k_count" and chunked:
        k, v, broken = np.zeros((cu_k[-1] + 1, hkv, d), dtype), np.zeros((cu_k[-1] + 1, hkv, d), dtype), "cu_seqlens_k"
    elif defect == "setting":
        name, value = data.draw(st.sampled_from(BAD_SETTINGS))
        config[name], broken = value, name
    _api.clear_plan_cache()
    result = run(lambda: proxyattn.attention_varlen(q, k, v, return_lse=return_lse, **args, **config), broken,
                 may_refuse)
    checked = checked_result(result, return_lse, q0, dtype, cu_q)
    if checked is None:
        return
    out, lse, plan = checked
    for s in range(len(q_len)):
        qs, ks = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        ref, ref_lse = reference(q0[qs], k0[ks], v0[ks], kept_blocks(plan, s), config["block_size"], d ** -0.5)
        assert_close(out[qs], ref, dtype, f"out of sequence {s}")
        if lse is not None:
            assert_close(lse[:, qs], ref_lse, np.float32, f"lse of sequence {s}")


# ---- attention_with_kvcache(): a paged cache through a block table ------------------------------------
@PROPERTY
@given(data=st.data(), shape=shapes(), lengths=varlen_lengths(), page=st.sampled_from([1, 3, 16, 64, 128]),
       with_state=st.booleans(), return_lse=st.booleans())
def test_attention_with_kvcache(data, shape, lengths, page, with_state, return_lse):
    rng = np.random.default_rng(shape["seed"])
    hq, hkv, d, dtype = shape["hq"], shape["hkv"], shape["d"], shape["dtype"]
    q_len, kv_len, _ = lengths
    cu_q = prefix(q_len)
    config = data.draw(proxy_settings(hkv))
    if with_state and page % config["stride"] != 0:
        config["stride"] = 1
    pages_of = [-(-kv // page) for kv in kv_len]
    max_pages = max(max(pages_of), 1) + data.draw(st.integers(0, 2))
    num_pages = max(sum(pages_of), 1) + data.draw(st.integers(0, 3))
    order = rng.permutation(num_pages)
    table = np.zeros((len(q_len), max_pages), np.int32)
    at = 0
    for s, count in enumerate(pages_of):
        table[s, :count] = order[at:at + count]
        at += count
    k_cache = (rng.standard_normal((num_pages, page, hkv, d)) * 1.2).astype(dtype)
    v_cache = rng.standard_normal((num_pages, page, hkv, d)).astype(dtype)
    q0, q = view(rng, (cu_q[-1], hq, d), dtype, shape["layout"])
    broken = None
    args = dict(cache_seqlens=list(kv_len), block_table=table, cu_seqlens_q=list(cu_q))
    defect = data.draw(st.sampled_from(["none"] * 6 + ["page_id", "negative_page", "table_dtype", "seqlens_count",
                                                       "too_long", "fewer_keys", "table_rows"]))
    used = [(s, i) for s, count in enumerate(pages_of) for i in range(count)]
    if defect == "page_id" and used:
        s, i = used[data.draw(st.integers(0, len(used) - 1))]
        bad = table.copy()
        bad[s, i] = num_pages
        args["block_table"], broken = bad, "block_table"
    elif defect == "negative_page" and used:
        bad = table.copy()
        bad[used[0]] = -1
        args["block_table"], broken = bad, "block_table"
    elif defect == "table_dtype":
        args["block_table"], broken = table.astype(np.int64), "block_table"
    elif defect == "seqlens_count":
        args["cache_seqlens"], broken = list(kv_len) + [1], "cache_seqlens"
    elif defect == "too_long":
        args["cache_seqlens"], broken = [max_pages * page + 1] + list(kv_len[1:]), "cache_seqlens"
    elif defect == "fewer_keys" and q_len[0] > 0:
        args["cache_seqlens"], broken = [q_len[0] - 1] + list(kv_len[1:]), "cache_seqlens"
    elif defect == "table_rows":
        args["block_table"], broken = np.zeros((len(q_len) + 1, max_pages), np.int32), "block_table"
    state = proxyattn.ProxyState(k_cache, config["num_proxy_groups"], config["stride"]) if with_state else None
    _api.clear_plan_cache()
    result = run(lambda: proxyattn.attention_with_kvcache(q, k_cache, v_cache, proxy_state=state,
                                                          return_lse=return_lse, **args, **config), broken,
                 refusable(q=shape["layout"]))
    checked = checked_result(result, return_lse, q0, dtype, cu_q)
    if checked is None:
        return
    out, lse, plan = checked
    flat_k, flat_v = k_cache.reshape(-1, hkv, d), v_cache.reshape(-1, hkv, d)
    for s in range(len(q_len)):
        rows = [table[s, t // page] * page + t % page for t in range(kv_len[s])]
        qs = slice(cu_q[s], cu_q[s + 1])
        ref, ref_lse = reference(q0[qs], flat_k[rows], flat_v[rows], kept_blocks(plan, s), config["block_size"],
                                 d ** -0.5)
        assert_close(out[qs], ref, dtype, f"out of sequence {s}")
        if lse is not None:
            assert_close(lse[:, qs], ref_lse, np.float32, f"lse of sequence {s}")


# ---- dense_attention() and estimate() + attend() -------------------------------------------------------
@PROPERTY
@given(data=st.data(), shape=shapes(), lengths=varlen_lengths(), scale=st.one_of(st.none(), st.floats(0.05, 2.0)))
def test_dense_attention_and_estimate_attend(data, shape, lengths, scale):
    rng = np.random.default_rng(shape["seed"])
    hq, hkv, d, dtype = shape["hq"], shape["hkv"], shape["d"], shape["dtype"]
    q_len = lengths[0]
    cu = prefix(q_len)
    q0, q = view(rng, (cu[-1], hq, d), dtype, shape["layout"])
    k_layout = data.draw(st.sampled_from(LAYOUTS))
    k0, k = view(rng, (cu[-1], hkv, d), dtype, k_layout)
    v0, v = view(rng, (cu[-1], hkv, d), dtype, "contiguous")
    may_refuse = refusable(q=shape["layout"], k=k_layout)
    broken = None
    defect = data.draw(st.sampled_from(["none"] * 4 + ["scale", "cu", "q_dtype"]))
    if defect == "scale":
        scale, broken = data.draw(st.sampled_from([0.0, -1.0, float("nan"), float("inf")])), "softmax_scale"
    elif defect == "cu":
        cu, broken = cu[:-1] + [cu[-1] + 7], "cu_seqlens"
    elif defect == "q_dtype":
        q, broken = q.astype(np.int32), "q"
    result = run(lambda: proxyattn.dense_attention(q, k, v, cu, softmax_scale=scale, return_lse=True), broken,
                 may_refuse)
    if result is not None and cu[-1] > 0:
        out, lse = result
        for s in range(len(q_len)):
            qs = slice(cu[s], cu[s + 1])
            ref, ref_lse = reference(q0[qs], k0[qs], v0[qs], None, 64, d ** -0.5 if scale is None else scale)
            assert_close(out[qs], ref, dtype, f"dense out of sequence {s}")
            assert_close(lse[:, qs], ref_lse, np.float32, f"dense lse of sequence {s}")
    if broken is not None or cu[-1] == 0:
        return
    # The two-step form: the plan's index, then attention over it.
    config = data.draw(proxy_settings(hkv))
    plan = run(lambda: proxyattn.estimate(q, k, cu, **config), None, may_refuse)
    if plan is None:
        return
    plan.check()
    out = run(lambda: proxyattn.attend(plan, q, k, v), None, may_refuse)
    if out is None:
        return
    for s in range(len(q_len)):
        qs = slice(cu[s], cu[s + 1])
        ref, _ = reference(q0[qs], k0[qs], v0[qs], kept_blocks(plan, s), config["block_size"], d ** -0.5)
        assert_close(out[qs], ref, dtype, f"attend out of sequence {s}")
