"""The Python API over proxyattn._C: argument checks, allocation through the caller's
framework (numpy or torch), varlen packing, and the plan object."""
import collections
import contextlib
import math
import operator

import numpy as np

from . import _C

BUDGET_MODES = {"absolute": 0, "proportional": 1}
_TORCH_DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16")
_INT32_MAX = 2**31 - 1  # the library's token offsets are int32


# ---- framework adapters ----------------------------------------------------------------
def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


def _device_of(x):
    return str(x.device) if _is_torch(x) else "cpu"


def _empty(like, shape, dtype=None):
    """An uninitialised array of `shape` from like's framework, on like's device."""
    if _is_torch(like):
        import torch

        return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    return np.empty(shape, dtype=dtype or like.dtype)


def _bytes(like, nbytes):
    if _is_torch(like):
        import torch

        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=like.device)
    return np.empty(max(nbytes, 1), dtype=np.uint8)


def _float32(like):
    if _is_torch(like):
        import torch

        return torch.float32
    return np.float32


def _dl(x):
    """x as the module takes it: a torch tensor as a DLPack capsule made in C
    (torch.utils.dlpack.to_dlpack; Tensor.__dlpack__, which the module would call, runs its
    checks in Python: 8 tensors a call cost tens of microseconds of host time), anything else
    (numpy arrays, None) as it is."""
    if _is_torch(x):
        from torch.utils.dlpack import to_dlpack

        return to_dlpack(x)
    return x


def _on_device(like):
    """A context making like's CUDA device the current one: the library launches on the
    current device, and a model spread over GPUs calls with tensors on others. When it is
    current already (one GPU, or the caller's torch.cuda.device), nothing to do: a
    torch.cuda.device context costs ~10 us of host time, a call makes two."""
    if _is_torch(like) and like.is_cuda:
        import torch

        index = like.device.index
        if index is not None and index != torch.cuda.current_device():
            return torch.cuda.device(index)
    return contextlib.nullcontext()


def _stream(like):
    """The current CUDA stream of like's device (0 for host arrays)."""
    if _is_torch(like) and like.is_cuda:
        import torch

        return torch.cuda.current_stream(like.device).cuda_stream
    return 0


def _reshape(x, shape):
    return x.reshape(shape)


def _lse_per_sequence(lse, b, n):
    """LSE [H, B * N] of a packed batch of B equal sequences -> [B, H, N]."""
    return lse.reshape(lse.shape[0], b, n).swapaxes(0, 1)


# ---- argument checks ---------------------------------------------------------------------
def _is_tensor(x):
    return isinstance(x, np.ndarray) or (_is_torch(x) and hasattr(x, "shape") and hasattr(x, "dtype"))


