"""ctypes binding of the C API (include/proxyattn/proxyattn.h) for the benchmark scripts.

The benchmarks run on the GPU machine next to PyTorch, over the shared library the build
produced (-DBUILD_SHARED_LIBS=ON), without the Python package. Tensors are torch tensors;
their data pointers go to the library, and calls run on torch's current CUDA stream.

The kernels' speed settings are a plan's tuning (include/proxyattn/proxyattn_tuning.h):
Library.tuned(plan, fn, **fields) runs fn with fields of it changed. A library built before
the tuning existed (a --baseline build of an older commit) read them from environment
variables instead; tuned() sets those for it (LEGACY_ENVIRONMENT).
"""
import ctypes
import os

PA_DTYPE = {"float32": 0, "float16": 1, "bfloat16": 2}
PA_BUDGET_ABSOLUTE, PA_BUDGET_PROPORTIONAL = 0, 1
TUNING_KERNEL_AUTO, TUNING_KERNEL_SM80 = 0, 1
TUNING_PACKING_CHUNKS_OF_HEAD, TUNING_PACKING_HEADS_OF_CHUNK = 0, 1


class Problem(ctypes.Structure):
    _fields_ = [("num_seqs", ctypes.c_int32), ("cu_seqlens", ctypes.POINTER(ctypes.c_int32)),
                ("total_tokens", ctypes.c_int64), ("num_q_heads", ctypes.c_int32),
                ("num_kv_heads", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("dtype", ctypes.c_int), ("cu_seqlens_k", ctypes.POINTER(ctypes.c_int32)),
                ("total_kv_tokens", ctypes.c_int64), ("page_size", ctypes.c_int32),
                ("num_pages", ctypes.c_int32), ("max_pages_per_seq", ctypes.c_int32)]


class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("token_stride", ctypes.c_int64),
                ("head_stride", ctypes.c_int64)]


