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
#include <string>
#include <vector>

#include "proxyattn/proxyattn.hpp"
#include "proxyattn/proxyattn_tuning.h"

namespace nb = nanobind;
using Array = nb::ndarray<>;

namespace {

pa_dtype dtype_of(const Array& a, const char* name) {
  const nb::dlpack::dtype t = a.dtype();
  if (t.lanes == 1 && t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Float)) return PA_DTYPE_FLOAT32;
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Float)) return PA_DTYPE_FLOAT16;
  if (t.lanes == 1 && t.bits == 16 && t.code == uint8_t(nb::dlpack::dtype_code::Bfloat)) return PA_DTYPE_BFLOAT16;
  throw nb::type_error((std::string(name) + ": dtype must be float32, float16 or bfloat16").c_str());
}

// A [tokens, heads, d] view with a contiguous last dimension.
pa_tensor view(const Array& a, const char* name) {
  if (a.ndim() != 3)
    throw nb::value_error((std::string(name) + ": expected 3 dimensions [tokens, heads, head_dim], got " +
                           std::to_string(a.ndim())).c_str());
  if (a.shape(2) > 1 && a.stride(2) != 1)
    throw nb::value_error((std::string(name) + ": the last dimension (head_dim) must be contiguous").c_str());
  pa_tensor t;
  t.data = a.data();
  t.token_stride = a.stride(0);
  t.head_stride = a.stride(1);
  return t;
}

float* lse_ptr(const nb::object& lse) {
  if (lse.is_none()) return nullptr;
  Array a = nb::cast<Array>(lse);
  const nb::dlpack::dtype t = a.dtype();
  if (!(t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Float)))
    throw nb::type_error("lse: dtype must be float32");
  return static_cast<float*>(a.data());
}

void* stream_ptr(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// The batch of a call: lengths from cu_seqlens (host int32), shapes from q and k.
proxyattn::Batch make_batch(const std::vector<int32_t>& cu_seqlens, int hq, int hkv, int d, pa_dtype dtype) {
  if (cu_seqlens.size() < 2) throw nb::value_error("cu_seqlens: needs at least 2 entries");
  return proxyattn::Batch::from_cu_seqlens(cu_seqlens, hq, hkv, d, dtype);
}

class PyPlan {
 public:
  PyPlan(const std::vector<int32_t>& cu_seqlens, int hq, int hkv, int d, int dtype, const pa_config& config,
         Array storage)
      : batch_(make_batch(cu_seqlens, hq, hkv, d, pa_dtype(dtype))), config_(config), storage_(storage) {
    proxyattn::check(pa_plan_create(&batch_.problem(), &config_, storage.data(), storage.nbytes(), &plan_));
  }
  ~PyPlan() { pa_plan_free(plan_); }
  PyPlan(const PyPlan&) = delete;
  PyPlan& operator=(const PyPlan&) = delete;

  void estimate(const Array& q, const Array& k, Array workspace, uintptr_t stream) {
    const pa_tensor tq = view(q, "q"), tk = view(k, "k");
    check_dtype(q, "q");
    check_dtype(k, "k");
    nb::gil_scoped_release release;
    proxyattn::check(pa_estimate(plan_, &tq, &tk, workspace.data(), workspace.nbytes(), stream_ptr(stream)));
  }

  void attend(const Array& q, const Array& k, const Array& v, Array o, nb::object lse, uintptr_t stream) {
    const pa_tensor tq = view(q, "q"), tk = view(k, "k"), tv = view(v, "v");
    pa_tensor to = view(o, "o");
    for (auto [a, n] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&o, "o"}}) check_dtype(*a, n);
    float* l = lse_ptr(lse);
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

  // Fills host int32 arrays kv_num_blocks [Hq, Nqb] and kv_indices [Hq, Nqb, Nqb].
  void to_flex(int seq, Array kv_num_blocks, Array kv_indices) const {
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
  void check_dtype(const Array& a, const char* name) const {
    if (dtype_of(a, name) != batch_.problem().dtype)
      throw nb::type_error((std::string(name) + ": dtype differs from the plan's").c_str());
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
  m.def("dtype_code", [](const Array& a) { return int(dtype_of(a, "tensor")); });

  m.def("plan_bytes", [](const std::vector<int32_t>& cu, int hq, int hkv, int d, int dtype, const pa_config& c) {
    const proxyattn::Batch b = make_batch(cu, hq, hkv, d, pa_dtype(dtype));
    size_t bytes = 0;
    proxyattn::check(pa_plan_bytes(&b.problem(), &c, &bytes));
    return bytes;
  });
  m.def("workspace_bytes", [](const std::vector<int32_t>& cu, int hq, int hkv, int d, int dtype, const pa_config& c) {
    const proxyattn::Batch b = make_batch(cu, hq, hkv, d, pa_dtype(dtype));
    size_t bytes = 0;
    proxyattn::check(pa_workspace_bytes(&b.problem(), &c, &bytes));
    return bytes;
  });

  nb::class_<PyPlan>(m, "Plan")
      .def(nb::init<const std::vector<int32_t>&, int, int, int, int, const pa_config&, Array>())
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

  m.def("dense_attention", [](const std::vector<int32_t>& cu, float scale, const Array& q, const Array& k,
                              const Array& v, Array o, nb::object lse, uintptr_t stream) {
    const pa_dtype dt = dtype_of(q, "q");
    const proxyattn::Batch b = make_batch(cu, int(q.shape(1)), int(k.shape(1)), int(q.shape(2)), dt);
    const pa_tensor tq = view(q, "q"), tk = view(k, "k"), tv = view(v, "v");
    pa_tensor to = view(o, "o");
    float* l = lse_ptr(lse);
    nb::gil_scoped_release release;
    proxyattn::check(pa_dense_attention(&b.problem(), scale, &tq, &tk, &tv, &to, l, stream_ptr(stream)));
  }, nb::arg("cu_seqlens"), nb::arg("scale"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("o"),
     nb::arg("lse").none(), nb::arg("stream"));

  m.def("synth_generate", [](const std::vector<int32_t>& cu, uint64_t seed, Array q, Array k, Array v) {
    const pa_dtype dt = dtype_of(q, "q");
    const proxyattn::Batch b = make_batch(cu, int(q.shape(1)), int(k.shape(1)), int(q.shape(2)), dt);
    const pa_synth_params params = pa_synth_default(seed);
    proxyattn::check(pa_synth_generate(&b.problem(), &params, q.data(), k.data(), v.data()));
  });

  m.def("set_num_threads", [](int n) { proxyattn::check(pa_set_num_threads(n)); });
}
