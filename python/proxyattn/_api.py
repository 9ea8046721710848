"""The Python API over proxyattn._C: argument checks, allocation through the caller's
framework (numpy or torch), varlen packing, and the plan object."""
import collections
import contextlib
import math
import numbers
import sys

import numpy as np

from . import _C
from ._settings import config_of, index as _index, settings_of

_TORCH_DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16")
_INT32_MAX = 2**31 - 1  # the library's token offsets are int32


# ---- framework adapters ----------------------------------------------------------------
def _is_torch(x):
    """Whether x is a torch tensor (fake, meta and subclass tensors too), without importing
    torch, in a form torch.compile traces for any x (type(x).__module__ of a list it cannot)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


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


def _check_tensor(name, t, ndim, layout):
    if t is None:
        raise ValueError(f"{name} is None")
    if not _is_tensor(t):
        raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {layout}, got shape {tuple(t.shape)}")


def _check_qkv(q, k, v, ndim, layout, same_tokens=True, names=("q", "k", "v"), kv_ndim=None, kv_layout=None):
    """q, k, v arrays of ndim dimensions [..., heads, head_dim] (k and v of kv_ndim, kv_layout
    when given: a paged cache) of one dtype and device, heads of q a multiple of k's; with
    same_tokens the leading dimensions (batch, tokens) of q and k agree, else only head_dim
    (chunked calls: more keys than queries). names: the arguments' names in messages."""
    qn, kn, vn = names
    for name, t, nd, lay in ((qn, q, ndim, layout), (kn, k, kv_ndim or ndim, kv_layout or layout),
                             (vn, v, kv_ndim or ndim, kv_layout or layout)):
        _check_tensor(name, t, nd, lay)
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"{kn} and {vn}: shapes differ, {tuple(k.shape)} vs {tuple(v.shape)}")
    if same_tokens and (q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]):
        raise ValueError(f"{qn} {tuple(q.shape)} and {kn} {tuple(k.shape)}: batch, tokens and head_dim must match")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{qn} {tuple(q.shape)} and {kn} {tuple(k.shape)}: head_dim must match")
    for name, t in ((qn, q), (kn, k)):
        if t.shape[-2] < 1:
            raise ValueError(f"{name}: {t.shape[-2]} heads in shape {tuple(t.shape)}: needs at least 1")
    if q.shape[-1] < 1:
        raise ValueError(f"{qn}, {kn}, {vn}: head_dim {q.shape[-1]} in shape {tuple(q.shape)}: needs at least 1")
    if q.shape[-2] % k.shape[-2] != 0:
        raise ValueError(f"{qn} heads ({q.shape[-2]}) must be a multiple of {kn} heads ({k.shape[-2]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{qn}, {kn}, {vn}: dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    devices = {_device_of(t) for t in (q, k, v)}
    if len(devices) != 1:
        raise ValueError(f"{qn}, {kn}, {vn}: on different devices {sorted(devices)}")
    if _is_torch(q) and str(q.dtype) not in _TORCH_DTYPES:
        raise TypeError(f"{qn}: dtype {q.dtype} not supported (float32, float16, bfloat16)")


def _is_integral(x):
    dtype = x.dtype
    if isinstance(x, np.ndarray):
        return np.issubdtype(dtype, np.integer)
    return not (dtype.is_floating_point or dtype.is_complex or str(dtype) == "torch.bool")


def _entries(values, name, layout):
    """The number of entries of a 1-D integer sequence (layout, e.g. "[num_seqs + 1]", in
    messages) without reading a tensor's values (torch.compile traces it)."""
    if _is_tensor(values):
        if values.ndim != 1:
            raise ValueError(f"{name}: expected 1 dimension {layout}, got shape {tuple(values.shape)}")
        if not _is_integral(values):
            raise TypeError(f"{name}: dtype {values.dtype} is not an integer type")
        return int(values.shape[0])
    if isinstance(values, (list, tuple, range)):
        return len(values)
    raise TypeError(f"{name}: expected a list, tuple, numpy array or torch tensor of integers, "
                    f"got {type(values).__name__}")


def _host_ints(values, name, layout):
    """values (_entries) as a list of Python ints: a list, tuple, range, numpy array or torch
    tensor (host or device: a device tensor costs one synchronising copy to the host) of
    integers; never a bool, a float or a string."""
    _entries(values, name, layout)
    if _is_tensor(values):
        values = values.tolist()
    return [_index(f"{name}[{i}]", x) for i, x in enumerate(values)]


def _cu_list(cu_seqlens, tokens, tensor="q", name="cu_seqlens"):
    """cu_seqlens [num_seqs + 1] (`name` in messages) as a list of ints (_host_ints), checked
    against the packed tensors: 0 first, never decreasing, int32 offsets, and the last one equal
    to the token count `tokens` of the tensors (`tensor`.shape[0]). The library trusts these
    lengths: it sees the tensors as pointers and strides only."""
    cu = _host_ints(cu_seqlens, name, "[num_seqs + 1]")
    if len(cu) < 2:
        raise ValueError(f"{name}: needs at least 2 entries [0, ..., total tokens], got {cu}")
    if cu[0] != 0:
        raise ValueError(f"{name}[0] = {cu[0]}: must be 0")
    for i in range(1, len(cu)):
        if cu[i] < cu[i - 1]:
            raise ValueError(f"{name} decreases at {i}: {name}[{i - 1}] = {cu[i - 1]} > {name}[{i}] = {cu[i]}")
    last = len(cu) - 1
    if cu[last] > _INT32_MAX:
        raise ValueError(f"{name}[{last}] = {cu[last]} exceeds the int32 token offsets (at most 2^31 - 1)")
    if cu[last] != tokens:
        raise ValueError(f"{name}[{last}] = {cu[last]} differs from the token count of {tensor} "
                         f"({tensor}.shape[0] = {tokens})")
    return cu


def _check_max_seqlen(max_seqlen, cu, name="max_seqlen", cu_name="cu_seqlens"):
    """flash-attn's max_seqlen (`name`), when given: an integer no smaller than the longest
    sequence of cu (`cu_name`)."""
    if max_seqlen is None:
        return
    bound = _index(name, max_seqlen)
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    longest = max(lengths)
    if longest > bound:
        raise ValueError(f"{name} = {bound} is smaller than the longest sequence of {cu_name} "
                         f"(sequence {lengths.index(longest)}: {longest} tokens)")


def _uniform_cu(b, n):
    """cu_seqlens of a [B, N, ...] batch packed as [B * N, ...]; B = 0 packs one empty sequence."""
    return [i * n for i in range(b + 1)] if b > 0 else [0, 0]


# ---- plan ------------------------------------------------------------------------------------
class Plan:
    """The block index of one batch: per-head budgets, the shared rankings, kept blocks.

    Made by estimate(); reusable by attend() for inputs of the same shapes. The plans of
    chunked calls (attention_varlen with cu_seqlens_k, attention_with_kvcache) also hold the key
    lengths cu_seqlens_k and the paged cache's page_size, num_pages, max_pages_per_seq."""

    # config: pa_config's values (Settings.resolve: a ConfigValues). library: a _C.Library, another
    # build of the library that runs this plan (benchmarks' A/B); None: the module's own.
    def __init__(self, cu_seqlens, num_q_heads, num_kv_heads, head_dim, like, config, cu_seqlens_k=None,
                 page_size=0, num_pages=0, max_pages_per_seq=0, library=None):
        self.cu_seqlens = list(cu_seqlens)
        self.cu_seqlens_k = None if cu_seqlens_k is None else list(cu_seqlens_k)
        self.num_q_heads, self.num_kv_heads, self.head_dim = num_q_heads, num_kv_heads, head_dim
        self.config = config = config_of(config)
        self.device = _device_of(like)
        self._dtype = _C.dtype_code(like)
        problem = _C.Problem(self.cu_seqlens, num_q_heads, num_kv_heads, head_dim, self._dtype, self.cu_seqlens_k,
                             page_size, num_pages, max_pages_per_seq)
        self._storage = _bytes(like, _C.plan_bytes(problem, config, library))
        self._workspace = _bytes(like, _C.workspace_bytes(problem, config, library))
        with _on_device(like):
            self._plan = _C.Plan(problem, config, self._storage, library)

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

    # K and V packed by cu_seqlens_k (block_table None) or a paged cache with its block table
    # and, optionally, its ProxyState.
    def _forward_kv(self, q, k, v, block_table, state, out, lse, stream=None):
        stream = _stream(q) if stream is None else stream
        with _on_device(q):
            self._plan.forward_kv(_dl(q), _dl(k), _dl(v), _dl(block_table), None if state is None else state._handle,
                                  _dl(out), _dl(lse), _dl(self._workspace), stream)

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

    def set_index(self, order, count):
        """Writes the raw block index (index()'s layout: order int32 [order_entries], count int32
        [total_qblocks, Hq], host arrays), e.g. a benchmark's hand-made mask; the plan then
        counts as estimated (budgets and needed blocks zero, no anchors)."""
        self._plan.set_index(np.ascontiguousarray(order, np.int32), np.ascontiguousarray(count, np.int32))

    def tuning(self):
        """The plan's tuning as a dict of its fields."""
        tuning = self._plan.tuning()
        return {name: getattr(tuning, name) for name in dir(tuning) if not name.startswith("_")}

    def to_flex(self, seq=0):
        """(kv_num_blocks [Hq, Nqb], kv_indices [Hq, Nqb, Nqb]) int32 numpy arrays of one
        sequence, in PyTorch FlexAttention's BlockMask form. A chunk's plan has the chunk's rows
        m0 .. Nkb - 1 of its Nkb key blocks: [Hq, Nkb - m0] and [Hq, Nkb - m0, Nkb]
        (docs/index_format.md)."""
        n = self.cu_seqlens[seq + 1] - self.cu_seqlens[seq]
        kv = n if self.cu_seqlens_k is None else self.cu_seqlens_k[seq + 1] - self.cu_seqlens_k[seq]
        nkb = -(-kv // self.config.block_size)
        rows = nkb - (kv - n) // self.config.block_size
        num = np.zeros((self.num_q_heads, rows), np.int32)
        idx = np.zeros((self.num_q_heads, rows, nkb), np.int32)
        self._plan.to_flex(seq, num, idx)
        return num, idx

    def to_flex_block_mask(self, seq=0, device=None, exact_mask_mod=True):
        """A torch.nn.attention.flex_attention.BlockMask of sequence `seq` for flex_attention
        on q/k/v of shape [1, H, N, d]: kept off-diagonal blocks are full blocks, the kept
        diagonal block is partial (causal), and mask_mod itself also encodes the kept blocks,
        because eager (uncompiled) flex_attention applies mask_mod to every score and ignores
        the block structure. exact_mask_mod=False: mask_mod is the causal mask alone, the
        fastest form compiled flex_attention takes (it reads the kept blocks from the lists)."""
        import torch
        from torch.nn.attention.flex_attention import BlockMask

        if self.cu_seqlens_k is not None:
            raise ValueError("to_flex_block_mask: the plan of a chunked call (cu_seqlens_k) has a chunk's rows "
                             "only; use to_flex()")
        num, idx = self.to_flex(seq)
        n = self.cu_seqlens[seq + 1] - self.cu_seqlens[seq]
        block = self.config.block_size
        dev = device or self.device
        num_t, idx_t = torch.from_numpy(num).to(dev), torch.from_numpy(idx).to(dev)
        heads, nqb = num.shape
        rows = torch.arange(nqb, device=dev, dtype=torch.int32)
        # Kept blocks ascend, so a kept diagonal block is the last entry of its row.
        last = idx_t.gather(2, (num_t - 1).clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
        has_diagonal = ((num_t > 0) & (last == rows)).int()
        partial_idx = torch.zeros_like(idx_t)
        partial_idx[..., 0] = rows

        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx

        def exact(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & kept[h, q_idx // block, kv_idx // block]

        if exact_mask_mod:
            # kept[h, m, n]: block n kept in row m (padding entries of idx are 0: add, don't overwrite).
            valid = (torch.arange(nqb, device=dev)[None, None, :] < num_t[..., None]).int()
            kept = torch.zeros(heads, nqb, nqb, dtype=torch.int32, device=dev).scatter_add_(2, idx_t.long(),
                                                                                              valid) > 0
        return BlockMask.from_kv_blocks(has_diagonal[None], partial_idx[None], (num_t - has_diagonal)[None],
                                        idx_t[None], BLOCK_SIZE=block, mask_mod=exact if exact_mask_mod else causal,
                                        seq_lengths=(n, n))

    def __repr__(self):
        return (f"Plan(num_seqs={self.num_seqs}, heads={self.num_q_heads}/{self.num_kv_heads}, "
                f"head_dim={self.head_dim}, gamma={self.config.gamma:.3g}, device={self.device})")


# ---- packed (varlen) entry points ------------------------------------------------------------
def _estimate_packed(q, k, cu, config):
    plan = Plan(cu, q.shape[1], k.shape[1], q.shape[2], q, config)
    plan._estimate(q, k)
    return plan


def _outputs(q, return_lse):
    """out like packed q [total, Hq, d], and lse [Hq, total] float32 when wanted."""
    out = _empty(q, tuple(q.shape))
    lse = _empty(q, (q.shape[1], q.shape[0]), _float32(q)) if return_lse else None
    return out, lse


def _attend_packed(plan, q, k, v, return_lse, stream=None):
    out, lse = _outputs(q, return_lse)
    plan._attend(q, k, v, out, lse, stream)
    return out, lse


def estimate(q, k, cu_seqlens=None, *, settings=None, **changes):
    """Estimates the plan: q [B, N, Hq, d] and k [B, N, Hkv, d], or packed q [total, Hq, d]
    and k [total, Hkv, d] with cu_seqlens. Settings as in attention()."""
    settings = settings_of(settings, **changes)
    if cu_seqlens is None:
        _check_qkv(q, k, k, 4, "[B, N, H, d]")
        b, n = q.shape[0], q.shape[1]
        q, k = _reshape(q, (b * n,) + tuple(q.shape[2:])), _reshape(k, (b * n,) + tuple(k.shape[2:]))
        cu = _uniform_cu(b, n)
    else:
        _check_qkv(q, k, k, 3, "[total, H, d]")
        cu = _cu_list(cu_seqlens, q.shape[0])
    return _estimate_packed(q, k, cu, settings.resolve(q.shape[-1]))


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


def _cached_plan(q, k, cu, config, stream, cu_k=None, paged=(0, 0, 0)):
    """The plan of these shapes, lengths and config (pa_config's values, a ConfigValues): a whole
    prompt's (cu_k None) or a chunked call's, with keys packed by cu_k or (paged: page_size,
    num_pages, max_pages_per_seq) in a paged cache. A chunked plan depends on every key length:
    serving steps rarely repeat one."""
    key = (tuple(cu), None if cu_k is None else tuple(cu_k), tuple(paged), q.shape[-2], k.shape[-2], q.shape[-1],
           str(q.dtype), _device_of(q), stream, tuple(config))
    plan = _PLAN_CACHE.get(key)
    if plan is not None:
        _PLAN_CACHE.move_to_end(key)
        return plan
    if key in _REFUSED:
        raise _C.ProxyAttnUnsupported(_REFUSED[key])
    try:
        plan = Plan(cu, q.shape[-2], k.shape[-2], q.shape[-1], q, config, cu_k, *paged)
    except _C.ProxyAttnUnsupported as e:
        _remember(_REFUSED, key, str(e))
        raise
    _remember(_PLAN_CACHE, key, plan)
    return plan


def _forward_packed(q, k, v, cu, config, return_lse):
    stream = _stream(q)
    plan = _cached_plan(q, k, cu, config, stream)
    plan._estimate(q, k, stream)
    return _attend_packed(plan, q, k, v, return_lse, stream)


def _forward_kv(q, k, v, cu, cu_k, config, return_lse, paged=(0, 0, 0), block_table=None, state=None):
    """A chunked call: q packed by cu, K and V packed by cu_k or a paged cache (paged, block_table,
    state), all checked."""
    stream = _stream(q)
    plan = _cached_plan(q, k, cu, config, stream, cu_k, paged)
    out, lse = _outputs(q, return_lse)
    plan._forward_kv(q, k, v, block_table, state, out, lse, stream)
    return out, lse


# The internal calls below take `config`: pa_config's values for q's head_dim (Settings.resolve,
# or a custom op's arguments).
def _attention_eager(q, k, v, return_lse, config):
    _check_qkv(q, k, v, 4, "[B, N, H, d]")
    return _attention_checked(q, k, v, return_lse, config)


def _attention_checked(q, k, v, return_lse, config):
    """attention() on arguments _check_qkv has accepted."""
    b, n = q.shape[0], q.shape[1]
    flat = [_reshape(t, (b * n,) + tuple(t.shape[2:])) for t in (q, k, v)]
    out, lse = _forward_packed(*flat, _uniform_cu(b, n), config, return_lse)
    out = _reshape(out, tuple(q.shape))
    if lse is not None:
        lse = _lse_per_sequence(lse, b, n)
    return (out, lse) if return_lse else out


def attention(q, k, v, *, causal=True, return_lse=False, settings=None, **changes):
    """ProxyAttn causal attention. q [B, N, Hq, d], k and v [B, N, Hkv, d] (Hq a multiple of
    Hkv) -> out [B, N, Hq, d] (and lse [B, Hq, N] float32 with return_lse).

    Settings: a proxyattn.Settings (settings=), keyword settings (its fields: gamma=0.9,
    num_proxy_groups=2, ...; help(proxyattn.Settings) says what each does), or both (the
    Settings with those changed); invalid ones raise before any work, naming the field."""
    if not causal:
        raise ValueError("causal=False: ProxyAttn is a causal prefill method")
    settings = settings_of(settings, **changes)
    _check_qkv(q, k, v, 4, "[B, N, H, d]")
    config = settings.resolve(q.shape[-1])
    if _is_torch(q):
        from . import _torch_ops

        return _torch_ops.attention(q, k, v, return_lse, config)
    return _attention_checked(q, k, v, return_lse, config)


def _is_scalar(x):
    """A number (int, float, bool, numpy scalar, 0-d tensor), not a sequence of them."""
    return isinstance(x, (numbers.Number, np.generic)) or (_is_tensor(x) and x.ndim == 0)


def _varlen_arguments(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, cu_seqlens, max_seqlen):
    """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q) of attention_varlen from its flash-attn form
    and its older one, attention_varlen(q, k, v, cu_seqlens, max_seqlen): an integer where
    cu_seqlens_k stands (the fifth positional argument) is the older max_seqlen (and a number
    that is no integer is refused as max_seqlen)."""
    if cu_seqlens is not None:
        if cu_seqlens_q is not None:
            raise TypeError("cu_seqlens and cu_seqlens_q: both given (cu_seqlens is the older name of cu_seqlens_q)")
        cu_seqlens_q = cu_seqlens
    if max_seqlen is not None:
        if max_seqlen_q is not None:
            raise TypeError("max_seqlen and max_seqlen_q: both given (max_seqlen is the older name of max_seqlen_q)")
        max_seqlen_q = max_seqlen
    if _is_scalar(cu_seqlens_k):
        if max_seqlen_q is not None:
            raise TypeError(f"cu_seqlens_k = {cu_seqlens_k!r}: a number, taken for the older "
                            f"attention_varlen(q, k, v, cu_seqlens, max_seqlen)'s max_seqlen, but max_seqlen_q "
                            f"is given too (cu_seqlens_k is [num_seqs + 1] key offsets)")
        cu_seqlens_k, max_seqlen_q = None, cu_seqlens_k
    return cu_seqlens_q, cu_seqlens_k, max_seqlen_q


def _varlen_names(chunked):
    """Names of the query lengths in messages: cu_seqlens_q and max_seqlen_q beside cu_seqlens_k,
    else cu_seqlens and max_seqlen (one cu_seqlens for q, k and v)."""
    return ("cu_seqlens_q", "max_seqlen_q") if chunked else ("cu_seqlens", "max_seqlen")


def _query_lengths_fit(cu_q, kv_lengths, describe):
    """Each sequence's q_len (cu_q) within its kv_len: its queries are the last positions of its
    keys. describe(s, kv_len): the key length's origin in the message."""
    for s, kv in enumerate(kv_lengths):
        q_len = cu_q[s + 1] - cu_q[s]
        if q_len > kv:
            raise ValueError(f"sequence {s}: {q_len} queries but {describe(s, kv)}: the queries are the last "
                             f"positions of their keys (q_len <= kv_len)")


def _attention_varlen_checked(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, return_lse,
                              config):
    """attention_varlen() on tensors _check_qkv has accepted: the lengths checked against them
    here (a torch custom op calls this with them as tensors)."""
    cu_name, max_name = _varlen_names(cu_seqlens_k is not None)
    cu = _cu_list(cu_seqlens_q, q.shape[0], "q", cu_name)
    _check_max_seqlen(max_seqlen_q, cu, max_name, cu_name)
    if cu_seqlens_k is None:
        _check_max_seqlen(max_seqlen_k, cu, "max_seqlen_k", cu_name)
        return _forward_packed(q, k, v, cu, config, return_lse)
    cu_k = _cu_list(cu_seqlens_k, k.shape[0], "k", "cu_seqlens_k")
    if len(cu_k) != len(cu):
        raise ValueError(f"cu_seqlens_k: {len(cu_k)} entries but cu_seqlens_q has {len(cu)} (num_seqs + 1 each)")
    _check_max_seqlen(max_seqlen_k, cu_k, "max_seqlen_k", "cu_seqlens_k")
    _query_lengths_fit(cu, [b - a for a, b in zip(cu_k, cu_k[1:])], lambda s, kv: f"{kv} keys (cu_seqlens_k)")
    if cu_k == cu:  # keys are the queries: a whole prompt's plan
        return _forward_packed(q, k, v, cu, config, return_lse)
    return _forward_kv(q, k, v, cu, cu_k, config, return_lse)


def attention_varlen(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, *,
                     causal=True, return_lse=False, cu_seqlens=None, max_seqlen=None, settings=None, **changes):
    """ProxyAttn on a packed batch, flash-attn's flash_attn_varlen_func convention: q [total_q,
    Hq, d], k and v [total_k, Hkv, d], cu_seqlens_q and cu_seqlens_k [num_seqs + 1] prefix sums
    of each sequence's query and key lengths. Sequence s's q_len queries are the last q_len
    positions of its kv_len >= q_len keys (bottom-right causal alignment): a prefill chunk after
    a prefix whose K and V come with it. cu_seqlens_k None: the keys are the queries (a whole
    prompt; k.shape[0] == total_q). max_seqlen_q / max_seqlen_k, when given, are checked.
    Returns out [total_q, Hq, d] (and lse [Hq, total_q] float32, natural log).

    The lengths are needed on the host (the plan is made there): lists, tuples, numpy arrays or
    torch tensors; a device tensor costs a synchronising copy. The older form
    attention_varlen(q, k, v, cu_seqlens, max_seqlen) still works (an integer fifth argument is
    max_seqlen). Settings as in attention(). A chunk of at least a block of queries starting
    on a block boundary gets the rows a one-shot prefill of the prompt cut at the chunk's end
    gives."""
    if not causal:
        raise ValueError("causal=False: ProxyAttn is a causal prefill method")
    settings = settings_of(settings, **changes)
    cu_seqlens_q, cu_seqlens_k, max_seqlen_q = _varlen_arguments(cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                                 cu_seqlens, max_seqlen)
    _check_qkv(q, k, v, 3, "[total, H, d]", same_tokens=cu_seqlens_k is None)
    config = settings.resolve(q.shape[-1])
    if _is_torch(q):
        from . import _torch_ops

        out, lse = _torch_ops.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                               return_lse, config)
    else:
        out, lse = _attention_varlen_checked(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                             return_lse, config)
    return (out, lse) if return_lse else out


# ---- paged caches --------------------------------------------------------------------------------


class ProxyState:
    """The estimation state of a paged cache (docs/design.md, "Chunked prefill"): each sampled
    position's pooled proxy key and query, in pages beside the cache's pages, so that a chunk
    pools only its own tokens and ranks a query block it starts inside with the block's earlier
    queries too (the rows a one-shot prefill gives). Allocated (zeroed) in k_cache's framework
    and device: [num_pages, page_size / stride, 2, num_proxy_groups, head_dim] of its dtype, as
    bytes (self.tensor).

    One state per layer's cache, passed to attention_with_kvcache(proxy_state=...) on EVERY
    call of every sequence using the cache, from each sequence's first chunk on, with the same
    num_proxy_groups and stride as the state: each call writes its positions' proxies and
    reads its prefix's; a prefix attended without the state has none there. Pages shared by
    sequences (a common prefix) share their state. page_size must be a multiple of stride.

    num_proxy_groups and stride: those of the calls (None: those of `settings`, a
    proxyattn.Settings, by default the defaults)."""

    def __init__(self, k_cache, num_proxy_groups=None, stride=None, *, settings=None):
        given = (("num_proxy_groups", num_proxy_groups), ("stride", stride))
        settings = settings_of(settings, **{name: value for name, value in given if value is not None})
        _check_tensor("k_cache", k_cache, 4, "[num_pages, page_size, Hkv, d]")
        if min(int(x) for x in k_cache.shape) < 1:
            raise ValueError(f"k_cache: shape {tuple(k_cache.shape)} [num_pages, page_size, Hkv, d]: every "
                             f"dimension needs at least 1")
        if k_cache.shape[1] % settings.stride != 0:
            raise ValueError(f"k_cache: pages of {k_cache.shape[1]} tokens (k_cache.shape[1]): an estimation state "
                             f"needs pages of a multiple of stride = {settings.stride} tokens")
        self._bind(k_cache, settings.resolve(int(k_cache.shape[3])))

    @classmethod
    def _wrap(cls, tensor, k_cache, config):
        """The state over an existing tensor (a custom op's argument)."""
        state = cls.__new__(cls)
        state._bind(k_cache, config, tensor)
        return state

    def _bind(self, k_cache, config, tensor=None):
        """Describes the state of k_cache's pages (pa_proxy_state_make) for config (pa_config's
        values: its num_proxy_groups and stride count) over tensor, or over new zeroed memory of
        pa_proxy_state_bytes."""
        self.num_pages, self.page_size, self.num_kv_heads, self.head_dim = (int(x) for x in k_cache.shape)
        self.dtype, self.device = str(k_cache.dtype), _device_of(k_cache)
        self.num_proxy_groups, self.stride = config.num_proxy_groups, config.stride
        config = config_of(config)
        problem = _C.Problem([0, 0], self.num_kv_heads, self.num_kv_heads, self.head_dim, _C.dtype_code(k_cache),
                             [0, 0], self.page_size, self.num_pages, 1)
        self.tensor = _zero_bytes(k_cache, _C.proxy_state_bytes(problem, config)) if tensor is None else tensor
        self._handle = _C.ProxyState(problem, config, self.tensor)

    def __repr__(self):
        return (f"ProxyState(num_pages={self.num_pages}, page_size={self.page_size}, head_dim={self.head_dim}, "
                f"num_proxy_groups={self.num_proxy_groups}, stride={self.stride}, dtype={self.dtype}, "
                f"device={self.device})")


def _zero_bytes(like, nbytes):
    if _is_torch(like):
        import torch

        return torch.zeros(max(nbytes, 1), dtype=torch.uint8, device=like.device)
    return np.zeros(max(nbytes, 1), dtype=np.uint8)


def _check_proxy_state(state, k_cache, config):
    """The state made for this cache and the call's num_proxy_groups and stride (config: pa_config's
    values)."""
    if not isinstance(state, ProxyState):
        raise TypeError(f"proxy_state: expected a proxyattn.ProxyState, got {type(state).__name__}")
    cache = (tuple(int(x) for x in k_cache.shape), str(k_cache.dtype), _device_of(k_cache))
    made = ((state.num_pages, state.page_size, state.num_kv_heads, state.head_dim), state.dtype, state.device)
    if made != cache:
        raise ValueError(f"proxy_state: made for a cache of shape {made[0]} {made[1]} on {made[2]}, but k_cache is "
                         f"{cache[0]} {cache[1]} on {cache[2]} (one ProxyState per layer's cache)")
    for name in ("num_proxy_groups", "stride"):
        value = getattr(config, name)
        if value != getattr(state, name):
            raise ValueError(f"proxy_state: made with {name} = {getattr(state, name)} but the call has {name} = "
                             f"{value} (pass the state's settings on every call)")


def _block_table(block_table, k_cache, num_seqs):
    """block_table as an int32 [num_seqs, max_pages] array of k_cache's framework (host arrays
    with a CUDA cache stay on the host until their pages are checked): shapes only, so that
    torch.compile traces it."""
    if isinstance(block_table, (list, tuple)):  # read in plain Python, which torch.compile traces
        rows = [_host_ints(row, f"block_table[{s}]", "[max_pages]") for s, row in enumerate(block_table)]
        width = len(rows[0]) if rows else 0
        for s, row in enumerate(rows):
            if len(row) != width:
                raise ValueError(f"block_table[{s}]: {len(row)} entries, block_table[0] {width}")
            if any(x < -2**31 or x > _INT32_MAX for x in row):
                raise ValueError(f"block_table[{s}]: page ids beyond int32")
        if _is_torch(k_cache):
            import torch

            block_table = torch.tensor(rows, dtype=torch.int32).reshape(len(rows), width)
        else:
            block_table = np.array(rows, np.int32).reshape(len(rows), width)
    if block_table is None or not _is_tensor(block_table):
        raise TypeError(f"block_table: expected an int32 numpy array or torch tensor [num_seqs, max_pages], "
                        f"got {type(block_table).__name__}")
    if block_table.ndim != 2 or block_table.shape[0] != num_seqs or block_table.shape[1] < 1:
        raise ValueError(f"block_table: shape {tuple(block_table.shape)}, expected [num_seqs, max_pages] with "
                         f"num_seqs = {num_seqs} and max_pages >= 1")
    if str(block_table.dtype) not in ("int32", "torch.int32"):
        raise TypeError(f"block_table: dtype {block_table.dtype}, expected int32 (page ids, as vLLM and flash-attn "
                        f"keep them)")
    if _is_torch(k_cache) and not _is_torch(block_table):
        import torch

        return torch.from_numpy(np.ascontiguousarray(block_table))
    if not _is_torch(k_cache) and _is_torch(block_table):
        if block_table.device.type != "cpu":
            raise ValueError(f"block_table: on {block_table.device} but k_cache is a host numpy array")
        return block_table.numpy()
    if _is_torch(k_cache) and block_table.device.type != "cpu" and block_table.device != k_cache.device:
        raise ValueError(f"block_table: on {block_table.device} but k_cache on {k_cache.device}")
    return block_table


def _check_pages(block_table, kv_lengths, page_size, num_pages):
    """The page ids each sequence uses (its first ceil(kv_len / page_size) entries) within the
    cache, for a host block table (a device one is the caller's contract)."""
    table = block_table.numpy() if _is_torch(block_table) else block_table
    for s, kv in enumerate(kv_lengths):
        used = table[s, :-(-kv // page_size)]
        bad = np.flatnonzero((used < 0) | (used >= num_pages))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"block_table[{s}][{i}] = {int(used[i])}: outside k_cache's {num_pages} pages "
                             f"(k_cache.shape[0]); sequence {s} uses its first {used.size} entries "
                             f"(cache_seqlens[{s}] = {kv})")


def _on_cache_device(block_table, k_cache):
    """The block table where the cache is, contiguous (a host table with a CUDA cache is copied
    there: pass a device table to keep the call free of host copies, e.g. for graph capture)."""
    if _is_torch(block_table):
        if block_table.device != k_cache.device:
            block_table = block_table.to(k_cache.device)
        return block_table.contiguous()
    return np.ascontiguousarray(block_table)


def _kvcache_checked(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q, max_seqlen_q, proxy_state,
                     return_lse, config):
    """attention_with_kvcache() on packed q and tensors whose shapes are checked: the lengths and
    (on the host) the block table's page ids checked here (a torch custom op calls this)."""
    cu = _cu_list(cu_seqlens_q, q.shape[0], "q", "cu_seqlens_q")
    _check_max_seqlen(max_seqlen_q, cu, "max_seqlen_q", "cu_seqlens_q")
    num_pages, page_size = int(k_cache.shape[0]), int(k_cache.shape[1])
    max_pages = int(block_table.shape[1])
    kv = _host_ints(cache_seqlens, "cache_seqlens", "[num_seqs]")
    _query_lengths_fit(cu, kv, lambda s, n: f"cache_seqlens[{s}] = {n}, which counts the new queries' keys too "
                                            f"(write them into the cache first)")
    for s, n in enumerate(kv):
        if n > max_pages * page_size:
            raise ValueError(f"cache_seqlens[{s}] = {n} exceeds the block table's {max_pages} pages of {page_size} "
                             f"tokens (block_table.shape[1] x k_cache.shape[1] = {max_pages * page_size})")
    cu_k = [0]
    for n in kv:
        cu_k.append(cu_k[-1] + n)
    if cu_k[-1] > _INT32_MAX:
        raise ValueError(f"cache_seqlens: {cu_k[-1]} keys in all, beyond the int32 token offsets (at most 2^31 - 1)")
    if not _is_torch(block_table) or block_table.device.type == "cpu":
        _check_pages(block_table, kv, page_size, num_pages)
    table = _on_cache_device(block_table, k_cache)
    return _forward_kv(q, k_cache, v_cache, cu, cu_k, config, return_lse, (page_size, num_pages, max_pages), table,
                       proxy_state)


def attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q=None, max_seqlen_q=None, *,
                           proxy_state=None, causal=True, return_lse=False, settings=None, **changes):
    """ProxyAttn over a paged KV cache, in the style of flash-attn's flash_attn_with_kvcache:
    k_cache and v_cache [num_pages, page_size, Hkv, d] (vLLM's and flash-attn's layout),
    block_table int32 [num_seqs, max_pages] (sequence s's token t in page
    block_table[s, t // page_size]), cache_seqlens [num_seqs] each sequence's key count
    INCLUDING the new queries: their K and V are in the cache already (an engine's
    cache.update, then attention). q is [B, q_len, Hq, d] (num_seqs = B; returns out like q and
    lse [B, Hq, q_len]) or packed [total_q, Hq, d] with cu_seqlens_q [num_seqs + 1] (returns out
    [total_q, Hq, d] and lse [Hq, total_q]); the queries are the last q_len positions of their
    sequence. A chunk of fewer queries than a block (a decode step) runs dense.

    cache_seqlens and cu_seqlens_q are needed on the host (the plan is made there): lists,
    tuples, numpy arrays or torch tensors; a device tensor costs a synchronising copy. The
    block table lives with the cache (a host one is copied to a CUDA cache's device). Its page
    ids are checked on the host (a host table); a device table is not read by the host, so
    keeping its ids within the cache is the caller's contract there, as with flash-attn.

    proxy_state: a ProxyState(k_cache, num_proxy_groups, stride) of this cache, passed on every
    call of the same sequences (see ProxyState), or None: the prefix's keys are pooled again at
    each call. Settings as in attention().

    CUDA graphs: a call whose plan exists (one earlier call with the same lengths on the same
    stream, outside capture) is capturable (torch.cuda.graph(g, stream=that stream)); a replay
    reads the captured tensors' current contents. Lengths are part of the plan, so a graph
    replays the lengths it was captured with."""
    if not causal:
        raise ValueError("causal=False: ProxyAttn is a causal prefill method")
    settings = settings_of(settings, **changes)
    layout = "[B, q_len, Hq, d] or packed [total_q, Hq, d]"
    _check_tensor("q", q, q.ndim if _is_tensor(q) and q.ndim == 3 else 4, layout)
    uniform = q.ndim == 4
    _check_qkv(q, k_cache, v_cache, q.ndim, layout, same_tokens=False, names=("q", "k_cache", "v_cache"), kv_ndim=4,
               kv_layout="[num_pages, page_size, Hkv, d]")
    if uniform and cu_seqlens_q is not None:
        raise ValueError(f"cu_seqlens_q: given with q of shape {tuple(q.shape)} [B, q_len, Hq, d]; pass q packed "
                         f"[total_q, Hq, d] with it")
    if not uniform and cu_seqlens_q is None:
        raise ValueError(f"cu_seqlens_q: needed with a packed q of shape {tuple(q.shape)} (or give q as "
                         f"[B, q_len, Hq, d])")
    if min(int(x) for x in k_cache.shape[:2]) < 1:
        raise ValueError(f"k_cache: shape {tuple(k_cache.shape)}: needs at least one page of at least one token")
    if uniform:
        b, n = int(q.shape[0]), int(q.shape[1])
        cu_seqlens_q, q = _uniform_cu(b, n), _reshape(q, (b * n,) + tuple(q.shape[2:]))
        num_seqs = b
    else:
        num_seqs = _entries(cu_seqlens_q, "cu_seqlens_q", "[num_seqs + 1]") - 1
    if _entries(cache_seqlens, "cache_seqlens", "[num_seqs]") != max(num_seqs, 0):
        raise ValueError(f"cache_seqlens: {_entries(cache_seqlens, 'cache_seqlens', '')} lengths for {num_seqs} "
                         f"sequences ({'q.shape[0]' if uniform else 'cu_seqlens_q'})")
    block_table = _block_table(block_table, k_cache, num_seqs)
    config = settings.resolve(q.shape[-1])
    if proxy_state is not None:
        _check_proxy_state(proxy_state, k_cache, config)
    if uniform and b == 0:
        out, lse = _outputs(q, return_lse)
    elif _is_torch(q):
        from . import _torch_ops

        out, lse = _torch_ops.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q,
                                                     max_seqlen_q, proxy_state, return_lse, config)
    else:
        out, lse = _kvcache_checked(q, k_cache, v_cache, cache_seqlens, block_table, cu_seqlens_q, max_seqlen_q,
                                    proxy_state, return_lse, config)
    if uniform:
        out = _reshape(out, (b, n) + tuple(out.shape[1:]))
        if lse is not None:
            lse = _lse_per_sequence(lse, b, n)
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
