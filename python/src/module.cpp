// proxyattn._C: the nanobind module over the C API. It takes any DLPack tensor (numpy,
// torch, ... on the CPU or a CUDA device), never allocates tensors itself (the Python layer
// allocates through the caller's framework), and raises proxyattn.ProxyAttnError (with the
// pa_status name) on failure, its subclass ProxyAttnUnsupported for PA_STATUS_UNSUPPORTED (a
// valid request this build or device cannot run, on which callers may fall back).
// A plan may run on another build of the library, loaded by path (Library), for benchmarks'
// A/B of a change in one process.
// Shapes: Q [tokens, Hq, d], K/V [tokens, Hkv, d] (a chunked plan's: [kv tokens, Hkv, d] by
// cu_seqlens_k, or a paged cache [num_pages, page_size, Hkv, d]), LSE [Hq, tokens].
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <dlfcn.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
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

// The shape a tensor of the call must have: [rows, heads, head_dim], its rows set by the entry
// `source`[num_seqs] of the batch (cu_seqlens for Q and O and a whole prompt's K and V,
// cu_seqlens_k for a chunked call's packed K and V).
struct Expected {
  int64_t rows;
  const char* source;
  int32_t num_seqs;
  int64_t heads, head_dim;
};

Expected q_rows(const pa_problem& p) { return {p.total_tokens, "cu_seqlens", p.num_seqs, p.num_q_heads, p.head_dim}; }
Expected kv_rows(const pa_problem& p) {
  if (p.cu_seqlens_k != nullptr) return {p.total_kv_tokens, "cu_seqlens_k", p.num_seqs, p.num_kv_heads, p.head_dim};
  return {p.total_tokens, "cu_seqlens", p.num_seqs, p.num_kv_heads, p.head_dim};
}

// The pa_tensor of an array [..., heads, head_dim] with a contiguous last dimension whose
// leading dimensions make `rows` rows token_stride elements apart. The stride of a dimension
// of extent 1, or of an empty tensor, means nothing, and frameworks report anything there
// (torch's DLPack export says 1: one KV head or one token made "head_stride = 1" errors): such
// a view gets the contiguous strides.
template <typename A>
pa_tensor rows_view(const A& a, const char* name, int64_t rows, int64_t token_stride) {
  const size_t n = a.ndim();
  const int64_t heads = int64_t(a.shape(n - 2)), d = int64_t(a.shape(n - 1));
  pa_tensor t;
  t.data = const_cast<void*>(static_cast<const void*>(a.data()));
  if (a.size() == 0) {
    t.token_stride = heads * d;
    t.head_stride = d;
    return t;
  }
  if (d > 1 && a.stride(n - 1) != 1)
    throw nb::value_error(format("%s: the last dimension (head_dim) must be contiguous (stride 1, got %lld)",
                                 name, (long long)a.stride(n - 1)).c_str());
  t.token_stride = rows == 1 ? heads * d : token_stride;
  t.head_stride = heads == 1 ? d : a.stride(n - 2);
  return t;
}

// A [tokens, heads, d] view, its shape checked against the batch (cu_seqlens gives the tokens:
// the library cannot see a tensor's extent, and trusts them).
template <typename A>
pa_tensor view(const A& a, const char* name, const Expected& want) {
  if (a.ndim() != 3)
    throw nb::value_error(format("%s: expected 3 dimensions [tokens, heads, head_dim], got %zu", name,
                                 a.ndim()).c_str());
  const int64_t tokens = int64_t(a.shape(0)), heads = int64_t(a.shape(1)), d = int64_t(a.shape(2));
  if (tokens != want.rows)
    throw nb::value_error(format("%s[%d] = %lld differs from the token count of %s (%s.shape[0] = %lld)",
                                 want.source, want.num_seqs, (long long)want.rows, name, name,
                                 (long long)tokens).c_str());
  if (heads != want.heads || d != want.head_dim)
    throw nb::value_error(format("%s: shape [%lld, %lld, %lld], expected [%lld, %lld, %lld] (tokens, "
                                 "heads, head_dim)", name, (long long)tokens, (long long)heads, (long long)d,
                                 (long long)want.rows, (long long)want.heads, (long long)want.head_dim).c_str());
  return rows_view(a, name, tokens, a.stride(0));
}

