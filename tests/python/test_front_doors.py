"""The package's front doors (issue 26), on numpy arrays and torch tensors alike: cu_seqlens
checked against the tensors they describe (the library trusts them: a last entry past the
tokens was a segmentation fault, one short of them left rows unwritten), argument errors that
name the argument, misaligned and aliasing buffers refused, and NaN in, NaN out."""
import numpy as np
import pytest

import proxyattn
from proxyattn import _api, _C

try:
    import torch
except ImportError:
    torch = None

SPARSE = dict(block_size=64, min_budget_tokens=64, dense_below=0, gamma=0.9)


def tensor(fw, x):
    return torch.from_numpy(np.ascontiguousarray(x)) if fw == "torch" else x


def ints(fw, values):
    return torch.tensor(values) if fw == "torch" else np.array(values, np.int64)


def as_numpy(x):
    return x.float().numpy() if torch is not None and isinstance(x, torch.Tensor) else np.asarray(x, np.float32)


def packed(fw, n=512, hq=4, hkv=2, d=64, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(tensor(fw, rng.standard_normal((n, h, d)).astype(np.float32)) for h in (hq, hkv, hkv))


# ---- cu_seqlens against the tensors -----------------------------------------------------------
def test_cu_seqlens_past_the_tokens_is_refused(fw):
    """The crash of issue 26: 4000 tokens promised, 512 given (a segmentation fault before)."""
    q, k, v = packed(fw)
    message = r"cu_seqlens\[2\] = 4000 differs from the token count of q \(q\.shape\[0\] = 512\)"
    with pytest.raises(ValueError, match=message):
        proxyattn.attention_varlen(q, k, k, ints(fw, [0, 200, 4000]), 3800)
    with pytest.raises(ValueError, match=message):
        proxyattn.estimate(q, k, ints(fw, [0, 200, 4000]))
    with pytest.raises(ValueError, match=message):
        proxyattn.dense_attention(q, k, v, ints(fw, [0, 200, 4000]))


def test_cu_seqlens_short_of_the_tokens_is_refused(fw):
    """A last entry below the token count ran, and rows 400-511 were never written."""
    q, k, v = packed(fw)
    with pytest.raises(ValueError, match=r"cu_seqlens\[2\] = 400 differs from the token count of q"):
        proxyattn.attention_varlen(q, k, v, ints(fw, [0, 200, 400]))
    with pytest.raises(ValueError, match=r"cu_seqlens\[1\] = 511 differs"):
        proxyattn.dense_attention(q, k, v, [0, 511])


def test_the_module_checks_every_array_against_the_batch(fw):
    """proxyattn._C is a front door too: shapes against the plan's (or q's) batch."""
    q, k, v = packed(fw)
    out = _api._empty(q, tuple(q.shape))
    dl = _api._dl
    with pytest.raises(ValueError, match=r"cu_seqlens\[2\] = 4000 differs from the token count of q \(q\.shape"):
        _C.dense_attention([0, 200, 4000], 0.125, dl(q), dl(k), dl(v), dl(out), None, 0)
    with pytest.raises(ValueError, match=r"o: shape \[512, 2, 64\], expected \[512, 4, 64\]"):
        _C.dense_attention([0, 512], 0.125, dl(q), dl(k), dl(v), dl(_api._empty(q, (512, 2, 64))), None, 0)
    with pytest.raises(ValueError, match=r"lse: expected a contiguous \[4, 512\] array"):
        _C.dense_attention([0, 512], 0.125, dl(q), dl(k), dl(v), dl(out), dl(_api._empty(q, (512, 4), np.float32
                                                                                              if fw == "numpy"
                                                                                              else torch.float32)), 0)
    with pytest.raises(ValueError, match=r"cu_seqlens\[1\] = 4294967296 does not fit the int32"):
        _C.dense_attention([0, 2**32], 0.125, dl(q), dl(k), dl(v), dl(out), None, 0)

    plan = proxyattn.estimate(q, k, [0, 200, 512], **SPARSE)
    with pytest.raises(ValueError, match=r"cu_seqlens\[2\] = 512 differs from the token count of q \(q\.shape\[0\] = 400\)"):
        proxyattn.attend(plan, q[:400], k[:400], v[:400])
    with pytest.raises(ValueError, match=r"k: shape \[512, 4, 64\], expected \[512, 2, 64\]"):
        proxyattn.attend(plan, q, q, q)
    with pytest.raises(ValueError, match=r"a batch of 2 sequences of 256 tokens, but the plan's cu_seqlens are \[0, 200, 512\]"):
        proxyattn.attend(plan, *(t.reshape(2, 256, t.shape[1], 64) for t in (q, k, v)))
    with pytest.raises(ValueError, match=r"kv_num_blocks: expected a contiguous host int32 array of shape \(4, 4\)"):
        plan._plan.to_flex(0, np.zeros((4, 3), np.int32), np.zeros((4, 4, 4), np.int32))
    num, idx = plan.to_flex(1)
    assert num.shape == (4, 5) and idx.shape == (4, 5, 5)


@pytest.mark.parametrize("cu, error, message", [
    ([0, 2**31], ValueError, r"cu_seqlens\[1\] = 2147483648 exceeds the int32 token offsets"),
    ([0, 200.7, 512], TypeError, r"cu_seqlens\[1\] = 200.7 is not an integer"),
    ([0, 200.0, 512], TypeError, r"cu_seqlens\[1\] = 200.0 is not an integer"),
    ([0, True, 512], TypeError, r"cu_seqlens\[1\] = True is not an integer"),
    (np.array([0.0, 512.0]), TypeError, r"cu_seqlens: dtype float64 is not an integer type"),
    (np.array([[0, 512]]), ValueError, r"cu_seqlens: expected 1 dimension \[num_seqs \+ 1\], got shape \(1, 2\)"),
    ("0,512", TypeError, r"cu_seqlens: expected a list, tuple, numpy array or torch tensor of integers, got str"),
    (None, TypeError, r"cu_seqlens: expected a list"),
    ([512], ValueError, r"cu_seqlens: needs at least 2 entries"),
    ([5, 512], ValueError, r"cu_seqlens\[0\] = 5: must be 0"),
    ([0, 300, 200, 512], ValueError, r"cu_seqlens decreases at 2: cu_seqlens\[1\] = 300 > cu_seqlens\[2\] = 200"),
])
def test_cu_seqlens_errors_name_it(cu, error, message):
    q, k, v = packed("numpy")
    with pytest.raises(error, match=message):
        proxyattn.attention_varlen(q, k, v, cu)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_cu_seqlens_torch_dtypes():
    q, k, v = packed("torch")
    with pytest.raises(TypeError, match=r"cu_seqlens: dtype torch.float32 is not an integer type"):
        proxyattn.attention_varlen(q, k, v, torch.tensor([0.0, 512.0]))
    with pytest.raises(TypeError, match=r"cu_seqlens: dtype torch.bool"):
        proxyattn.attention_varlen(q, k, v, torch.tensor([False, True]))
    with pytest.raises(ValueError, match=r"cu_seqlens\[1\] = 2147483648 exceeds"):
        proxyattn.attention_varlen(q, k, v, torch.tensor([0, 2**31]))


def test_max_seqlen(fw):
    q, k, v = packed(fw)
    cu = ints(fw, [0, 200, 512])
    # Decreasing cu_seqlens with max_seqlen given blamed max_seqlen: now cu_seqlens.
    with pytest.raises(ValueError, match=r"cu_seqlens decreases at 2"):
        proxyattn.attention_varlen(q, k, v, [0, 300, 200, 512], 300)
    with pytest.raises(ValueError, match=r"max_seqlen = 300 is smaller than the longest sequence of cu_seqlens "
                                         r"\(sequence 1: 312 tokens\)"):
        proxyattn.attention_varlen(q, k, v, cu, 300)
    with pytest.raises(TypeError, match=r"max_seqlen = 312.5 is not an integer"):
        proxyattn.attention_varlen(q, k, v, cu, 312.5)
    a = proxyattn.attention_varlen(q, k, v, cu, 312, **SPARSE)
    b = proxyattn.attention_varlen(q, k, v, cu, np.int64(4096), **SPARSE)
    assert np.array_equal(as_numpy(a), as_numpy(b))


def test_cu_seqlens_forms_agree(fw):
    q, k, v = packed(fw)
    forms = [[0, 200, 512], (0, 200, 512), range(0, 513, 256), np.array([0, 200, 512], np.int32),
             [np.int64(0), np.int32(200), 512]]
    if fw == "torch":
        forms += [torch.tensor([0, 200, 512], dtype=torch.int32), [torch.tensor(0), torch.tensor(200), 512]]
    outs = [as_numpy(proxyattn.attention_varlen(q, k, v, cu, **SPARSE)) for cu in forms]
    for i, out in enumerate(outs):
        if i != 2:  # range(0, 513, 256) is [0, 256, 512]
            assert np.array_equal(out, outs[0]), forms[i]


# ---- shapes, types and buffers ----------------------------------------------------------------
def test_empty_inputs_give_empty_outputs(fw):
    """N = 0 (numpy reported "the last dimension must be contiguous" for some empty views) and
    B = 0: empty results, as torch's attention gives."""
    q, k, v = packed(fw)
    flat = [q[:0], k[:0], v[:0]]
    out, lse = proxyattn.attention_varlen(*flat, [0, 0], return_lse=True)
    assert tuple(out.shape) == (0, 4, 64) and tuple(lse.shape) == (4, 0)
    if fw == "numpy":  # empty views whose strides are not contiguous
        strided = [np.zeros((0, 4, 64), np.float32)] + [np.zeros((0, 2, 128), np.float32)[:, :, ::2]] * 2
        assert tuple(proxyattn.attention_varlen(*strided, [0, 0]).shape) == (0, 4, 64)
        assert tuple(proxyattn.dense_attention(*strided).shape) == (0, 4, 64)
    for b, n in ((1, 0), (3, 0), (0, 5)):
        batch = [t[:b * n].reshape(b, n, t.shape[1], 64) for t in (q, k, v)]
        out, lse = proxyattn.attention(*batch, return_lse=True)
        assert tuple(out.shape) == (b, n, 4, 64) and tuple(lse.shape) == (b, 4, n)
        out, lse = proxyattn.dense_attention(*batch, return_lse=True)
        assert tuple(out.shape) == (b, n, 4, 64) and tuple(lse.shape) == (b, 4, n)


def test_zero_heads_or_head_dim_name_the_tensor(fw):
    """Were a ZeroDivisionError."""
    zeros = (lambda *s: torch.zeros(*s)) if fw == "torch" else (lambda *s: np.zeros(s, np.float32))
    with pytest.raises(ValueError, match=r"q: 0 heads in shape \(1, 8, 0, 64\): needs at least 1"):
        proxyattn.attention(zeros(1, 8, 0, 64), zeros(1, 8, 0, 64), zeros(1, 8, 0, 64))
    with pytest.raises(ValueError, match=r"k: 0 heads"):
        proxyattn.attention_varlen(zeros(8, 4, 64), zeros(8, 0, 64), zeros(8, 0, 64), [0, 8])
    with pytest.raises(ValueError, match=r"head_dim 0 in shape \(1, 8, 4, 0\)"):
        proxyattn.attention(zeros(1, 8, 4, 0), zeros(1, 8, 2, 0), zeros(1, 8, 2, 0))
    with pytest.raises(ValueError, match=r"head_dim 0"):
        proxyattn.dense_attention(zeros(8, 4, 0), zeros(8, 2, 0), zeros(8, 2, 0))


def test_not_an_array_names_the_argument(fw):
    """A Python list as q was an AttributeError."""
    q, k, v = packed(fw)
    q4, k4, v4 = (t[None] for t in (q, k, v))
    with pytest.raises(TypeError, match=r"q: expected a numpy array or a torch tensor, got list"):
        proxyattn.attention(q4.tolist(), k4, v4)
    with pytest.raises(TypeError, match=r"k: expected a numpy array or a torch tensor, got list"):
        proxyattn.attention(q4, k4.tolist(), v4)
    with pytest.raises(TypeError, match=r"v: expected .* got tuple"):
        proxyattn.attention_varlen(q, k, tuple(v.tolist()), [0, 512])
    with pytest.raises(TypeError, match=r"q: expected .* got list"):
        proxyattn.dense_attention(q.tolist(), k, v)
    with pytest.raises(TypeError, match=r"q: expected .* got list"):
        proxyattn.estimate(q.tolist(), k, [0, 512])
    plan = proxyattn.estimate(q, k, [0, 512], **SPARSE)
    with pytest.raises(TypeError, match=r"q: expected .* got list"):
        proxyattn.attend(plan, q.tolist(), k, v)


def test_one_kv_head_and_one_token(fw):
    """Dimensions of extent 1: torch's DLPack export gives them stride 1, which the library
    took for the real head (or token) stride and refused (MQA and single-token calls)."""
    q, k, v = packed(fw, n=260, hq=2, hkv=1, seed=6)
    out = proxyattn.attention_varlen(q, k, v, [0, 260], **SPARSE)
    dense = proxyattn.dense_attention(q, k, v)
    ref, _ = reference(*(as_numpy(t) for t in (q, k, v)), 64 ** -0.5)
    assert np.abs(as_numpy(dense) - ref).max() < 1e-5 and np.isfinite(as_numpy(out)).all()
    out1 = proxyattn.attention_varlen(q[:1], k[:1], v[:1], [0, 1])
    assert np.abs(as_numpy(out1)[0] - as_numpy(v)[0]).max() < 1e-6  # one key: its value


def test_read_only_numpy_inputs_are_accepted():
    """Were "incompatible function arguments": the library only reads q, k, v."""
    q, k, v = packed("numpy")
    expected = proxyattn.attention_varlen(q, k, v, [0, 200, 512], **SPARSE)
    for t in (q, k, v):
        t.setflags(write=False)
    assert np.array_equal(proxyattn.attention_varlen(q, k, v, [0, 200, 512], **SPARSE), expected)
    assert np.array_equal(proxyattn.attend(proxyattn.estimate(q, k, [0, 200, 512], **SPARSE), q, k, v), expected)
    proxyattn.dense_attention(q, k, v)


def misaligned(fw, shape):
    """A float32 array one byte off its alignment."""
    count = int(np.prod(shape))
    if fw == "torch":
        return torch.frombuffer(bytearray(count * 4 + 1), dtype=torch.float32, offset=1, count=count).view(shape)
    return np.frombuffer(bytearray(count * 4 + 1), np.float32, count, offset=1).reshape(shape)


def test_misaligned_pointer_is_refused(fw):
    q, k, v = packed(fw)
    q_off = misaligned(fw, (512, 4, 64))
    q_off[...] = q
    message = r"q.data = 0x[0-9a-f]+ is not aligned to its 4-byte float32 elements"
    with pytest.raises(proxyattn.ProxyAttnError, match=message):
        proxyattn.attention_varlen(q_off, k, v, [0, 512])
    with pytest.raises(proxyattn.ProxyAttnError, match=message):
        proxyattn.dense_attention(q_off, k, v)


def test_outputs_sharing_memory_with_inputs_are_refused(fw):
    """Through the module, where the caller passes the outputs (the package allocates its own)."""
    q, k, v = packed(fw)
    dl = _api._dl
    with pytest.raises(proxyattn.ProxyAttnError, match=r"o \(0x[0-9a-f]+\) overlaps q .*no in-place attention"):
        _C.dense_attention([0, 512], 0.125, dl(q), dl(k), dl(v), dl(q), None, 0)
    # V, then O from V's last row on, in one buffer.
    buf = tensor(fw, np.zeros(512 * 6 * 64, np.float32))
    v_in = buf[:512 * 2 * 64].reshape(512, 2, 64)
    v_in[...] = v
    o_over_v = buf[512 * 2 * 64 - 64:512 * 6 * 64 - 64].reshape(512, 4, 64)
    plan = proxyattn.estimate(q, k, [0, 512], **SPARSE)
    with pytest.raises(proxyattn.ProxyAttnError, match=r"o \(0x[0-9a-f]+\) overlaps v"):
        plan._attend(q, k, v_in, o_over_v, None)
    lse_over_k = k.reshape(-1)[:4 * 512].reshape(4, 512)
    with pytest.raises(proxyattn.ProxyAttnError, match=r"lse \(0x[0-9a-f]+\) overlaps k"):
        _C.dense_attention([0, 512], 0.125, dl(q), dl(k), dl(v), dl(_api._empty(q, (512, 4, 64))), dl(lse_over_k), 0)
    assert np.array_equal(as_numpy(buf[:512 * 2 * 64]).reshape(512, 2, 64), as_numpy(v))  # nothing written


# ---- NaN in, NaN out ------------------------------------------------------------------------------
def reference(q, k, v, scale):
    """fp64 causal attention of one sequence [N, H, d] (GQA), and its LSE [H, N]."""
    n, hq, d = q.shape
    group = hq // k.shape[1]
    out, lse = np.zeros((n, hq, d)), np.zeros((hq, n))
    for h in range(hq):
        s = (q[:, h].astype(np.float64) @ k[:, h // group].astype(np.float64).T) * scale
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
        m = s.max(1, keepdims=True)
        p = np.exp(s - m)
        out[:, h] = (p / p.sum(1, keepdims=True)) @ v[:, h // group].astype(np.float64)
        lse[h] = (m + np.log(p.sum(1, keepdims=True)))[:, 0]
    return out, lse


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("where", ["q", "k"])
def test_nan_in_nan_out(fw, sparse, where):
    """A NaN in one query row gave that row O = 0 and LSE = -inf; every reference gives NaN.
    Now the rows that see a NaN (its Q row; for K, the later rows of its KV head's Q heads:
    token 5 lies in block 0, which every row keeps as its sink) get NaN, the others numbers."""
    q, k, v = (as_numpy(t).copy() for t in packed(fw, n=300, seed=3))
    if where == "q":
        q[200, 1, 7] = np.nan
    else:
        k[5, 0, 7] = np.nan
    ref_out, ref_lse = reference(q, k, v, 64 ** -0.5)
    args = [tensor(fw, t) for t in (q, k, v)]
    if sparse:
        out, lse = proxyattn.attention_varlen(*args, [0, 300], return_lse=True, **SPARSE)
    else:
        out, lse = proxyattn.dense_attention(*args, return_lse=True)
    out, lse = as_numpy(out), as_numpy(lse)
    nan_rows = np.isnan(ref_out).any(axis=2)  # [N, H]: the rows that see the NaN
    assert nan_rows.any() and not nan_rows.all()
    assert np.array_equal(np.isnan(out).all(axis=2), nan_rows)
    assert np.array_equal(np.isnan(lse), np.isnan(ref_lse))
    assert np.array_equal(np.isnan(lse).T, nan_rows)
    assert np.isfinite(out[~nan_rows]).all() and np.isfinite(lse.T[~nan_rows]).all()
    if not sparse:
        assert np.abs(out[~nan_rows] - ref_out[~nan_rows]).max() < 1e-5


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_nan_in_nan_out_half_precision_like_sdpa(dtype):
    """bf16 / fp16 torch tensors: the same rows are NaN as in torch's own attention."""
    q, k, v = (t.to(getattr(torch, dtype))[None] for t in packed("torch", n=260, hq=2, hkv=1, seed=4))
    q[0, 100, 0, 3] = float("nan")
    out, lse = proxyattn.attention(q, k, v, return_lse=True, **SPARSE)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                                            v.transpose(1, 2).float(), is_causal=True,
                                                            enable_gqa=True).transpose(1, 2)
    assert torch.equal(out.isnan().all(-1), sdpa.isnan().any(-1))
    assert torch.equal(lse.isnan().transpose(1, 2), sdpa.isnan().any(-1))
    assert out.isnan().sum() == 64  # row 100 of head 0 only