class ProxyState(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("num_pages", ctypes.c_int32), ("page_size", ctypes.c_int32),
                ("stride", ctypes.c_int32), ("num_proxy_groups", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("dtype", ctypes.c_int)]


class KvCache(ctypes.Structure):
    _fields_ = [("k", Tensor), ("v", Tensor), ("block_table", ctypes.c_void_p), ("proxy_state", ctypes.c_void_p)]


# pa_config by hand (these scripts run without the package): tests/python/test_capi.py checks it
# against the layout the Python module was compiled with.
class Config(ctypes.Structure):
    _fields_ = [("block_size", ctypes.c_int32), ("stride", ctypes.c_int32), ("gamma", ctypes.c_float),
                ("min_budget_tokens", ctypes.c_int32), ("num_proxy_groups", ctypes.c_int32),
                ("force_sink", ctypes.c_int32), ("force_local", ctypes.c_int32),
                ("budget_mode", ctypes.c_int), ("dense_below", ctypes.c_int32),
                ("softmax_scale", ctypes.c_float), ("anchor_blocks", ctypes.c_int32)]


class PlanStats(ctypes.Structure):
    _fields_ = [("kept_pairs", ctypes.c_int64), ("causal_pairs", ctypes.c_int64),
                ("density", ctypes.c_double), ("kept_token_pairs", ctypes.c_int64),
                ("dense_seqs", ctypes.c_int32)]


class Tuning(ctypes.Structure):
    _fields_ = [("attn_kernel", ctypes.c_int32), ("attn_packing", ctypes.c_int32),
                ("attn_rows_per_chunk", ctypes.c_int32), ("attn_persistent", ctypes.c_int32),
                ("attn_consumer_turns", ctypes.c_int32), ("attn_rank_heads", ctypes.c_int32),
                ("attn_max_ctas", ctypes.c_int32), ("est_block_logits", ctypes.c_int32)]


# Tuning field -> (environment variable of the libraries before the tuning, its text for a
# value); a field at its default value sets no variable (those libraries' default).
LEGACY_ENVIRONMENT = {
    "attn_kernel": ("PROXYATTN_ATTN_KERNEL", lambda v: "sm80" if v == TUNING_KERNEL_SM80 else None),
    "attn_packing": ("PROXYATTN_ATTN_PACKING", lambda v: "heads" if v == TUNING_PACKING_HEADS_OF_CHUNK else None),
    "attn_rows_per_chunk": ("PROXYATTN_ATTN_ROW_CHUNK", lambda v: str(v) if v > 0 else None),
    "attn_persistent": ("PROXYATTN_ATTN_PERSISTENT", lambda v: None if v else "0"),
    "attn_consumer_turns": ("PROXYATTN_ATTN_PINGPONG", lambda v: None if v else "0"),
    "attn_rank_heads": ("PROXYATTN_ATTN_RANK_HEADS", lambda v: None if v else "0"),
    "attn_max_ctas": ("PROXYATTN_ATTN_MAX_CTAS", lambda v: str(v) if v > 0 else None),
    "est_block_logits": ("PROXYATTN_EST_BLOCK_LOGITS", lambda v: None if v else "0"),
}


def check_fields(fields):
    for name in fields:
        if name not in LEGACY_ENVIRONMENT:
            raise TypeError("unknown tuning field %r" % name)


def legacy_environment(fields):
    """The environment variables that gave a library before the tuning these tuning fields."""
    check_fields(fields)
    env = {}
    for name, value in fields.items():
        variable, text = LEGACY_ENVIRONMENT[name]
        if text(value) is not None:
            env[variable] = text(value)
    return env


def with_environment(env, fn):
    """fn() run with the environment variables `env` set (and restored afterwards)."""
    def call():
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            return fn()
        finally:
            for name, value in saved.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value
    return call


class SynthParams(ctypes.Structure):
    _fields_ = [("seed", ctypes.c_uint64), ("num_needles", ctypes.c_int32),
                ("sink_strength", ctypes.c_float), ("local_strength", ctypes.c_float),
                ("vertical_strength", ctypes.c_float), ("slash_strength", ctypes.c_float),
                ("needle_strength", ctypes.c_float), ("noise", ctypes.c_float)]


class ProxyAttnError(RuntimeError):
    pass


class Library:
    def __init__(self, path):
        self.lib = ctypes.CDLL(os.path.abspath(path))
        L = self.lib
        L.pa_last_error.restype = ctypes.c_char_p
        L.pa_status_string.restype = ctypes.c_char_p
        L.pa_config_default.restype = Config
        L.pa_synth_default.restype = SynthParams
        L.pa_synth_default.argtypes = [ctypes.c_uint64]
        self.has_tuning = hasattr(L, "pa_plan_set_tuning")  # else a library of before the tuning
        if self.has_tuning:
            L.pa_tuning_default.restype = Tuning

    def _check(self, status):
        if status != 0:
            raise ProxyAttnError("%s: %s" % (self.lib.pa_status_string(status).decode(),
                                             self.lib.pa_last_error().decode()))

    @staticmethod
    def problem(lengths, hq, hkv, d, dtype):
        """A pa_problem for a batch of sequence lengths; keeps cu_seqlens alive on it."""
        cu = (ctypes.c_int32 * (len(lengths) + 1))()
        for i, n in enumerate(lengths):
            cu[i + 1] = cu[i] + n
        p = Problem(len(lengths), cu, cu[len(lengths)], hq, hkv, d, PA_DTYPE[dtype])
        p._cu = cu
        return p

    @staticmethod
    def chunked_problem(q_lens, kv_lens, hq, hkv, d, dtype, page_size=0, num_pages=0, max_pages=0):
        """A pa_problem of chunks: sequence s has q_lens[s] queries at the end of kv_lens[s]
        keys, packed (page_size 0) or in a paged cache; keeps both cu_seqlens alive on it."""
        cu_q, cu_k = (ctypes.c_int32 * (len(q_lens) + 1))(), (ctypes.c_int32 * (len(kv_lens) + 1))()
        for i, (nq, nk) in enumerate(zip(q_lens, kv_lens)):
            cu_q[i + 1], cu_k[i + 1] = cu_q[i] + nq, cu_k[i] + nk
        p = Problem(len(q_lens), cu_q, cu_q[len(q_lens)], hq, hkv, d, PA_DTYPE[dtype], cu_k, cu_k[len(kv_lens)],
                    page_size, num_pages, max_pages)
        p._cu = (cu_q, cu_k)
        return p

    @staticmethod
    def tensor(t):
        """pa_tensor view of a torch tensor [tokens, heads, d] with a contiguous last dim."""
        assert t.stride(-1) == 1
        return Tensor(t.data_ptr(), t.stride(0), t.stride(1))

    def config(self, head_dim, **fields):
        """pa_config_default(head_dim) with these fields changed (ctypes would take any name)."""
        c = self.lib.pa_config_default(head_dim)
        known = {name for name, _ in Config._fields_}
        for k, v in fields.items():
            if k not in known:
                raise TypeError("unknown config field %r" % k)
            setattr(c, k, v)
        return c

    def plan_bytes(self, problem, config):
        n = ctypes.c_size_t()
        self._check(self.lib.pa_plan_bytes(ctypes.byref(problem), ctypes.byref(config), ctypes.byref(n)))
        return n.value

    def workspace_bytes(self, problem, config):
        n = ctypes.c_size_t()
        self._check(self.lib.pa_workspace_bytes(ctypes.byref(problem), ctypes.byref(config), ctypes.byref(n)))
        return n.value

    def plan_create(self, problem, config, storage_ptr, storage_bytes):
        h = ctypes.c_void_p()
        self._check(self.lib.pa_plan_create(ctypes.byref(problem), ctypes.byref(config),
                                            ctypes.c_void_p(storage_ptr), ctypes.c_size_t(storage_bytes),
                                            ctypes.byref(h)))
        return h

    def plan_free(self, plan):
        self.lib.pa_plan_free(plan)

    def get_tuning(self, plan):
        t = Tuning()
        self._check(self.lib.pa_plan_get_tuning(plan, ctypes.byref(t)))
        return t

    @staticmethod
    def _changed(tuning, fields):
        check_fields(fields)
        t = Tuning.from_buffer_copy(tuning)
        for name, value in fields.items():
            setattr(t, name, value)
        return t

    def set_tuning(self, plan, **fields):
        """Changes these fields of the plan's tuning (an invalid value raises, naming the field)."""
        t = self._changed(self.get_tuning(plan), fields)
        self._check(self.lib.pa_plan_set_tuning(plan, ctypes.byref(t)))

    def tuned(self, plan, fn, **fields):
        """A call running fn() with these fields of the plan's tuning changed, and the tuning
        the plan has now restored after it (both made once, here: a call costs two host
        calls; an invalid value raises at the call). A library before the tuning gets the same
        settings as environment variables."""
        if not self.has_tuning:
            return with_environment(legacy_environment(fields), fn)
        base = self.get_tuning(plan)
        changed = self._changed(base, fields)

        def call():
            self._check(self.lib.pa_plan_set_tuning(plan, ctypes.byref(changed)))
            try:
                return fn()
            finally:
                self._check(self.lib.pa_plan_set_tuning(plan, ctypes.byref(base)))
        return call

    def estimate(self, plan, q, k, workspace_ptr, workspace_bytes, stream=0):
        self._check(self.lib.pa_estimate(plan, ctypes.byref(q), ctypes.byref(k),
                                         ctypes.c_void_p(workspace_ptr), ctypes.c_size_t(workspace_bytes),
                                         ctypes.c_void_p(stream)))

    def attend(self, plan, q, k, v, o, lse_ptr=0, stream=0):
        self._check(self.lib.pa_attend(plan, ctypes.byref(q), ctypes.byref(k), ctypes.byref(v),
                                       ctypes.byref(o), ctypes.c_void_p(lse_ptr), ctypes.c_void_p(stream)))

    def attend_kv(self, plan, q, k, v, o, block_table_ptr=0, lse_ptr=0, stream=0):
        """pa_attend_kv with K and V packed (block_table_ptr 0) or a paged cache (a device int32
        table [num_seqs, max_pages])."""
        kv = KvCache(k, v, block_table_ptr, None)
        self._check(self.lib.pa_attend_kv(plan, ctypes.byref(q), ctypes.byref(kv), ctypes.byref(o),
                                          ctypes.c_void_p(lse_ptr), ctypes.c_void_p(stream)))

    def proxy_state(self, problem, config, alloc):
        """The estimation state of a paged problem in memory from alloc(nbytes) -> (keep, ptr)."""
        n = ctypes.c_size_t()
        self._check(self.lib.pa_proxy_state_bytes(ctypes.byref(problem), ctypes.byref(config), ctypes.byref(n)))
        keep, ptr = alloc(n.value)
        state = ProxyState()
        self._check(self.lib.pa_proxy_state_make(ctypes.byref(problem), ctypes.byref(config), ctypes.c_void_p(ptr),
                                                 ctypes.c_size_t(n.value), ctypes.byref(state)))
        state._keep = keep
        return state

    def estimate_kv(self, plan, q, k, v, workspace_ptr, workspace_bytes, block_table_ptr=0, state=None, stream=0):
        kv = KvCache(k, v, block_table_ptr, ctypes.cast(ctypes.pointer(state), ctypes.c_void_p) if state else None)
        self._check(self.lib.pa_estimate_kv(plan, ctypes.byref(q), ctypes.byref(kv), ctypes.c_void_p(workspace_ptr),
                                            ctypes.c_size_t(workspace_bytes), ctypes.c_void_p(stream)))

    def dense(self, problem, scale, q, k, v, o, lse_ptr=0, stream=0):
        self._check(self.lib.pa_dense_attention(ctypes.byref(problem), ctypes.c_float(scale),
                                                ctypes.byref(q), ctypes.byref(k), ctypes.byref(v),
                                                ctypes.byref(o), ctypes.c_void_p(lse_ptr),
                                                ctypes.c_void_p(stream)))

    def stats(self, plan):
        s = PlanStats()
        self._check(self.lib.pa_plan_get_stats(plan, ctypes.byref(s)))
        return s

    def heads(self, plan, num_seqs, hq):
        n = num_seqs * hq
        budget, needed, density = (ctypes.c_int32 * n)(), (ctypes.c_int32 * n)(), (ctypes.c_double * n)()
        self._check(self.lib.pa_plan_get_heads(plan, budget, needed, density))
        return list(budget), list(needed), list(density)

    def to_flex(self, plan, seq, kv_num_blocks_ptr, kv_indices_ptr):
        """Host int32 buffers [Hq, Nqb] and [Hq, Nqb, Nqb] (e.g. torch CPU tensors)."""
        self._check(self.lib.pa_plan_to_flex(plan, ctypes.c_int32(seq), ctypes.c_void_p(kv_num_blocks_ptr),
                                             ctypes.c_void_p(kv_indices_ptr)))

    def layout(self, plan):
        """(total_qblocks, order_entries) of a plan."""
        rows, entries = ctypes.c_int64(), ctypes.c_int64()
        self._check(self.lib.pa_plan_get_layout(plan, ctypes.byref(rows), ctypes.byref(entries)))
        return rows.value, entries.value

    def set_index(self, plan, order_ptr, count_ptr, budget_ptr=0, needed_ptr=0):
        """Writes the index from host int32 buffers (order [order_entries], count
        [total_qblocks, Hq]); the plan then counts as estimated."""
        self._check(self.lib.pa_plan_set_index(plan, ctypes.c_void_p(order_ptr), ctypes.c_void_p(count_ptr),
                                               ctypes.c_void_p(budget_ptr), ctypes.c_void_p(needed_ptr)))

    def check(self, plan):
        self._check(self.lib.pa_plan_check(plan))

    def synth(self, problem, q_ptr, k_ptr, v_ptr, seed=1):
        """Structured inputs into contiguous host buffers."""
        params = self.lib.pa_synth_default(seed)
        self._check(self.lib.pa_synth_generate(ctypes.byref(problem), ctypes.byref(params),
                                               ctypes.c_void_p(q_ptr), ctypes.c_void_p(k_ptr),
                                               ctypes.c_void_p(v_ptr)))