// A paged cache [num_pages, page_size, Hkv, d] (vLLM's and flash-attn's layout) as the
// [num_pages * page_size, Hkv, d] rows the library reads: pages page_size rows apart.
template <typename A>
pa_tensor page_view(const A& a, const char* name, const pa_problem& p) {
  const int64_t want[4] = {p.num_pages, p.page_size, p.num_kv_heads, p.head_dim};
  bool shaped = a.ndim() == 4;
  for (size_t i = 0; shaped && i < 4; ++i) shaped = int64_t(a.shape(i)) == want[i];
  if (!shaped) {
    std::string dims;
    for (size_t i = 0; i < a.ndim(); ++i) dims += (i ? ", " : "") + std::to_string(a.shape(i));
    throw nb::value_error(format("%s: shape [%s], expected [%lld, %lld, %lld, %lld] (num_pages, page_size, "
                                 "heads, head_dim)", name, dims.c_str(), (long long)want[0], (long long)want[1],
                                 (long long)want[2], (long long)want[3]).c_str());
  }
  const int64_t pages = want[0], page = want[1];
  if (a.size() > 0 && pages > 1 && page > 1 && a.stride(0) != page * a.stride(1))
    throw nb::value_error(format("%s: pages %lld elements apart, expected page_size x the token stride = %lld "
                                 "(the library reads [num_pages * page_size, heads, head_dim] rows)", name,
                                 (long long)a.stride(0), (long long)(page * a.stride(1))).c_str());
  return rows_view(a, name, pages * page, page > 1 ? a.stride(1) : a.stride(0));
}

