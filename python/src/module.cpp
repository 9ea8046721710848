// proxyattn._C: the nanobind module over the C API. It takes any DLPack tensor (numpy,
// torch, ... on the CPU or a CUDA device), never allocates tensors itself (the Python layer
// allocates through the caller's framework), and raises proxyattn.ProxyAttnError (with the
// pa_status name) on failure, its subclass ProxyAttnUnsupported for PA_STATUS_UNSUPPORTED (a
// valid request this build or device cannot run, on which callers may fall back).
// Shapes: Q [tokens, Hq, d], K/V [tokens, Hkv, d], LSE [Hq, tokens].
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "proxyattn/proxyattn.hpp"
#include "proxyattn/proxyattn_tuning.h"

namespace nb = nanobind;
using Array = nb::ndarray<>;       // an output the library writes
using In = nb::ndarray<nb::ro>;    // an input it only reads (read-only arrays welcome)

namespace {

template <typename... Args>
std::string format(const char* fmt, Args... args) {
  const int n = std::snprintf(nullptr, 0, fmt, args...);
  std::string out(size_t(n) + 1, '\0');
  std::snprintf(out.data(), out.size(), fmt, args...);
  out.resize(size_t(n));
  return out;
}

template <typename A>
pa_dtype dtype_of(const A& a, const char* name) {
  const nb::dlpack::dtype t = a.dtype();
  if (t.lanes == 1 && t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Float)) return PA_DTYPE_FLOAT32;
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Float)) return PA_DTYPE_FLOAT16;
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Bfloat)) return PA_DTYPE_BFLOAT16;
  throw nb::type_error((std::string(name) + ": dtype must be float32, float16 or bfloat16").c_str());
}

// The shape a tensor of the call must have: [tokens, heads, head_dim] of the batch.
struct Expected {
  const pa_problem& problem;
  int64_t heads;
};

// A [tokens, heads, d] view with a contiguous last dimension, its shape checked against the
// batch (cu_seqlens gives the tokens: the library cannot see a tensor's extent, and trusts
// them). The stride of a dimension of extent 1, or of an empty tensor, means nothing, and
// frameworks report anything there (torch's DLPack export says 1: one KV head or one token
// made "head_stride = 1" errors): such a view gets the contiguous strides.
template <typename A>
pa_tensor view(const A& a, const char* name, const Expected& want) {
  if (a.ndim() != 3)
    throw nb::value_error(format("%s: expected 3 dimensions [tokens, heads, head_dim], got %zu", name,
                                 a.ndim()).c_str());
  const pa_problem& p = want.problem;
  const int64_t tokens = int64_t(a.shape(0)), heads = int64_t(a.shape(1)), d = int64_t(a.shape(2));
  if (tokens != p.total_tokens)
    throw nb::value_error(format("cu_seqlens[%d] = %lld differs from the token count of %s "
                                 "(%s.shape[0] = %lld)", p.num_seqs, (long long)p.total_tokens, name, name,
                                 (long long)tokens).c_str());
  if (heads != want.heads || d != p.head_dim)
    throw nb::value_error(format("%s: shape [%lld, %lld, %lld], expected [%lld, %lld, %lld] (tokens, "
                                 "heads, head_dim)", name, (long long)tokens, (long long)heads, (long long)d,
                                 (long long)p.total_tokens, (long long)want.heads, (long long)p.head_dim).c_str());
  pa_tensor t;
  t.data = const_cast<void*>(static_cast<const void*>(a.data()));
  if (a.size() == 0) {
    t.token_stride = heads * d;
    t.head_stride = d;
    return t;
  }
  if (d > 1 && a.stride(2) != 1)
    throw nb::value_error(format("%s: the last dimension (head_dim) must be contiguous (stride 1, got %lld)",
                                 name, (long long)a.stride(2)).c_str());
  t.token_stride = tokens == 1 ? heads * d : a.stride(0);
  t.head_stride = heads == 1 ? d : a.stride(1);
  return t;
}