def _check_qkv(q, k, v, ndim, layout):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t is None:
            raise ValueError(f"{name} is None")
        if not _is_tensor(t):
            raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(t).__name__}")
        if t.ndim != ndim:
            raise ValueError(f"{name}: expected {ndim} dimensions {layout}, got shape {tuple(t.shape)}")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k and v: shapes differ, {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)}: batch, tokens and head_dim must match")
    for name, t in (("q", q), ("k", k)):
        if t.shape[-2] < 1:
            raise ValueError(f"{name}: {t.shape[-2]} heads in shape {tuple(t.shape)}: needs at least 1")
    if q.shape[-1] < 1:
        raise ValueError(f"q, k, v: head_dim {q.shape[-1]} in shape {tuple(q.shape)}: needs at least 1")
    if q.shape[-2] % k.shape[-2] != 0:
        raise ValueError(f"q heads ({q.shape[-2]}) must be a multiple of k heads ({k.shape[-2]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v: dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    devices = {_device_of(t) for t in (q, k, v)}
    if len(devices) != 1:
        raise ValueError(f"q, k, v: on different devices {sorted(devices)}")
    if _is_torch(q) and str(q.dtype) not in _TORCH_DTYPES:
        raise TypeError(f"q: dtype {q.dtype} not supported (float32, float16, bfloat16)")


def _index(name, x):
    """x as a Python int: ints, numpy and torch integers; never a bool, a float or a string."""
    try:
        if isinstance(x, (bool, np.bool_)):
            raise TypeError
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{name} = {x!r} is not an integer") from None


def _cu_list(cu_seqlens, tokens, tensor="q"):
    """cu_seqlens [num_seqs + 1] as a list of ints, checked against the packed tensors: integers
    (a list, tuple, numpy array or torch tensor, host or device: a device tensor costs one copy
    to the host), 0 first, never decreasing, int32 offsets, and the last one equal to the token
    count `tokens` of the tensors (`tensor`.shape[0]). The library trusts these lengths: it sees
    the tensors as pointers and strides only."""
    if _is_tensor(cu_seqlens):
        if cu_seqlens.ndim != 1:
            raise ValueError(f"cu_seqlens: expected 1 dimension [num_seqs + 1], got shape {tuple(cu_seqlens.shape)}")
        dtype = cu_seqlens.dtype
        integral = (np.issubdtype(dtype, np.integer) if isinstance(cu_seqlens, np.ndarray) else
                    not (dtype.is_floating_point or dtype.is_complex or str(dtype) == "torch.bool"))
        if not integral:
            raise TypeError(f"cu_seqlens: dtype {dtype} is not an integer type")
        values = cu_seqlens.tolist()
    elif isinstance(cu_seqlens, (list, tuple, range)):
        values = cu_seqlens
    else:
        raise TypeError(f"cu_seqlens: expected a list, tuple, numpy array or torch tensor of integers, "
                        f"got {type(cu_seqlens).__name__}")
    cu = [_index(f"cu_seqlens[{i}]", x) for i, x in enumerate(values)]
    if len(cu) < 2:
        raise ValueError(f"cu_seqlens: needs at least 2 entries [0, ..., total tokens], got {cu}")
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens[0] = {cu[0]}: must be 0")
    for i in range(1, len(cu)):
        if cu[i] < cu[i - 1]:
            raise ValueError(f"cu_seqlens decreases at {i}: cu_seqlens[{i - 1}] = {cu[i - 1]} > "
                             f"cu_seqlens[{i}] = {cu[i]}")
    last = len(cu) - 1
    if cu[last] > _INT32_MAX:
        raise ValueError(f"cu_seqlens[{last}] = {cu[last]} exceeds the int32 token offsets (at most 2^31 - 1)")
    if cu[last] != tokens:
        raise ValueError(f"cu_seqlens[{last}] = {cu[last]} differs from the token count of {tensor} "
                         f"({tensor}.shape[0] = {tokens})")
    return cu


def _check_max_seqlen(max_seqlen, cu):
    """flash-attn's max_seqlen, when given: an integer no smaller than the longest sequence."""
    if max_seqlen is None:
        return
    bound = _index("max_seqlen", max_seqlen)
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    longest = max(lengths)
    if longest > bound:
        raise ValueError(f"max_seqlen = {bound} is smaller than the longest sequence of cu_seqlens "
                         f"(sequence {lengths.index(longest)}: {longest} tokens)")


def _uniform_cu(b, n):
    """cu_seqlens of a [B, N, ...] batch packed as [B * N, ...]; B = 0 packs one empty sequence."""
    return [i * n for i in range(b + 1)] if b > 0 else [0, 0]


def anchor_blocks_code(anchor_blocks):
    """The C value of the anchor_blocks setting: "auto" or None -> PA_ANCHOR_BLOCKS_AUTO."""
    return _C.ANCHOR_BLOCKS_AUTO if anchor_blocks in (None, "auto") else int(anchor_blocks)


def make_config(head_dim, *, gamma=0.95, num_proxy_groups=1, block_size=128, stride=4,
                min_budget_tokens=2048, budget_mode="absolute", force_sink=True, force_local=True,
                dense_below=None, softmax_scale=None, anchor_blocks="auto"):
    """A _C.Config from keyword settings (ALGORITHM.md parameters); invalid values raise
    ProxyAttnError from the library with the field named."""
    c = _C.Config(int(head_dim))
    if budget_mode not in BUDGET_MODES:
        raise ValueError(f"budget_mode: {budget_mode!r} is not one of {sorted(BUDGET_MODES)}")
    c.gamma = float(gamma)
    c.num_proxy_groups = int(num_proxy_groups)
    c.block_size = int(block_size)
    c.stride = int(stride)
    c.min_budget_tokens = int(min_budget_tokens)
    c.budget_mode = BUDGET_MODES[budget_mode]
    c.force_sink = int(bool(force_sink))
    c.force_local = int(bool(force_local))
    c.dense_below = int(min_budget_tokens if dense_below is None else dense_below)
    c.softmax_scale = float(1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale)
    c.anchor_blocks = anchor_blocks_code(anchor_blocks)
    return c


# ---- plan ------------------------------------------------------------------------------------
class Plan:
    """The block index of one batch: per-head budgets, the shared rankings, kept blocks.

    Made by estimate(); reusable by attend() for inputs of the same shapes."""

    def __init__(self, cu_seqlens, num_q_heads, num_kv_heads, head_dim, like, config):
        self.cu_seqlens = list(cu_seqlens)
        self.num_q_heads, self.num_kv_heads, self.head_dim = num_q_heads, num_kv_heads, head_dim
        self.config = config
        self.device = _device_of(like)
        self._dtype = _C.dtype_code(like)
        args = (self.cu_seqlens, num_q_heads, num_kv_heads, head_dim, self._dtype, config)
        self._storage = _bytes(like, _C.plan_bytes(*args))
        self._workspace = _bytes(like, _C.workspace_bytes(*args))
        with _on_device(like):
            self._plan = _C.Plan(*args, self._storage)

    @property
    def num_seqs(self):
        return len(self.cu_seqlens) - 1

    # stream: the caller's current stream of q's device when it has it already (_stream(q)).
    def _estimate(self, q, k, stream=None):
        stream = _stream(q) if stream is None else stream
        with _on_device(q):
            self._plan.estimate(_dl(q), _dl(k), _dl(self._workspace), stream)

    def _attend(self, q, k, v, out, lse, stream=None):
        stream = _stream(q) if stream is None else stream
        with _on_device(q):
            self._plan.attend(_dl(q), _dl(k), _dl(v), _dl(out), _dl(lse), stream)

    # -- inspection (host copies; for a device plan each call synchronises) --
    def stats(self):
        """Totals: kept_pairs, causal_pairs, density, kept_token_pairs, dense_seqs."""
        return self._plan.stats()

    @property
    def density(self):
        return self.stats()["density"]

    def heads(self):
        """Per (sequence, head): budget_blocks (K_i), needed_blocks (count_i), density, each
        a numpy array [num_seqs, Hq], and anchors [num_seqs, Hq, anchor_blocks] (-1 = none)."""
        budget, needed, density = self._plan.heads()
        shape = (self.num_seqs, self.num_q_heads)
        return {"budget_blocks": np.asarray(budget, np.int32).reshape(shape),
                "needed_blocks": np.asarray(needed, np.int32).reshape(shape),
                "density": np.asarray(density, np.float64).reshape(shape),
                "anchors": np.asarray(self._plan.anchors(), np.int32).reshape(shape + (self._plan.anchor_blocks,))}

    def index(self):
        """(order, count): the raw block index (docs/index_format.md) as numpy arrays."""
        order, count = self._plan.index()
        return np.asarray(order, np.int32), np.asarray(count, np.int32).reshape(-1, self.num_q_heads)

    def check(self):
        """Raises ProxyAttnError if an invariant of the index is broken."""
        self._plan.check()

    # -- speed settings of the GPU calls, for tests and benchmarks (not the stable API) --
    def set_tuning(self, **fields):
        """Sets fields of the plan's tuning (include/proxyattn/proxyattn_tuning.h, e.g.
        attn_kernel=_C.TUNING_KERNEL_SM80, est_block_logits=0); the others keep their value.
        An invalid value raises ProxyAttnError naming the field, the plan unchanged. The
        workspace allocated with the plan suffices for any tuning."""
        tuning = self._plan.tuning()
        for name, value in fields.items():
            if not hasattr(tuning, name):
                raise TypeError(f"set_tuning: unknown field {name!r}")
            setattr(tuning, name, int(value))
        self._plan.set_tuning(tuning)

    def tuning(self):
        """The plan's tuning as a dict of its fields."""
        tuning = self._plan.tuning()
        return {name: getattr(tuning, name) for name in dir(tuning) if not name.startswith("_")}

    def to_flex(self, seq=0):
        """(kv_num_blocks [Hq, Nqb], kv_indices [Hq, Nqb, Nqb]) int32 numpy arrays of one
        sequence, in PyTorch FlexAttention's BlockMask form."""
        n = self.cu_seqlens[seq + 1] - self.cu_seqlens[seq]
        nqb = -(-n // self.config.block_size)
        num = np.zeros((self.num_q_heads, nqb), np.int32)
        idx = np.zeros((self.num_q_heads, nqb, nqb), np.int32)
        self._plan.to_flex(seq, num, idx)
        return num, idx

    def to_flex_block_mask(self, seq=0, device=None):
        """A torch.nn.attention.flex_attention.BlockMask of sequence `seq` for flex_attention
        on q/k/v of shape [1, H, N, d]: kept off-diagonal blocks are full blocks, the kept
        diagonal block is partial (causal), and mask_mod itself also encodes the kept blocks,
        because eager (uncompiled) flex_attention applies mask_mod to every score and ignores
        the block structure."""
        import torch
        from torch.nn.attention.flex_attention import BlockMask

        num, idx = self.to_flex(seq)
        n = self.cu_seqlens[seq + 1] - self.cu_seqlens[seq]
        block = self.config.block_size
        dev = device or self.device
        num_t, idx_t = torch.from_numpy(num).to(dev), torch.from_numpy(idx).to(dev)
        heads, nqb = num.shape
        rows = torch.arange(nqb, device=dev, dtype=torch.int32)
        # kept[h, m, n]: block n kept in row m (padding entries of idx are 0: add, don't overwrite).
        valid = (torch.arange(nqb, device=dev)[None, None, :] < num_t[..., None]).int()
        kept = torch.zeros(heads, nqb, nqb, dtype=torch.int32, device=dev).scatter_add_(2, idx_t.long(), valid) > 0
        # Kept blocks ascend, so a kept diagonal block is the last entry of its row.
        last = idx_t.gather(2, (num_t - 1).clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
        has_diagonal = ((num_t > 0) & (last == rows)).int()
        partial_idx = torch.zeros_like(idx_t)
        partial_idx[..., 0] = rows

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & kept[h, q_idx // block, kv_idx // block]

        return BlockMask.from_kv_blocks(has_diagonal[None], partial_idx[None], (num_t - has_diagonal)[None],
                                        idx_t[None], BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(n, n))

    def __repr__(self):
        return (f"Plan(num_seqs={self.num_seqs}, heads={self.num_q_heads}/{self.num_kv_heads}, "
                f"head_dim={self.head_dim}, gamma={self.config.gamma:.3g}, device={self.device})")


# ---- packed (varlen) entry points ------------------------------------------------------------
def _estimate_packed(q, k, cu, config):
    plan = Plan(cu, q.shape[1], k.shape[1], q.shape[2], q, config)
    plan._estimate(q, k)
    return plan


def _attend_packed(plan, q, k, v, return_lse, stream=None):
    out = _empty(q, tuple(q.shape))
    lse = _empty(q, (q.shape[1], q.shape[0]), _float32(q)) if return_lse else None
    plan._attend(q, k, v, out, lse, stream)
    return out, lse


def _settings(q, **kw):
    return make_config(q.shape[-1], **kw)


def estimate(q, k, cu_seqlens=None, **settings):
    """Estimates the plan: q [B, N, Hq, d] and k [B, N, Hkv, d], or packed q [total, Hq, d]
    and k [total, Hkv, d] with cu_seqlens. Settings as in attention()."""
    if cu_seqlens is None:
        _check_qkv(q, k, k, 4, "[B, N, H, d]")
        b, n = q.shape[0], q.shape[1]
        q, k = _reshape(q, (b * n,) + tuple(q.shape[2:])), _reshape(k, (b * n,) + tuple(k.shape[2:]))
        cu = _uniform_cu(b, n)
    else:
        _check_qkv(q, k, k, 3, "[total, H, d]")
        cu = _cu_list(cu_seqlens, q.shape[0])
    return _estimate_packed(q, k, cu, _settings(q, **settings))


def attend(plan, q, k, v, return_lse=False):
    """Block-sparse attention over a plan from estimate(); same layouts as estimate()."""
    if not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a proxyattn.Plan, got {type(plan).__name__}")
    if _is_tensor(q) and q.ndim == 4:
        _check_qkv(q, k, v, 4, "[B, N, H, d]")
        b, n = q.shape[0], q.shape[1]
        if plan.cu_seqlens != _uniform_cu(b, n):
            raise ValueError(f"q: a batch of {b} sequences of {n} tokens, but the plan's cu_seqlens are "
                             f"{plan.cu_seqlens}")
        flat = [_reshape(t, (b * n,) + tuple(t.shape[2:])) for t in (q, k, v)]
        out, lse = _attend_packed(plan, *flat, return_lse)
        out = _reshape(out, tuple(q.shape))
        if lse is not None:
            lse = _lse_per_sequence(lse, b, n)
        return (out, lse) if return_lse else out
    _check_qkv(q, k, v, 3, "[total, H, d]")
    out, lse = _attend_packed(plan, q, k, v, return_lse)
    return (out, lse) if return_lse else out


# Plans of attention() / attention_varlen(), reused across calls of the same shapes: the
# storage and workspace are allocated (and the batch tables written) once, outside any CUDA
# graph capture, and every later call is two launches on the stream. Keyed by the stream
# too, so that calls on different streams never share a plan's buffers.
_PLAN_CACHE = collections.OrderedDict()
_PLAN_CACHE_SIZE = 32
_CONFIG_FIELDS = ("block_size", "stride", "gamma", "min_budget_tokens", "num_proxy_groups", "force_sink",
                  "force_local", "budget_mode", "dense_below", "softmax_scale", "anchor_blocks")


# The keys whose plan the library refused to make (ProxyAttnUnsupported: e.g. float32 or
# head_dim 96 on a GPU; the verdict depends only on the key), with the library's message:
# a model's later layers and calls get the same exception without allocating a plan again.
_REFUSED = collections.OrderedDict()


def clear_plan_cache():
    """Drops the plans attention() and attention_varlen() keep for reuse (their storage and
    workspace go back to the allocator once no call uses them)."""
    _PLAN_CACHE.clear()
    _REFUSED.clear()


def _remember(cache, key, value):
    cache[key] = value
    if len(cache) > _PLAN_CACHE_SIZE:
        cache.popitem(last=False)


def _cached_plan(q, k, cu, config, stream):
    key = (tuple(cu), q.shape[-2], k.shape[-2], q.shape[-1], str(q.dtype), _device_of(q), stream,
           tuple(getattr(config, f) for f in _CONFIG_FIELDS))
    plan = _PLAN_CACHE.get(key)
    if plan is not None:
        _PLAN_CACHE.move_to_end(key)
        return plan
    if key in _REFUSED:
        raise _C.ProxyAttnUnsupported(_REFUSED[key])
    try:
        plan = Plan(cu, q.shape[-2], k.shape[-2], q.shape[-1], q, config)
    except _C.ProxyAttnUnsupported as e:
        _remember(_REFUSED, key, str(e))
        raise
    _remember(_PLAN_CACHE, key, plan)
    return plan


def _forward_packed(q, k, v, cu, settings, return_lse):
    stream = _stream(q)
    plan = _cached_plan(q, k, cu, _settings(q, **settings), stream)
    plan._estimate(q, k, stream)
    return _attend_packed(plan, q, k, v, return_lse, stream)


def _attention_eager(q, k, v, return_lse, settings):
    _check_qkv(q, k, v, 4, "[B, N, H, d]")
    return _attention_checked(q, k, v, return_lse, settings)


def _attention_checked(q, k, v, return_lse, settings):
    """attention() on arguments _check_qkv has accepted."""
    b, n = q.shape[0], q.shape[1]
    flat = [_reshape(t, (b * n,) + tuple(t.shape[2:])) for t in (q, k, v)]
    out, lse = _forward_packed(*flat, _uniform_cu(b, n), settings, return_lse)
    out = _reshape(out, tuple(q.shape))
    if lse is not None:
        lse = _lse_per_sequence(lse, b, n)
    return (out, lse) if return_lse else out


def attention(q, k, v, *, causal=True, gamma=0.95, num_proxy_groups=1, block_size=128, stride=4,
              min_budget_tokens=2048, budget_mode="absolute", force_sink=True, force_local=True,
              dense_below=None, softmax_scale=None, anchor_blocks="auto", return_lse=False):
    """ProxyAttn causal attention. q [B, N, Hq, d], k and v [B, N, Hkv, d] (Hq a multiple of
    Hkv) -> out [B, N, Hq, d] (and lse [B, Hq, N] float32 with return_lse).

    gamma: attention mass each head's budget covers; num_proxy_groups: proxy heads (divides
    Hkv); sequences shorter than dense_below (default min_budget_tokens) run dense;
    anchor_blocks: each head's blocks of largest last-block mass forced for its group ("auto" or
    None: 32 / (Q heads per group) a head, within [1, 8])."""
    if not causal:
        raise ValueError("causal=False: ProxyAttn is a causal prefill method")
    _check_qkv(q, k, v, 4, "[B, N, H, d]")
    settings = dict(gamma=gamma, num_proxy_groups=num_proxy_groups, block_size=block_size, stride=stride,
                    min_budget_tokens=min_budget_tokens, budget_mode=budget_mode, force_sink=force_sink,
                    force_local=force_local, dense_below=dense_below, softmax_scale=softmax_scale,
                    anchor_blocks=anchor_blocks)
    if _is_torch(q):
        from . import _torch_ops

        return _torch_ops.attention(q, k, v, return_lse, settings)
    return _attention_checked(q, k, v, return_lse, settings)


def attention_varlen(q, k, v, cu_seqlens, max_seqlen=None, *, causal=True, return_lse=False, **settings):
    """ProxyAttn on a packed batch: q [total, Hq, d], k and v [total, Hkv, d], cu_seqlens
    [num_seqs + 1] (host or device; a device tensor is copied to the host once).
    Returns out [total, Hq, d] (and lse [Hq, total] float32)."""
    if not causal:
        raise ValueError("causal=False: ProxyAttn is a causal prefill method")
    _check_qkv(q, k, v, 3, "[total, H, d]")
    cu = _cu_list(cu_seqlens, q.shape[0])
    _check_max_seqlen(max_seqlen, cu)
    out, lse = _forward_packed(q, k, v, cu, settings, return_lse)
    return (out, lse) if return_lse else out


def dense_attention(q, k, v, cu_seqlens=None, softmax_scale=None, return_lse=False):
    """Exact causal attention (the library's baseline), same layouts as attention_varlen /
    attention."""
    four_d = _is_tensor(q) and q.ndim == 4
    if four_d:
        _check_qkv(q, k, v, 4, "[B, N, H, d]")
        b, n = q.shape[0], q.shape[1]
        q2, k2, v2 = (_reshape(t, (b * n,) + tuple(t.shape[2:])) for t in (q, k, v))
        cu = _uniform_cu(b, n)
    else:
        _check_qkv(q, k, v, 3, "[total, H, d]")
        q2, k2, v2 = q, k, v
        cu = _cu_list(cu_seqlens if cu_seqlens is not None else [0, q.shape[0]], q.shape[0])
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    out = _empty(q2, tuple(q2.shape))
    lse = _empty(q2, (q2.shape[1], q2.shape[0]), _float32(q2)) if return_lse else None
    with _on_device(q2):
        _C.dense_attention(cu, scale, q2, k2, v2, out, lse, _stream(q2))
    if four_d:
        out = _reshape(out, tuple(q.shape))
        if lse is not None:
            lse = _lse_per_sequence(lse, b, n)
    return (out, lse) if return_lse else out


def set_num_threads(n):
    """Threads of the CPU backend (0 = all cores)."""
    _C.set_num_threads(int(n))