// int32 [shape...] row-major (contiguous) array; on the host when host is set.
template <typename A>
void check_int32_array(const A& a, const char* name, std::initializer_list<int64_t> shape, bool host) {
  const nb::dlpack::dtype t = a.dtype();
  bool ok = t.lanes == 1 && t.bits == 32 && t.code == uint8_t(nb::dlpack::dtype_code::Int) &&
            a.ndim() == shape.size() && (!host || a.device_type() == nb::device::cpu::value);
  int64_t stride = 1;
  for (size_t i = shape.size(); ok && i-- > 0;) {
    const int64_t extent = shape.begin()[i];
    ok = int64_t(a.shape(i)) == extent && (extent <= 1 || a.stride(i) == stride);
    stride *= extent;
  }
  if (!ok) {
    std::string dims;
    for (int64_t extent : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(extent);
    throw nb::value_error(format("%s: expected a contiguous %sint32 array of shape (%s)", name, host ? "host " : "",
                                 dims.c_str()).c_str());
  }
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
std::vector<int32_t> int32_offsets(const std::vector<int64_t>& values, const char* name) {
  if (values.size() < 2) throw nb::value_error(format("%s: needs at least 2 entries", name).c_str());
  std::vector<int32_t> cu(values.size());
  for (size_t i = 0; i < cu.size(); ++i) {
    if (values[i] < INT32_MIN || values[i] > INT32_MAX)
      throw nb::value_error(format("%s[%zu] = %lld does not fit the int32 token offsets", name, i,
                                   (long long)values[i]).c_str());
    cu[i] = int32_t(values[i]);
  }
  return cu;
}

proxyattn::Batch make_batch(const std::vector<int64_t>& cu_seqlens, int64_t hq, int64_t hkv, int64_t d,
                            pa_dtype dtype) {
  std::vector<int32_t> cu = int32_offsets(cu_seqlens, "cu_seqlens");
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

// A dtype code (dtype_code) as a pa_dtype: converting an int outside the enum's values is
// undefined behaviour in C++, so it is refused before.
pa_dtype checked_dtype(int dtype) {
  if (dtype != PA_DTYPE_FLOAT32 && dtype != PA_DTYPE_FLOAT16 && dtype != PA_DTYPE_BFLOAT16)
    throw nb::value_error(format("dtype = %d: not a dtype code (%d float32, %d float16, %d bfloat16)", dtype,
                                 int(PA_DTYPE_FLOAT32), int(PA_DTYPE_FLOAT16), int(PA_DTYPE_BFLOAT16)).c_str());
  return pa_dtype(dtype);
}

// The problem of a plan: the batch's query lengths and, for a chunked call, its key lengths
// (cu_seqlens_k) and paged cache (page_size, num_pages, max_pages_per_seq; all 0 for packed
// keys). Its pa_problem points into its own arrays (a copy links to the copy's).
class Problem {
 public:
  Problem(const std::vector<int64_t>& cu_seqlens, int64_t hq, int64_t hkv, int64_t d, int dtype,
          const std::optional<std::vector<int64_t>>& cu_seqlens_k, int64_t page_size, int64_t num_pages,
          int64_t max_pages_per_seq)
      : batch_(make_batch(cu_seqlens, hq, hkv, d, checked_dtype(dtype))) {
    if (cu_seqlens_k) {
      if (cu_seqlens_k->size() != cu_seqlens.size())
        throw nb::value_error(format("cu_seqlens_k: %zu entries but cu_seqlens has %zu (num_seqs + 1 each)",
                                     cu_seqlens_k->size(), cu_seqlens.size()).c_str());
      cu_k_ = int32_offsets(*cu_seqlens_k, "cu_seqlens_k");
    }
    int i = 0;
    for (auto [value, name] : {std::pair{page_size, "page_size"}, {num_pages, "num_pages"},
                               {max_pages_per_seq, "max_pages_per_seq"}}) {
      if (value < 0 || value > INT32_MAX)
        throw nb::value_error(format("%s = %lld: must lie in [0, 2^31)", name, (long long)value).c_str());
      paged_[i++] = int32_t(value);
    }
    link();
  }
  Problem(const Problem& other) : batch_(other.batch_), cu_k_(other.cu_k_), paged_(other.paged_) { link(); }
  Problem& operator=(const Problem&) = delete;

  const pa_problem& get() const { return problem_; }
  const std::vector<int32_t>& cu_seqlens() const { return batch_.cu_seqlens(); }
  // Key length of sequence s (its query length for a whole prompt's problem).
  int64_t kv_length(int32_t s) const {
    const std::vector<int32_t>& cu = cu_k_.empty() ? batch_.cu_seqlens() : cu_k_;
    return int64_t(cu[s + 1]) - cu[s];
  }

 private:
  void link() {
    problem_ = batch_.problem();
    if (!cu_k_.empty()) {
      problem_.cu_seqlens_k = cu_k_.data();
      problem_.total_kv_tokens = cu_k_.back();
    }
    problem_.page_size = paged_[0];
    problem_.num_pages = paged_[1];
    problem_.max_pages_per_seq = paged_[2];
  }
  proxyattn::Batch batch_;
  std::vector<int32_t> cu_k_;  // empty: keys are the queries
  std::array<int32_t, 3> paged_{};
  pa_problem problem_{};
};

// The estimation state of a paged cache over caller memory (a contiguous 1-D array of
// pa_proxy_state_bytes bytes in the cache's memory space), described by pa_proxy_state_make
// for the cache's problem and config; the library checks it against each plan it is used with.
class ProxyState {
 public:
  ProxyState(const Problem& problem, const pa_config& config, Array data) : data_(data) {
    if (data.ndim() != 1 || (data.shape(0) > 1 && data.stride(0) != 1))
      throw nb::value_error("proxy_state: expected a contiguous 1-D array of bytes");
    proxyattn::check(pa_proxy_state_make(&problem.get(), &config, data.data(), data.nbytes(), &state_));
  }
  const pa_proxy_state& get() const { return state_; }

 private:
  Array data_;  // keeps the caller's memory alive as long as the description
  pa_proxy_state state_{};
};

// The C API functions of a plan, named once: a plan calls them through a Calls table, that of
// the library this module links or that of another build of it loaded by path (Library: a
// benchmark times a previous revision's kernels next to this one's, in one process).
#define PA_PLAN_CALLS(X)                                                                              \
  X(pa_last_error) X(pa_plan_bytes) X(pa_workspace_bytes) X(pa_plan_create) X(pa_plan_free) X(pa_estimate) \
  X(pa_attend) X(pa_estimate_kv) X(pa_attend_kv) X(pa_forward_kv) X(pa_plan_get_stats) X(pa_plan_get_heads)  \
  X(pa_plan_get_config) X(pa_plan_get_anchors) X(pa_plan_get_layout) X(pa_plan_get_index) X(pa_plan_set_index) \
  X(pa_plan_to_flex) X(pa_plan_check) X(pa_plan_set_tuning) X(pa_plan_get_tuning)

struct Calls {
#define PA_CALL_MEMBER(name) decltype(&::name) name;
  PA_PLAN_CALLS(PA_CALL_MEMBER)
#undef PA_CALL_MEMBER

  // proxyattn::check with the message of this table's library.
  void check(pa_status status) const {
    if (status != PA_STATUS_SUCCESS) throw proxyattn::Error(status, pa_last_error());
  }
};

const Calls& linked_calls() {
#define PA_CALL_LINKED(name) &::name,
  static const Calls calls{PA_PLAN_CALLS(PA_CALL_LINKED)};
#undef PA_CALL_LINKED
  return calls;
}

// Another build of the library (a shared libproxyattn), loaded by path and kept loaded for the
// process's life (plans of it may outlive this object). Its C API must have every function of
// PA_PLAN_CALLS and this header's struct layouts (pa_problem, pa_config, pa_tensor, pa_tuning).
class Library {
 public:
  explicit Library(const std::string& path) : path_(path) {
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) throw nb::value_error(format("Library(%s): %s", path.c_str(), dlerror()).c_str());
    std::string missing;
#define PA_CALL_LOADED(name)                                                  \
    calls_.name = reinterpret_cast<decltype(&::name)>(dlsym(handle, #name)); \
    if (calls_.name == nullptr) missing += (missing.empty() ? "" : ", ") + std::string(#name);
    PA_PLAN_CALLS(PA_CALL_LOADED)
#undef PA_CALL_LOADED
    if (!missing.empty())
      throw nb::value_error(format("Library(%s): lacks %s (a build older than this module's plans)", path.c_str(),
                                   missing.c_str()).c_str());
  }
  const Calls& calls() const { return calls_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  Calls calls_{};
};

const Calls& calls_of(const Library* library) { return library != nullptr ? library->calls() : linked_calls(); }

template <typename F>
size_t bytes_of(F f, const Problem& problem, const pa_config& config, const Calls& calls) {
  size_t bytes = 0;
  calls.check(f(&problem.get(), &config, &bytes));
  return bytes;
}

// pa_config's fields in the struct's order: the one list the module names them in.
#define PA_CONFIG_FIELDS(X)                                                                   \
  X(block_size) X(stride) X(gamma) X(min_budget_tokens) X(num_proxy_groups) X(force_sink) X(force_local) \
  X(budget_mode) X(dense_below) X(softmax_scale) X(anchor_blocks) X(anchor_mode) X(budget_rows) \
  X(budget_rule) X(ranked_slack)

// A read-write attribute of Config: an enum field (budget_mode) as its int value, stored and
// read as the int's bytes, as a C caller's would be (an int outside the enum's values is no
// valid C++ enum value: pa_config_validate reads the int and names the field).
template <auto Member>
void bind_config_field(nb::class_<pa_config>& c, const char* name) {
  using T = std::remove_reference_t<decltype(std::declval<pa_config&>().*Member)>;
  if constexpr (std::is_enum_v<T>) {
    static_assert(sizeof(T) == sizeof(int32_t));
    c.def_prop_rw(name, [](const pa_config& x) { int32_t v; std::memcpy(&v, &(x.*Member), sizeof v); return v; },
                  [](pa_config& x, int32_t value) { std::memcpy(&(x.*Member), &value, sizeof value); });
  }
  else
    c.def_rw(name, Member);
}

class PyPlan {
 public:
  PyPlan(const Problem& problem, const pa_config& config, Array storage, const Library* library)
      : problem_(problem), config_(config), storage_(storage), calls_(calls_of(library)) {
    calls_.check(calls_.pa_plan_create(&problem_.get(), &config_, storage.data(), storage.nbytes(), &plan_));
  }
  ~PyPlan() { calls_.pa_plan_free(plan_); }
  PyPlan(const PyPlan&) = delete;
  PyPlan& operator=(const PyPlan&) = delete;

  void estimate(const In& q, const In& k, Array workspace, uintptr_t stream) {
    check_dtypes({{&q, "q"}, {&k, "k"}});
    const pa_tensor tq = view(q, "q", q_rows(p())), tk = view(k, "k", kv_rows(p()));
    nb::gil_scoped_release release;
    calls_.check(calls_.pa_estimate(plan_, &tq, &tk, workspace.data(), workspace.nbytes(), stream_ptr(stream)));
  }

  void attend(const In& q, const In& k, const In& v, Array o, nb::object lse, uintptr_t stream) {
    check_dtypes({{&q, "q"}, {&k, "k"}, {&v, "v"}});
    const pa_tensor tq = view(q, "q", q_rows(p())), tk = view(k, "k", kv_rows(p())), tv = view(v, "v", kv_rows(p()));
    pa_tensor to = output(o);
    float* l = lse_ptr(lse, p());
    nb::gil_scoped_release release;
    calls_.check(calls_.pa_attend(plan_, &tq, &tk, &tv, &to, l, stream_ptr(stream)));
  }

  // The _kv calls: K and V packed by cu_seqlens_k (block_table None) or a paged cache
  // [num_pages, page_size, Hkv, d] with its block table int32 [num_seqs, max_pages_per_seq]
  // (the tensors' memory space) and, optionally, its estimation state.
  void estimate_kv(const In& q, const In& k, nb::object block_table, const ProxyState* state, Array workspace,
                   uintptr_t stream) {
    check_dtypes({{&q, "q"}, {&k, "k"}});
    const pa_tensor tq = view(q, "q", q_rows(p()));
    const pa_kv_cache kv = kv_cache(k, nullptr, block_table, state);
    nb::gil_scoped_release release;
    calls_.check(calls_.pa_estimate_kv(plan_, &tq, &kv, workspace.data(), workspace.nbytes(), stream_ptr(stream)));
  }

  // estimate_kv with step 5 given (pa_estimate_kv_given): needed [num_seqs * Hq], anchors
  // [num_seqs * Hq * anchor_blocks], num_kblocks [num_seqs], host lists.
  void estimate_kv_given(const In& q, const In& k, nb::object block_table, const ProxyState* state,
                         const std::vector<int32_t>& needed,
                         const std::vector<int32_t>& anchors, const std::vector<int32_t>& num_kblocks,
                         Array workspace, uintptr_t stream) {
    check_dtypes({{&q, "q"}, {&k, "k"}});
    const size_t heads = size_t(p().num_seqs) * p().num_q_heads;
    if (needed.size() != heads || num_kblocks.size() != size_t(p().num_seqs) ||
        anchors.size() != heads * size_t(anchor_blocks()))
      throw nb::value_error(format("estimate_kv_given: needed (%zu), anchors (%zu), num_kblocks (%zu) entries; "
                                   "expected %zu, %zu, %d", needed.size(), anchors.size(), num_kblocks.size(),
                                   heads, heads * size_t(anchor_blocks()), p().num_seqs).c_str());
    const pa_tensor tq = view(q, "q", q_rows(p()));
    const pa_kv_cache kv = kv_cache(k, nullptr, block_table, state);
    const pa_given_budgets given{needed.data(), anchors.empty() ? nullptr : anchors.data(), num_kblocks.data()};
    nb::gil_scoped_release release;
    proxyattn::check(pa_estimate_kv_given(plan_, &tq, &kv, &given, workspace.data(), workspace.nbytes(),
                                          stream_ptr(stream)));
  }

  void attend_kv(const In& q, const In& k, const In& v, nb::object block_table, const ProxyState* state, Array o,
                 nb::object lse, uintptr_t stream) {
    KvAttention a = kv_attention(q, k, v, block_table, state, o, lse);
    nb::gil_scoped_release release;
    calls_.check(calls_.pa_attend_kv(plan_, &a.q, &a.kv, &a.o, a.lse, stream_ptr(stream)));
  }

  void forward_kv(const In& q, const In& k, const In& v, nb::object block_table, const ProxyState* state, Array o,
                  nb::object lse, Array workspace, uintptr_t stream) {
    KvAttention a = kv_attention(q, k, v, block_table, state, o, lse);
    nb::gil_scoped_release release;
    calls_.check(calls_.pa_forward_kv(plan_, &a.q, &a.kv, &a.o, a.lse, workspace.data(), workspace.nbytes(),
                                   stream_ptr(stream)));
  }

  nb::dict stats() const {
    pa_plan_stats s{};
    calls_.check(calls_.pa_plan_get_stats(plan_, &s));
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
    const size_t n = size_t(p().num_seqs) * p().num_q_heads;
    std::vector<int32_t> budget(n), needed(n);
    std::vector<double> density(n);
    calls_.check(calls_.pa_plan_get_heads(plan_, budget.data(), needed.data(), density.data()));
    return {budget, needed, density};
  }

  // The plan's anchors per head (PA_ANCHOR_BLOCKS_AUTO resolved).
  int anchor_blocks() const {
    pa_config c{};
    calls_.check(calls_.pa_plan_get_config(plan_, &c));
    return c.anchor_blocks;
  }

  // Anchors [num_seqs * Hq * anchor_blocks] (-1 = none).
  std::vector<int32_t> anchors() const {
    const size_t n = size_t(p().num_seqs) * p().num_q_heads * size_t(anchor_blocks());
    std::vector<int32_t> out(n);
    calls_.check(calls_.pa_plan_get_anchors(plan_, out.data()));
    return out;
  }

  // (order [order_entries], count [total_qblocks * Hq]).
  std::tuple<std::vector<int32_t>, std::vector<int32_t>> index() const {
    int64_t rows = 0, entries = 0;
    calls_.check(calls_.pa_plan_get_layout(plan_, &rows, &entries));
    std::vector<int32_t> order(entries), count(rows * p().num_q_heads);
    calls_.check(calls_.pa_plan_get_index(plan_, order.data(), count.data()));
    return {order, count};
  }

  // Writes the index from host int32 arrays in index()'s layout: order [order_entries], count
  // [total_qblocks, Hq], and optionally budget and needed [num_seqs, Hq] (None: zeros); e.g. a
  // hand-made mask of a benchmark. The plan then counts as estimated.
  void set_index(const In& order, const In& count, nb::object budget, nb::object needed) {
    int64_t rows = 0, entries = 0;
    calls_.check(calls_.pa_plan_get_layout(plan_, &rows, &entries));
    check_int32_array(order, "order", {entries}, true);
    check_int32_array(count, "count", {rows, p().num_q_heads}, true);
    auto per_head = [&](const nb::object& a, const char* name) -> const int32_t* {
      if (a.is_none()) return nullptr;
      In array = nb::cast<In>(a);
      check_int32_array(array, name, {p().num_seqs, p().num_q_heads}, true);
      return static_cast<const int32_t*>(array.data());
    };
    const int32_t* b = per_head(budget, "budget");
    const int32_t* n = per_head(needed, "needed");
    calls_.check(calls_.pa_plan_set_index(plan_, static_cast<const int32_t*>(order.data()),
                                          static_cast<const int32_t*>(count.data()), b, n));
  }

  // Fills host int32 arrays kv_num_blocks [Hq, rows] and kv_indices [Hq, rows, Nkb] (contiguous):
  // the sequence's rows m0 .. Nkb - 1 of Nkb = ceil(kv_len / b) key blocks, m0 = (kv_len - q_len) / b
  // (docs/index_format.md; m0 = 0 and rows = Nkb for a whole prompt).
  void to_flex(int seq, Array kv_num_blocks, Array kv_indices) const {
    if (seq < 0 || seq >= p().num_seqs)
      throw nb::value_error(format("seq = %d: must lie in [0, %d)", seq, p().num_seqs).c_str());
    const int64_t q_len = problem_.cu_seqlens()[seq + 1] - problem_.cu_seqlens()[seq];
    const int64_t kv_len = problem_.kv_length(seq), b = config_.block_size;
    const int64_t nkb = (kv_len + b - 1) / b, rows = nkb - (kv_len - q_len) / b;
    check_int32_array(kv_num_blocks, "kv_num_blocks", {p().num_q_heads, rows}, true);
    check_int32_array(kv_indices, "kv_indices", {p().num_q_heads, rows, nkb}, true);
    calls_.check(calls_.pa_plan_to_flex(plan_, seq, static_cast<int32_t*>(kv_num_blocks.data()),
                                     static_cast<int32_t*>(kv_indices.data())));
  }

  void check_invariants() const { calls_.check(calls_.pa_plan_check(plan_)); }

  // The speed settings of the plan's GPU calls (proxyattn_tuning.h: for tests and benchmarks).
  void set_tuning(const pa_tuning& tuning) { calls_.check(calls_.pa_plan_set_tuning(plan_, &tuning)); }
  pa_tuning tuning() const {
    pa_tuning t{};
    calls_.check(calls_.pa_plan_get_tuning(plan_, &t));
    return t;
  }

 private:
  const pa_problem& p() const { return problem_.get(); }
  pa_tensor output(Array& o) const {
    if (dtype_of(o, "o") != p().dtype) throw nb::type_error("o: dtype differs from the plan's");
    return view(o, "o", q_rows(p()));
  }
  // The checked arguments of an attention call over kv.
  struct KvAttention {
    pa_tensor q;
    pa_kv_cache kv;
    pa_tensor o;
    float* lse;
  };
  KvAttention kv_attention(const In& q, const In& k, const In& v, const nb::object& block_table,
                           const ProxyState* state, Array& o, const nb::object& lse) const {
    check_dtypes({{&q, "q"}, {&k, "k"}, {&v, "v"}});
    return {view(q, "q", q_rows(p())), kv_cache(k, &v, block_table, state), output(o), lse_ptr(lse, p())};
  }
  pa_kv_cache kv_cache(const In& k, const In* v, const nb::object& block_table, const ProxyState* state) const {
    const bool paged = p().page_size > 0;
    auto rows = [&](const In& a, const char* packed_name, const char* cache_name) {
      return paged ? page_view(a, cache_name, p()) : view(a, packed_name, kv_rows(p()));
    };
    pa_kv_cache kv{};
    kv.k = rows(k, "k", "k_cache");
    if (v != nullptr) kv.v = rows(*v, "v", "v_cache");
    if (!block_table.is_none()) {
      In table = nb::cast<In>(block_table);
      check_int32_array(table, "block_table", {p().num_seqs, p().max_pages_per_seq}, false);
      kv.block_table = static_cast<const int32_t*>(table.data());
    }
    kv.proxy_state = state != nullptr ? &state->get() : nullptr;
    return kv;
  }
  void check_dtypes(std::initializer_list<std::pair<const In*, const char*>> tensors) const {
    for (const auto& [a, name] : tensors)
      if (dtype_of(*a, name) != p().dtype)
        throw nb::type_error((std::string(name) + ": dtype differs from the plan's").c_str());
  }
  Problem problem_;
  pa_config config_;
  Array storage_;  // keeps the caller's storage alive as long as the plan
  Calls calls_;
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

  // pa_config, its fields named once (PA_CONFIG_FIELDS): the attributes of Config and the
  // layout CONFIG_FIELDS, (name, offset, bytes, is_float) in the struct's order, from which
  // proxyattn.Settings orders its values and the torch ops their arguments.
  nb::class_<pa_config> config(m, "Config");
  config.def("__init__", [](pa_config* c, int head_dim) { new (c) pa_config(pa_config_default(head_dim)); },
             nb::arg("head_dim"));
  nb::list config_fields;
#define PA_CONFIG_FIELD(name)                                                                        \
  bind_config_field<&pa_config::name>(config, #name);                                                \
  config_fields.append(nb::make_tuple(#name, offsetof(pa_config, name), sizeof(pa_config::name),    \
                                      std::is_floating_point_v<decltype(pa_config::name)>));
  PA_CONFIG_FIELDS(PA_CONFIG_FIELD)
#undef PA_CONFIG_FIELD
  m.attr("CONFIG_FIELDS") = nb::tuple(config_fields);
  // pa_config_validate without a problem: every field on its own (ProxyAttnError naming it).
  m.def("validate_config", [](const pa_config& c) { proxyattn::check(pa_config_validate(&c, nullptr)); },
        nb::arg("config"));

  m.attr("ANCHOR_BLOCKS_AUTO") = PA_ANCHOR_BLOCKS_AUTO;
  m.attr("MAX_ANCHOR_BLOCKS") = PA_MAX_ANCHOR_BLOCKS;
  nb::dict budget_modes;  // pa_budget_mode by the name proxyattn.Settings takes
  budget_modes["absolute"] = int(PA_BUDGET_ABSOLUTE);
  budget_modes["proportional"] = int(PA_BUDGET_PROPORTIONAL);
  m.attr("BUDGET_MODES") = budget_modes;
  nb::dict anchor_modes;  // pa_anchor_mode by the name proxyattn.Settings takes
  anchor_modes["on_top"] = int(PA_ANCHORS_ON_TOP);
  anchor_modes["in_budget"] = int(PA_ANCHORS_IN_BUDGET);
  m.attr("ANCHOR_MODES") = anchor_modes;
  nb::dict budget_rules;  // pa_budget_rule by the name proxyattn.Settings takes
  budget_rules["paper"] = int(PA_BUDGET_RULE_PAPER);
  budget_rules["ranked"] = int(PA_BUDGET_RULE_RANKED);
  m.attr("BUDGET_RULES") = budget_rules;
  m.attr("MAX_BUDGET_ROWS") = PA_MAX_BUDGET_ROWS;

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

  nb::class_<Problem>(m, "Problem")
      .def(nb::init<const std::vector<int64_t>&, int64_t, int64_t, int64_t, int,
                    const std::optional<std::vector<int64_t>>&, int64_t, int64_t, int64_t>(),
           nb::arg("cu_seqlens"), nb::arg("num_q_heads"), nb::arg("num_kv_heads"), nb::arg("head_dim"),
           nb::arg("dtype"), nb::arg("cu_seqlens_k").none() = nb::none(), nb::arg("page_size") = 0,
           nb::arg("num_pages") = 0, nb::arg("max_pages_per_seq") = 0);
  // Another build of the library for plans (Plan's library argument; None: this module's).
  nb::class_<Library>(m, "Library")
      .def(nb::init<const std::string&>(), nb::arg("path"))
      .def_prop_ro("path", &Library::path);
  m.def("plan_bytes", [](const Problem& p, const pa_config& c, const Library* library) {
    const Calls& calls = calls_of(library);
    return bytes_of(calls.pa_plan_bytes, p, c, calls);
  }, nb::arg("problem"), nb::arg("config"), nb::arg("library").none() = nb::none());
  m.def("workspace_bytes", [](const Problem& p, const pa_config& c, const Library* library) {
    const Calls& calls = calls_of(library);
    return bytes_of(calls.pa_workspace_bytes, p, c, calls);
  }, nb::arg("problem"), nb::arg("config"), nb::arg("library").none() = nb::none());
  m.def("proxy_state_bytes", [](const Problem& p, const pa_config& c) {
    return bytes_of(pa_proxy_state_bytes, p, c, linked_calls());
  });
  nb::class_<ProxyState>(m, "ProxyState")
      .def(nb::init<const Problem&, const pa_config&, Array>(), nb::arg("problem"), nb::arg("config"),
           nb::arg("data"));

  nb::class_<PyPlan>(m, "Plan")
      .def(nb::init<const Problem&, const pa_config&, Array, const Library*>(), nb::arg("problem"),
           nb::arg("config"), nb::arg("storage"), nb::arg("library").none() = nb::none())
      .def("estimate", &PyPlan::estimate)
      .def("attend", &PyPlan::attend, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("o"),
           nb::arg("lse").none(), nb::arg("stream"))
      .def("estimate_kv", &PyPlan::estimate_kv, nb::arg("q"), nb::arg("k"), nb::arg("block_table").none(),
           nb::arg("state").none(), nb::arg("workspace"), nb::arg("stream"))
      .def("estimate_kv_given", &PyPlan::estimate_kv_given, nb::arg("q"), nb::arg("k"),
           nb::arg("block_table").none(), nb::arg("state").none(), nb::arg("needed"),
           nb::arg("anchors"), nb::arg("num_kblocks"), nb::arg("workspace"), nb::arg("stream"))
      .def("attend_kv", &PyPlan::attend_kv, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("block_table").none(),
           nb::arg("state").none(), nb::arg("o"), nb::arg("lse").none(), nb::arg("stream"))
      .def("forward_kv", &PyPlan::forward_kv, nb::arg("q"), nb::arg("k"), nb::arg("v"),
           nb::arg("block_table").none(), nb::arg("state").none(), nb::arg("o"), nb::arg("lse").none(),
           nb::arg("workspace"), nb::arg("stream"))
      .def("stats", &PyPlan::stats)
      .def("heads", &PyPlan::heads)
      .def("anchors", &PyPlan::anchors)
      .def_prop_ro("anchor_blocks", &PyPlan::anchor_blocks)
      .def("index", &PyPlan::index)
      .def("set_index", &PyPlan::set_index, nb::arg("order"), nb::arg("count"), nb::arg("budget").none() = nb::none(),
           nb::arg("needed").none() = nb::none())
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
    const pa_tensor tq = view(q, "q", q_rows(p)), tk = view(k, "k", kv_rows(p)), tv = view(v, "v", kv_rows(p));
    pa_tensor to = view(o, "o", q_rows(p));
    float* l = lse_ptr(lse, p);
    nb::gil_scoped_release release;
    proxyattn::check(pa_dense_attention(&p, scale, &tq, &tk, &tv, &to, l, stream_ptr(stream)));
  }, nb::arg("cu_seqlens"), nb::arg("scale"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("o"),
     nb::arg("lse").none(), nb::arg("stream"));

  // Fills contiguous host q, k, v of the batch's shapes.
  m.def("synth_generate", [](const std::vector<int64_t>& cu, uint64_t seed, Array q, Array k, Array v) {
    const proxyattn::Batch b = batch_of(cu, q, k);
    const pa_problem& p = b.problem();
    for (auto [a, name, want] : {std::tuple{&q, "q", q_rows(p)}, {&k, "k", kv_rows(p)}, {&v, "v", kv_rows(p)}}) {
      if (dtype_of(*a, name) != p.dtype) throw nb::type_error(format("%s: dtype differs from q's", name).c_str());
      const pa_tensor t = view(*a, name, want);
      const int64_t heads = want.heads;
      const bool contiguous = (p.total_tokens <= 1 || t.token_stride == heads * p.head_dim) &&
                              (heads == 1 || t.head_stride == p.head_dim);
      if (a->device_type() != nb::device::cpu::value || !contiguous)
        throw nb::value_error(format("%s: expected a contiguous host array", name).c_str());
    }
    const pa_synth_params params = pa_synth_default(seed);
    proxyattn::check(pa_synth_generate(&p, &params, q.data(), k.data(), v.data()));
  });

  m.def("set_num_threads", [](int n) { proxyattn::check(pa_set_num_threads(n)); });
  m.def("cpu_kernels", [] { return std::string(pa_cpu_kernels()); },
        "Instruction set of the CPU kernels in use ('avx2', 'sse2', 'neon', ...).");
}