// LSE [Hq, tokens] float32, row-major (the library writes lse[h * tokens + t]).
float* lse_ptr(const nb::object& lse, const pa_problem& p) {
  if (lse.is_none()) return nullptr;
  Array a = nb::cast<Array>(lse);
  const nb::dlpack::dtype t = a.dtype();
  if (!(t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Float)))
    throw nb::type_error("lse: dtype must be float32");
  const bool shaped = a.ndim() == 2 && int64_t(a.shape(0)) == p.num_q_heads && int64_t(a.shape(1)) == p.total_tokens;
  if (!shaped || (a.size() > 0 && ((a.shape(1) > 1 && a.stride(1) != 1) ||
                                   (a.shape(0) > 1 && a.stride(0) != p.total_tokens))))
    throw nb::value_error(format("lse: expected a contiguous [%d, %lld] array (num_q_heads, tokens)",
                                 p.num_q_heads, (long long)p.total_tokens).c_str());
  return static_cast<float*>(a.data());
}

void* stream_ptr(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// The batch of a call: lengths from cu_seqlens (host integers, int32 offsets), shapes from
// q and k. The library checks that cu_seqlens starts at 0 and does not decrease.
proxyattn::Batch make_batch(const std::vector<int64_t>& cu_seqlens, int64_t hq, int64_t hkv, int64_t d,
                            pa_dtype dtype) {
  if (cu_seqlens.size() < 2) throw nb::value_error("cu_seqlens: needs at least 2 entries");
  std::vector<int32_t> cu(cu_seqlens.size());
  for (size_t i = 0; i < cu.size(); ++i) {
    if (cu_seqlens[i] < INT32_MIN || cu_seqlens[i] > INT32_MAX)
      throw nb::value_error(format("cu_seqlens[%zu] = %lld does not fit the int32 token offsets", i,
                                   (long long)cu_seqlens[i]).c_str());
    cu[i] = int32_t(cu_seqlens[i]);
  }
  for (auto [value, name] : {std::pair{hq, "q heads"}, {hkv, "k heads"}, {d, "head_dim"}})
    if (value < 1 || value > INT32_MAX)
      throw nb::value_error(format("%s = %lld: must lie in [1, 2^31)", name, (long long)value).c_str());
  return proxyattn::Batch::from_cu_seqlens(std::move(cu), int32_t(hq), int32_t(hkv), int32_t(d), dtype);
}

// The batch of a dense call or a synthetic input: heads and head_dim from q and k.
template <typename A>
proxyattn::Batch batch_of(const std::vector<int64_t>& cu, const A& q, const A& k) {
  for (auto [a, name] : {std::pair{&q, "q"}, {&k, "k"}})
    if (a->ndim() != 3)
      throw nb::value_error(format("%s: expected 3 dimensions [tokens, heads, head_dim], got %zu", name,
                                   a->ndim()).c_str());
  return make_batch(cu, int64_t(q.shape(1)), int64_t(k.shape(1)), int64_t(q.shape(2)), dtype_of(q, "q"));
}

class PyPlan {
 public:
  PyPlan(const std::vector<int64_t>& cu_seqlens, int64_t hq, int64_t hkv, int64_t d, int dtype,
         const pa_config& config, Array storage)
      : batch_(make_batch(cu_seqlens, hq, hkv, d, pa_dtype(dtype))), config_(config), storage_(storage) {
    proxyattn::check(pa_plan_create(&batch_.problem(), &config_, storage.data(), storage.nbytes(), &plan_));
  }
  ~PyPlan() { pa_plan_free(plan_); }
  PyPlan(const PyPlan&) = delete;
  PyPlan& operator=(const PyPlan&) = delete;

  void estimate(const In& q, const In& k, Array workspace, uintptr_t stream) {
    check_dtypes({{&q, "q"}, {&k, "k"}});
    const pa_tensor tq = view(q, "q", q_shape()), tk = view(k, "k", kv_shape());
    nb::gil_scoped_release release;
    proxyattn::check(pa_estimate(plan_, &tq, &tk, workspace.data(), workspace.nbytes(), stream_ptr(stream)));
  }

  void attend(const In& q, const In& k, const In& v, Array o, nb::object lse, uintptr_t stream) {
    check_dtypes({{&q, "q"}, {&k, "k"}, {&v, "v"}});
    if (dtype_of(o, "o") != batch_.problem().dtype) throw nb::type_error("o: dtype differs from the plan's");
    const pa_tensor tq = view(q, "q", q_shape()), tk = view(k, "k", kv_shape()), tv = view(v, "v", kv_shape());
    pa_tensor to = view(o, "o", q_shape());
    float* l = lse_ptr(lse, batch_.problem());
    nb::gil_scoped_release release;
    proxyattn::check(pa_attend(plan_, &tq, &tk, &tv, &to, l, stream_ptr(stream)));
  }

  nb::dict stats() const {
    pa_plan_stats s{};
    proxyattn::check(pa_plan_get_stats(plan_, &s));
    nb::dict d;
    d["kept_pairs"] = s.kept_pairs;
    d["causal_pairs"] = s.causal_pairs;
    d["density"] = s.density;
    d["kept_token_pairs"] = s.kept_token_pairs;
    d["dense_seqs"] = s.dense_seqs;
    return d;
  }

  // (budget_blocks, needed_blocks, density), each [num_seqs * Hq].
  std::tuple<std::vector<int32_t>, std::vector<int32_t>, std::vector<double>> heads() const {
    const size_t n = size_t(batch_.problem().num_seqs) * batch_.problem().num_q_heads;
    std::vector<int32_t> budget(n), needed(n);
    std::vector<double> density(n);
    proxyattn::check(pa_plan_get_heads(plan_, budget.data(), needed.data(), density.data()));
    return {budget, needed, density};
  }

  // The plan's anchors per head (PA_ANCHOR_BLOCKS_AUTO resolved).
  int anchor_blocks() const {
    pa_config c{};
    proxyattn::check(pa_plan_get_config(plan_, &c));
    return c.anchor_blocks;
  }

  // Anchors [num_seqs * Hq * anchor_blocks] (-1 = none).
  std::vector<int32_t> anchors() const {
    const size_t n = size_t(batch_.problem().num_seqs) * batch_.problem().num_q_heads *
                     size_t(anchor_blocks());
    std::vector<int32_t> out(n);
    proxyattn::check(pa_plan_get_anchors(plan_, out.data()));
    return out;
  }

  // (order [order_entries], count [total_qblocks * Hq]).
  std::tuple<std::vector<int32_t>, std::vector<int32_t>> index() const {
    int64_t rows = 0, entries = 0;
    proxyattn::check(pa_plan_get_layout(plan_, &rows, &entries));
    std::vector<int32_t> order(entries), count(rows * batch_.problem().num_q_heads);
    proxyattn::check(pa_plan_get_index(plan_, order.data(), count.data()));
    return {order, count};
  }

  // Fills host int32 arrays kv_num_blocks [Hq, Nqb] and kv_indices [Hq, Nqb, Nqb] (contiguous).
  void to_flex(int seq, Array kv_num_blocks, Array kv_indices) const {
    const pa_problem& p = batch_.problem();
    if (seq < 0 || seq >= p.num_seqs)
      throw nb::value_error(format("seq = %d: must lie in [0, %d)", seq, p.num_seqs).c_str());
    const int64_t n = batch_.cu_seqlens()[seq + 1] - batch_.cu_seqlens()[seq];
    const int64_t nqb = (n + config_.block_size - 1) / config_.block_size;
    check_int32_array(kv_num_blocks, "kv_num_blocks", {p.num_q_heads, nqb});
    check_int32_array(kv_indices, "kv_indices", {p.num_q_heads, nqb, nqb});
    proxyattn::check(pa_plan_to_flex(plan_, seq, static_cast<int32_t*>(kv_num_blocks.data()),
                                     static_cast<int32_t*>(kv_indices.data())));
  }

  void check_invariants() const { proxyattn::check(pa_plan_check(plan_)); }

  // The speed settings of the plan's GPU calls (proxyattn_tuning.h: for tests and benchmarks).
  void set_tuning(const pa_tuning& tuning) { proxyattn::check(pa_plan_set_tuning(plan_, &tuning)); }
  pa_tuning tuning() const {
    pa_tuning t{};
    proxyattn::check(pa_plan_get_tuning(plan_, &t));
    return t;
  }

 private:
  Expected q_shape() const { return {batch_.problem(), batch_.problem().num_q_heads}; }
  Expected kv_shape() const { return {batch_.problem(), batch_.problem().num_kv_heads}; }
  void check_dtypes(std::initializer_list<std::pair<const In*, const char*>> tensors) const {
    for (const auto& [a, name] : tensors)
      if (dtype_of(*a, name) != batch_.problem().dtype)
        throw nb::type_error((std::string(name) + ": dtype differs from the plan's").c_str());
  }
  static void check_int32_array(const Array& a, const char* name, std::initializer_list<int64_t> shape) {
    const nb::dlpack::dtype t = a.dtype();
    bool ok = t.lanes == 1 && t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Int) &&
              a.ndim() == shape.size() && a.device_type() == nb::device::cpu::value;
    int64_t stride = 1;
    for (size_t i = shape.size(); ok && i-- > 0;) {
      const int64_t extent = shape.begin()[i];
      ok = int64_t(a.shape(i)) == extent && (extent <= 1 || a.stride(i) == stride);
      stride *= extent;
    }
    if (!ok) {
      std::string dims;
      for (int64_t extent : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(extent);
      throw nb::value_error(format("%s: expected a contiguous host int32 array of shape (%s)", name,
                                   dims.c_str()).c_str());
    }
  }
  proxyattn::Batch batch_;
  pa_config config_;
  Array storage_;  // keeps the caller's storage alive as long as the plan
  pa_plan* plan_ = nullptr;
};

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "proxyattn C API binding (use the proxyattn package, not this module)";
  static nb::exception<proxyattn::Error> error(m, "ProxyAttnError");
  // A handle, not an object: kept for the process's life, never released after the
  // interpreter's finalisation.
  static nb::handle unsupported =
      PyErr_NewException("proxyattn._C.ProxyAttnUnsupported", error.ptr(), nullptr);
  m.attr("ProxyAttnUnsupported") = unsupported;
  // Registered after nb::exception's own translator, so tried before it.
  nb::register_exception_translator([](const std::exception_ptr& thrown, void*) {
    try {
      std::rethrow_exception(thrown);
    } catch (const proxyattn::Error& e) {
      PyErr_SetString(e.status() == PA_STATUS_UNSUPPORTED ? unsupported.ptr() : error.ptr(), e.what());
    }
  });

  nb::class_<pa_config>(m, "Config")
      .def("__init__", [](pa_config* c, int head_dim) { new (c) pa_config(pa_config_default(head_dim)); },
           nb::arg("head_dim"))
      .def_rw("block_size", &pa_config::block_size)
      .def_rw("stride", &pa_config::stride)
      .def_rw("gamma", &pa_config::gamma)
      .def_rw("min_budget_tokens", &pa_config::min_budget_tokens)
      .def_rw("num_proxy_groups", &pa_config::num_proxy_groups)
      .def_rw("force_sink", &pa_config::force_sink)
      .def_rw("force_local", &pa_config::force_local)
      .def_prop_rw("budget_mode", [](const pa_config& c) { return int(c.budget_mode); },
                   [](pa_config& c, int mode) { c.budget_mode = pa_budget_mode(mode); })
      .def_rw("dense_below", &pa_config::dense_below)
      .def_rw("softmax_scale", &pa_config::softmax_scale)
      .def_rw("anchor_blocks", &pa_config::anchor_blocks);

  m.attr("ANCHOR_BLOCKS_AUTO") = PA_ANCHOR_BLOCKS_AUTO;

  // Not the stable API (proxyattn_tuning.h): what tests and benchmarks change.
  nb::class_<pa_tuning>(m, "Tuning")
      .def("__init__", [](pa_tuning* t) { new (t) pa_tuning(pa_tuning_default()); })
      .def_rw("attn_kernel", &pa_tuning::attn_kernel)
      .def_rw("attn_packing", &pa_tuning::attn_packing)
      .def_rw("attn_rows_per_chunk", &pa_tuning::attn_rows_per_chunk)
      .def_rw("attn_persistent", &pa_tuning::attn_persistent)
      .def_rw("attn_consumer_turns", &pa_tuning::attn_consumer_turns)
      .def_rw("attn_rank_heads", &pa_tuning::attn_rank_heads)
      .def_rw("attn_max_ctas", &pa_tuning::attn_max_ctas)
      .def_rw("est_block_logits", &pa_tuning::est_block_logits);
  m.attr("TUNING_KERNEL_AUTO") = PA_TUNING_KERNEL_AUTO;
  m.attr("TUNING_KERNEL_SM80") = PA_TUNING_KERNEL_SM80;
  m.attr("TUNING_PACKING_CHUNKS_OF_HEAD") = PA_TUNING_PACKING_CHUNKS_OF_HEAD;
  m.attr("TUNING_PACKING_HEADS_OF_CHUNK") = PA_TUNING_PACKING_HEADS_OF_CHUNK;
  m.def("dtype_code", [](const In& a) { return int(dtype_of(a, "tensor")); });

  m.def("plan_bytes", [](const std::vector<int64_t>& cu, int64_t hq, int64_t hkv, int64_t d, int dtype,
                         const pa_config& c) {
    const proxyattn::Batch b = make_batch(cu, hq, hkv, d, pa_dtype(dtype));
    size_t bytes = 0;
    proxyattn::check(pa_plan_bytes(&b.problem(), &c, &bytes));
    return bytes;
  });
  m.def("workspace_bytes", [](const std::vector<int64_t>& cu, int64_t hq, int64_t hkv, int64_t d, int dtype,
                              const pa_config& c) {
    const proxyattn::Batch b = make_batch(cu, hq, hkv, d, pa_dtype(dtype));
    size_t bytes = 0;
    proxyattn::check(pa_workspace_bytes(&b.problem(), &c, &bytes));
    return bytes;
  });

  nb::class_<PyPlan>(m, "Plan")
      .def(nb::init<const std::vector<int64_t>&, int64_t, int64_t, int64_t, int, const pa_config&, Array>())
      .def("estimate", &PyPlan::estimate)
      .def("attend", &PyPlan::attend, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("o"),
           nb::arg("lse").none(), nb::arg("stream"))
      .def("stats", &PyPlan::stats)
      .def("heads", &PyPlan::heads)
      .def("anchors", &PyPlan::anchors)
      .def_prop_ro("anchor_blocks", &PyPlan::anchor_blocks)
      .def("index", &PyPlan::index)
      .def("to_flex", &PyPlan::to_flex)
      .def("check", &PyPlan::check_invariants)
      .def("set_tuning", &PyPlan::set_tuning)
      .def("tuning", &PyPlan::tuning);

  m.def("dense_attention", [](const std::vector<int64_t>& cu, float scale, const In& q, const In& k,
                              const In& v, Array o, nb::object lse, uintptr_t stream) {
    const proxyattn::Batch b = batch_of(cu, q, k);
    const pa_problem& p = b.problem();
    for (auto [a, name] : {std::pair{&k, "k"}, {&v, "v"}})
      if (dtype_of(*a, name) != p.dtype) throw nb::type_error(format("%s: dtype differs from q's", name).c_str());
    if (dtype_of(o, "o") != p.dtype) throw nb::type_error("o: dtype differs from q's");
    const pa_tensor tq = view(q, "q", {p, p.num_q_heads}), tk = view(k, "k", {p, p.num_kv_heads}),
                    tv = view(v, "v", {p, p.num_kv_heads});
    pa_tensor to = view(o, "o", {p, p.num_q_heads});
    float* l = lse_ptr(lse, p);
    nb::gil_scoped_release release;
    proxyattn::check(pa_dense_attention(&p, scale, &tq, &tk, &tv, &to, l, stream_ptr(stream)));
  }, nb::arg("cu_seqlens"), nb::arg("scale"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("o"),
     nb::arg("lse").none(), nb::arg("stream"));

  // Fills contiguous host q, k, v of the batch's shapes.
  m.def("synth_generate", [](const std::vector<int64_t>& cu, uint64_t seed, Array q, Array k, Array v) {
    const proxyattn::Batch b = batch_of(cu, q, k);
    const pa_problem& p = b.problem();
    for (auto [a, name, heads] : {std::tuple{&q, "q", p.num_q_heads}, {&k, "k", p.num_kv_heads},
                                  {&v, "v", p.num_kv_heads}}) {
      if (dtype_of(*a, name) != p.dtype) throw nb::type_error(format("%s: dtype differs from q's", name).c_str());
      const pa_tensor t = view(*a, name, {p, heads});
      const bool contiguous = (p.total_tokens <= 1 || t.token_stride == heads * p.head_dim) &&
                              (heads == 1 || t.head_stride == p.head_dim);
      if (a->device_type() != nb::device::cpu::value || !contiguous)
        throw nb::value_error(format("%s: expected a contiguous host array", name).c_str());
    }
    const pa_synth_params params = pa_synth_default(seed);
    proxyattn::check(pa_synth_generate(&p, &params, q.data(), k.data(), v.data()));
  });

  m.def("set_num_threads", [](int n) { proxyattn::check(pa_set_num_threads(n)); });
}
