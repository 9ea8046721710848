// The C API: validates and unpacks arguments, then dispatches to a backend. Nothing is
// written to an output before every check has passed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <initializer_list>
#include <utility>
#include <exception>
#include <new>
#include <vector>

#include "core/block_index.hpp"
#include "core/config.hpp"
#include "core/enum_value.hpp"
#include "core/given_budgets.hpp"
#include "core/plan.hpp"
#include "core/problem.hpp"
#include "core/status.hpp"
#include "core/tuning.hpp"
#include "cpu/backend.hpp"
#include "cpu/elements.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"
#include "proxyattn/proxyattn.h"
#include "proxyattn/proxyattn_tuning.h"
#include "synth/structured_input.hpp"
#if PROXYATTN_WITH_CUDA
#include "cuda/backend.hpp"
#endif

using namespace proxyattn;

struct pa_plan {
  PlanDesc desc;
  std::vector<int32_t> cu_seqlens;    // the handle's copy of problem.cu_seqlens
  std::vector<int32_t> cu_seqlens_k;  // and of problem.cu_seqlens_k
  void* storage = nullptr;
  bool on_device = false;           // storage (and so every tensor used with it) on the GPU
  bool estimated = false;
};

namespace {

// Runs a call body with the error cleared first and no exception crossing the C boundary.
template <typename Body>
pa_status guarded(Body&& body) noexcept {
  clear_error();
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(PA_STATUS_OUT_OF_MEMORY, "host allocation failed");
  } catch (const std::exception& e) {
    return fail(PA_STATUS_INTERNAL, "unexpected exception: %s", e.what());
  } catch (...) {
    return fail(PA_STATUS_INTERNAL, "unexpected exception");
  }
}

pa_status validate_plan_inputs(const pa_problem* problem, const pa_config* config) {
  PA_TRY(validate_problem(problem));
  if (config == nullptr) return fail(PA_STATUS_NULL_POINTER, "config is NULL");
  return validate_config(*config, problem);
}

pa_status check_tuning(const pa_tuning* tuning) {
  if (tuning == nullptr) return fail(PA_STATUS_NULL_POINTER, "tuning is NULL");
  return validate_tuning(*tuning);
}

pa_status check_plan(const pa_plan* plan, bool needs_estimate) {
  if (plan == nullptr) return fail(PA_STATUS_NULL_POINTER, "plan is NULL");
  if (needs_estimate && !plan->estimated)
    return fail(PA_STATUS_PLAN_MISMATCH, "plan has not been estimated yet (call pa_estimate first)");
  return PA_STATUS_SUCCESS;
}

// A view validated (validate_tensor, of `tokens` rows) and aligned to its elements: the
// backends read and write whole elements through typed pointers (the GPU asks for more,
// cuda::check_views).
pa_status check_view(const pa_tensor* t, const char* name, const pa_problem& p, int heads,
                     int64_t tokens = -1) {
  PA_TRY(validate_tensor(t, name, p, heads, tokens));
  const int bytes = dtype_bytes(p.dtype);
  if (reinterpret_cast<uintptr_t>(t->data) % bytes != 0)
    return fail(PA_STATUS_INVALID_SHAPE, "%s.data = %p is not aligned to its %d-byte %s elements",
                name, t->data, bytes, dtype_name(p.dtype));
  return PA_STATUS_SUCCESS;
}

// Bytes [begin, end) of a checked view: its last element is at (T-1) token_stride +
// (H-1) head_stride + d - 1 (both strides >= 0). Empty for no token.
struct Extent {
  uintptr_t begin = 0, end = 0;
};
Extent extent_of(const void* data, int64_t tokens, int64_t heads, int64_t token_stride,
                 int64_t head_stride, int64_t d, int bytes) {
  if (tokens == 0 || data == nullptr) return {};
  const __int128 elements = __int128(tokens - 1) * token_stride + __int128(heads - 1) * head_stride + d;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const __int128 end = __int128(begin) + elements * bytes;
  return {begin, end > __int128(UINTPTR_MAX) ? UINTPTR_MAX : uintptr_t(end)};
}

// Names of the key and value tensors in messages: "k", "v" for the calls that take them,
// "kv.k", "kv.v" for the _kv calls.
struct KvNames {
  const char* k = "k";
  const char* v = "v";
};

// Q, and K (and V when with_values) of kv_rows(p) rows, checked views.
pa_status check_inputs(const pa_problem& p, const pa_tensor* q, const pa_tensor* k, const pa_tensor* v,
                       bool with_values, KvNames names = {}) {
  PA_TRY(check_view(q, "q", p, p.num_q_heads));
  PA_TRY(check_view(k, names.k, p, p.num_kv_heads, kv_rows(p)));
  if (with_values) PA_TRY(check_view(v, names.v, p, p.num_kv_heads, kv_rows(p)));
  return PA_STATUS_SUCCESS;
}

// The views of an attention call: Q, K, V, O checked, and the outputs (O, LSE [Hq, T] float32)
// overlapping no input nor each other: O over K or V (or shifted over Q) races with the work
// items still reading them, so any overlap, exact in-place O = Q included, is refused.
pa_status check_attention_views(const pa_problem& p, const pa_tensor* q, const pa_tensor* k,
                                const pa_tensor* v, const pa_tensor* o, const float* lse,
                                KvNames names = {}) {
  PA_TRY(check_inputs(p, q, k, v, true, names));
  PA_TRY(check_view(o, "o", p, p.num_q_heads));
  if (reinterpret_cast<uintptr_t>(lse) % sizeof(float) != 0)
    return fail(PA_STATUS_INVALID_SHAPE, "lse = %p is not aligned to its 4-byte float32 elements",
                static_cast<const void*>(lse));
  const int bytes = dtype_bytes(p.dtype);
  const int64_t t = p.total_tokens, d = p.head_dim;
  auto of = [&](const pa_tensor* x, int64_t tokens, int heads) {
    return extent_of(x->data, tokens, heads, x->token_stride, x->head_stride, d, bytes);
  };
  const std::pair<const char*, Extent> inputs[] = {{"q", of(q, t, p.num_q_heads)},
                                                   {names.k, of(k, kv_rows(p), p.num_kv_heads)},
                                                   {names.v, of(v, kv_rows(p), p.num_kv_heads)}};
  const Extent out = of(o, t, p.num_q_heads);
  const Extent lse_extent = extent_of(lse, p.num_q_heads, 1, t, 0, t, sizeof(float));
  auto overlap = [](Extent a, Extent b) { return a.begin < b.end && b.begin < a.end; };
  for (const auto& [name, in] : inputs) {
    if (overlap(out, in))
      return fail(PA_STATUS_INVALID_SHAPE, "o (%p) overlaps %s (%p): the output must not share "
                  "memory with an input (no in-place attention)", o->data, name, reinterpret_cast<void*>(in.begin));
    if (overlap(lse_extent, in))
      return fail(PA_STATUS_INVALID_SHAPE, "lse (%p) overlaps %s (%p): the output must not share "
                  "memory with an input", static_cast<const void*>(lse), name, reinterpret_cast<void*>(in.begin));
  }
  if (overlap(lse_extent, out))
    return fail(PA_STATUS_INVALID_SHAPE, "lse (%p) overlaps o (%p)", static_cast<const void*>(lse), o->data);
  return PA_STATUS_SUCCESS;
}

bool on_device(const void* p) {
#if PROXYATTN_WITH_CUDA
  return cuda::is_device_pointer(p);
#else
  (void)p;
  return false;
#endif
}

const char* space_name(bool device) { return device ? "device" : "host"; }

// Every named buffer must live where the plan (or the first buffer) lives.
pa_status check_space(bool device, std::initializer_list<std::pair<const char*, const void*>> buffers) {
  for (const auto& [name, ptr] : buffers) {
    if (ptr == nullptr) continue;
    if (on_device(ptr) != device)
      return fail(PA_STATUS_MEMORY_SPACE, "%s is in %s memory but this call runs on the %s",
                  name, space_name(!device), space_name(device));
  }
#if !PROXYATTN_WITH_CUDA
  if (device) return fail(PA_STATUS_MEMORY_SPACE, "device memory given to a CPU-only build");
#endif
  return PA_STATUS_SUCCESS;
}

// The state's shape fields against the plan's: a state made for other shapes is refused.
pa_status check_proxy_state(const PlanDesc& d, const pa_proxy_state& st) {
  if (!d.paged())
    return fail(PA_STATUS_UNSUPPORTED, "kv.proxy_state is given but the plan's keys are packed "
                "(problem.page_size = 0): an estimation state lives beside a paged cache");
  const struct {
    const char* name;
    int32_t state, plan;
  } fields[] = {{"num_pages", st.num_pages, d.problem.num_pages},
                {"page_size", st.page_size, d.problem.page_size},
                {"stride", st.stride, d.config.stride},
                {"num_proxy_groups", st.num_proxy_groups, d.config.num_proxy_groups},
                {"head_dim", st.head_dim, d.problem.head_dim},
                {"dtype", raw_value(st.dtype), int32_t(d.problem.dtype)}};
  for (const auto& f : fields)
    if (f.state != f.plan)
      return fail(PA_STATUS_PLAN_MISMATCH, "kv.proxy_state.%s = %d but the plan has %d (make the state "
                  "with pa_proxy_state_make for the plan's problem and config)", f.name, f.state, f.plan);
  if (st.data == nullptr) return fail(PA_STATUS_NULL_POINTER, "kv.proxy_state.data is NULL");
  return PA_STATUS_SUCCESS;
}

// Every page id the batch's sequences use lies in the cache (a host block table).
pa_status check_block_table(const PlanDesc& d, const int32_t* table) {
  const pa_problem& p = d.problem;
  for (size_t s = 0; s < d.batch.seqs.size(); ++s) {
    const int64_t pages = ceil_div(d.batch.seqs[s].kv_length, p.page_size);
    for (int64_t i = 0; i < pages; ++i) {
      const int32_t page = table[int64_t(s) * p.max_pages_per_seq + i];
      if (page < 0 || page >= p.num_pages)
        return fail(PA_STATUS_INVALID_SHAPE, "kv.block_table[%zu][%lld] = %d: outside the cache's "
                    "problem.num_pages = %d pages", s, static_cast<long long>(i), page, p.num_pages);
    }
  }
  return PA_STATUS_SUCCESS;
}

// The arguments of a call over kv (values read only with_values; o and lse only when given).
// packed: the call took k and v (pa_estimate, pa_attend, pa_forward), named so in messages.
pa_status check_kv_call(const pa_plan& plan, const pa_tensor* q, const pa_kv_cache* kv, bool with_values,
                        const pa_tensor* o, const float* lse, const void* workspace, bool packed = false) {
  const PlanDesc& d = plan.desc;
  if (kv == nullptr) return fail(PA_STATUS_NULL_POINTER, "kv is NULL");
  const KvNames names = packed ? KvNames{} : KvNames{"kv.k", "kv.v"};
  if (o != nullptr)
    PA_TRY(check_attention_views(d.problem, q, &kv->k, &kv->v, o, lse, names));
  else
    PA_TRY(check_inputs(d.problem, q, &kv->k, &kv->v, with_values, names));
  if (d.paged() && kv->block_table == nullptr)
    return fail(PA_STATUS_NULL_POINTER, "kv.block_table is NULL but the plan is for a paged cache "
                "(problem.page_size = %d)", d.problem.page_size);
  if (!d.paged() && kv->block_table != nullptr)
    return fail(PA_STATUS_INVALID_SHAPE, "kv.block_table is given but the plan's keys are packed "
                "(problem.page_size = 0)");
  if (kv->proxy_state != nullptr) PA_TRY(check_proxy_state(d, *kv->proxy_state));
  PA_TRY(check_space(plan.on_device,
                     {{"q", q->data}, {packed ? "k" : "kv.k", kv->k.data},
                      {packed ? "v" : "kv.v", with_values ? kv->v.data : nullptr},
                      {"kv.block_table", kv->block_table},
                      {"kv.proxy_state.data", kv->proxy_state ? kv->proxy_state->data : nullptr},
                      {"o", o ? o->data : nullptr}, {"lse", lse}, {"workspace", workspace}}));
  if (d.paged() && !plan.on_device) PA_TRY(check_block_table(d, kv->block_table));
  return PA_STATUS_SUCCESS;
}

// A whole prompt's K and V as a pa_kv_cache; the old entry points refuse paged plans.
pa_status packed_kv(const pa_plan& plan, const pa_tensor* k, const pa_tensor* v, const char* call,
                    pa_kv_cache* kv) {
  if (plan.desc.paged())
    return fail(PA_STATUS_INVALID_SHAPE, "%s: the plan is for a paged cache (problem.page_size = %d): "
                "call %s_kv with its block table", call, plan.desc.problem.page_size, call);
  if (k == nullptr) return fail(PA_STATUS_NULL_POINTER, "k is NULL");
  *kv = pa_kv_cache{*k, v != nullptr ? *v : pa_tensor{}, nullptr, nullptr};
  return PA_STATUS_SUCCESS;
}

// The index as host memory: a host plan's own arrays, read in place, or one downloaded copy
// of a device plan's arrays (without the order array, the largest, where with_order is
// false: order is then null).
struct HostArrays {
  const int32_t* order = nullptr;   // [order_entries]
  const int32_t* count = nullptr;   // [total_qblocks, Hq]
  const int32_t* budget = nullptr;  // [num_seqs, Hq]
  const int32_t* needed = nullptr;  // [num_seqs, Hq]
  const int32_t* anchors = nullptr;  // [num_seqs, Hq, T]
  size_t order_n = 0, count_n = 0, head_n = 0, anchor_n = 0;
  std::vector<int32_t> downloaded;  // backs the pointers for a device plan
};

pa_status host_arrays(const pa_plan& plan, HostArrays& out, bool with_order = true) {
  const PlanDesc& d = plan.desc;
  out.order_n = with_order ? d.batch.order_entries : 0;
  out.count_n = d.batch.total_qblocks * d.problem.num_q_heads;
  out.head_n = size_t(d.problem.num_seqs) * d.problem.num_q_heads;
  out.anchor_n = out.head_n * d.config.anchor_blocks;
  if (!plan.on_device) {
    out.order = d.index.order, out.count = d.index.count;
    out.budget = d.index.budget, out.needed = d.index.needed, out.anchors = d.index.anchors;
    return PA_STATUS_SUCCESS;
  }
#if PROXYATTN_WITH_CUDA
  out.downloaded.resize(out.order_n + out.count_n + 2 * out.head_n + out.anchor_n);
  int32_t* order = out.downloaded.data();
  int32_t* count = order + out.order_n;
  int32_t* budget = count + out.count_n;
  int32_t* needed = budget + out.head_n;
  int32_t* anchors = needed + out.head_n;
  if (with_order) PA_TRY(cuda::download(order, d.index.order, out.order_n * sizeof(int32_t)));
  PA_TRY(cuda::download(count, d.index.count, out.count_n * sizeof(int32_t)));
  PA_TRY(cuda::download(budget, d.index.budget, out.head_n * sizeof(int32_t)));
  PA_TRY(cuda::download(needed, d.index.needed, out.head_n * sizeof(int32_t)));
  PA_TRY(cuda::download(anchors, d.index.anchors, out.anchor_n * sizeof(int32_t)));
  out.order = with_order ? order : nullptr, out.count = count, out.budget = budget, out.needed = needed;
  out.anchors = anchors;
#endif
  return PA_STATUS_SUCCESS;
}

HostIndex host_index(const pa_plan& plan, const HostArrays& arrays) {
  return HostIndex{&plan.desc.batch, plan.desc.problem.num_q_heads, plan.desc.groups(), arrays.order,
                   arrays.count, arrays.anchors, plan.desc.config.anchor_blocks};
}

// The part of the index invariants that memory safety and the math rest on: counts in
// [0, m + 1], kept entries causal and unique. Forced blocks are pa_plan_check's business.
pa_status check_index_bounds(const PlanDesc& d, const int32_t* order, const int32_t* count) {
  const int hq = d.problem.num_q_heads, g = d.groups();
  std::vector<uint8_t> seen;
  for (size_t s = 0; s < d.batch.seqs.size(); ++s) {
    const SeqSpan& span = d.batch.seqs[s];
    seen.assign(span.num_kblocks(), 0);
    for (int j = 0; j < g; ++j)
      for (int m = span.first_qblock; m < span.num_kblocks(); ++m) {
        int32_t kept = 0;  // the longest prefix any head of the group keeps
        for (int h = j * (hq / g); h < (j + 1) * (hq / g); ++h) {
          const int32_t c = count[count_row(span, m) * hq + h];
          if (c < 0 || c > m + 1)
            return fail(PA_STATUS_INVALID_SHAPE, "index: seq %zu head %d row %d: count %d outside [0, %d]",
                        s, h, m, c, m + 1);
          kept = std::max(kept, c);
        }
        const int32_t* row = order + order_row(span, j, m);
        std::fill(seen.begin(), seen.begin() + m + 1, 0);
        for (int e = 0; e < kept; ++e) {
          if (row[e] < 0 || row[e] > m)
            return fail(PA_STATUS_INVALID_SHAPE, "index: seq %zu group %d row %d entry %d: block %d "
                        "outside [0, %d]", s, j, m, e, row[e], m);
          if (seen[row[e]])
            return fail(PA_STATUS_INVALID_SHAPE, "index: seq %zu group %d row %d: block %d kept twice",
                        s, j, m, row[e]);
          seen[row[e]] = 1;
        }
      }
  }
  return PA_STATUS_SUCCESS;
}

// Workspace of the backend that runs this plan.
size_t backend_workspace_bytes(const pa_plan& plan) {
#if PROXYATTN_WITH_CUDA
  if (plan.on_device) return cuda::estimate_workspace_bytes(plan.desc);
#endif
  return cpu::estimate_workspace_bytes(plan.desc);
}

pa_status backend_estimate(const pa_plan& plan, const pa_tensor& q, const pa_kv_cache& kv, void* workspace,
                           void* stream, const GivenBudgets* given) {
#if PROXYATTN_WITH_CUDA
  if (plan.on_device) return cuda::estimate(plan.desc, q, kv, workspace, stream, given);
#endif
  (void)stream;
  return cpu::estimate(plan.desc, q, kv, workspace, given);
}

pa_status backend_attend(const pa_plan& plan, const pa_tensor& q, const pa_kv_cache& kv, const pa_tensor& o,
                         float* lse, void* stream) {
#if PROXYATTN_WITH_CUDA
  if (plan.on_device) return cuda::attend(plan.desc, q, kv, o, lse, stream);
#endif
  (void)stream;
  return cpu::attend(plan.desc, q, kv, o, lse);
}

// Estimation after its arguments were checked.
pa_status run_estimate(pa_plan& plan, const pa_tensor& q, const pa_kv_cache& kv, void* workspace,
                       size_t workspace_bytes, void* stream, const GivenBudgets* given = nullptr) {
  const size_t needed = backend_workspace_bytes(plan);
  if (workspace == nullptr && needed > 0) return fail(PA_STATUS_NULL_POINTER, "workspace is NULL");
  if (workspace_bytes < needed)
    return fail(PA_STATUS_BUFFER_TOO_SMALL,
                "workspace_bytes = %zu: estimation needs %zu (pa_workspace_bytes)", workspace_bytes, needed);
  PA_TRY(backend_estimate(plan, q, kv, workspace, stream, given));
  plan.estimated = true;
  return PA_STATUS_SUCCESS;
}

// pa_workspace_bytes knows no memory space: enough for either backend.
size_t workspace_bytes_for(const PlanDesc& d) {
  size_t bytes = cpu::estimate_workspace_bytes(d);
#if PROXYATTN_WITH_CUDA
  bytes = std::max(bytes, cuda::estimate_workspace_bytes(d));
#endif
  return bytes;
}

}  // namespace

extern "C" {

const char* pa_status_string(pa_status status) {
  switch (raw_value(status)) {  // any int: unknown ones get PA_STATUS_UNKNOWN
    case PA_STATUS_SUCCESS: return "PA_STATUS_SUCCESS";
    case PA_STATUS_NULL_POINTER: return "PA_STATUS_NULL_POINTER";
    case PA_STATUS_INVALID_SHAPE: return "PA_STATUS_INVALID_SHAPE";
    case PA_STATUS_INVALID_CONFIG: return "PA_STATUS_INVALID_CONFIG";
    case PA_STATUS_INVALID_SEQLENS: return "PA_STATUS_INVALID_SEQLENS";
    case PA_STATUS_OVERFLOW: return "PA_STATUS_OVERFLOW";
    case PA_STATUS_UNSUPPORTED: return "PA_STATUS_UNSUPPORTED";
    case PA_STATUS_BUFFER_TOO_SMALL: return "PA_STATUS_BUFFER_TOO_SMALL";
    case PA_STATUS_PLAN_MISMATCH: return "PA_STATUS_PLAN_MISMATCH";
    case PA_STATUS_CUDA_ERROR: return "PA_STATUS_CUDA_ERROR";
    case PA_STATUS_INTERNAL: return "PA_STATUS_INTERNAL";
    case PA_STATUS_OUT_OF_MEMORY: return "PA_STATUS_OUT_OF_MEMORY";
    case PA_STATUS_MEMORY_SPACE: return "PA_STATUS_MEMORY_SPACE";
  }
  return "PA_STATUS_UNKNOWN";
}

const char* pa_last_error(void) { return last_error_message(); }

pa_tensor pa_tensor_contiguous(void* data, int32_t num_heads, int32_t head_dim) {
  pa_tensor t;
  t.data = data;
  t.head_stride = head_dim;
  t.token_stride = int64_t(num_heads) * head_dim;
  return t;
}

pa_config pa_config_default(int32_t head_dim) { return default_config(head_dim); }

pa_status pa_config_validate(const pa_config* config, const pa_problem* problem) {
  return guarded([&] {
    if (config == nullptr) return fail(PA_STATUS_NULL_POINTER, "config is NULL");
    if (problem != nullptr) PA_TRY(validate_problem(problem));
    return validate_config(*config, problem);
  });
}

pa_status pa_plan_bytes(const pa_problem* problem, const pa_config* config, size_t* bytes) {
  return guarded([&] {
    PA_TRY(validate_plan_inputs(problem, config));
    if (bytes == nullptr) return fail(PA_STATUS_NULL_POINTER, "bytes is NULL");
    *bytes = describe_plan(*problem, *config).storage.total_bytes;
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_workspace_bytes(const pa_problem* problem, const pa_config* config, size_t* bytes) {
  const pa_tuning defaults = default_tuning();
  return pa_workspace_bytes_tuned(problem, config, &defaults, bytes);
}

pa_status pa_workspace_bytes_tuned(const pa_problem* problem, const pa_config* config,
                                   const pa_tuning* tuning, size_t* bytes) {
  return guarded([&] {
    PA_TRY(validate_plan_inputs(problem, config));
    PA_TRY(check_tuning(tuning));
    if (bytes == nullptr) return fail(PA_STATUS_NULL_POINTER, "bytes is NULL");
    PlanDesc d = describe_plan(*problem, *config);
    d.tuning = *tuning;
    *bytes = workspace_bytes_for(d);
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_create(const pa_problem* problem, const pa_config* config, void* storage,
                         size_t storage_bytes, pa_plan** plan) {
  return guarded([&] {
    PA_TRY(validate_plan_inputs(problem, config));
    if (plan == nullptr) return fail(PA_STATUS_NULL_POINTER, "plan is NULL");
    const PlanDesc desc = describe_plan(*problem, *config);
    if (storage == nullptr) return fail(PA_STATUS_NULL_POINTER, "storage is NULL");
    if (storage_bytes < desc.storage.total_bytes)
      return fail(PA_STATUS_BUFFER_TOO_SMALL, "storage_bytes = %zu: the plan needs %zu (pa_plan_bytes)",
                  storage_bytes, desc.storage.total_bytes);
    const bool device = on_device(storage);
    PA_TRY(check_space(device, {}));
#if PROXYATTN_WITH_CUDA
    if (device) PA_TRY(cuda::check_attend_supported("pa_plan_create", desc));
#endif
    std::unique_ptr<pa_plan> p(new pa_plan());
    p->desc = desc;
    if (problem->cu_seqlens != nullptr) {
      p->cu_seqlens.assign(problem->cu_seqlens, problem->cu_seqlens + problem->num_seqs + 1);
      p->desc.problem.cu_seqlens = p->cu_seqlens.data();
    }
    if (problem->cu_seqlens_k != nullptr) {
      p->cu_seqlens_k.assign(problem->cu_seqlens_k, problem->cu_seqlens_k + problem->num_seqs + 1);
      p->desc.problem.cu_seqlens_k = p->cu_seqlens_k.data();
    }
    p->storage = storage;
    p->on_device = device;
    p->desc.index = bind_storage(storage, desc.storage);
    // The batch tables: written once here, read by every kernel.
    const BatchTables tables = batch_tables(desc.batch);
    const size_t seq_bytes = sizeof(SeqSpan) * tables.seqs.size();
    const size_t row_bytes = sizeof(int32_t) * tables.qblock_seq.size();
    const size_t key_bytes = sizeof(int32_t) * tables.kblock_seq.size();
    const size_t key_begin_bytes = sizeof(int64_t) * tables.kblock_begin.size();
    if (device) {
#if PROXYATTN_WITH_CUDA
      PA_TRY(cuda::upload(p->desc.index.seqs, tables.seqs.data(), seq_bytes));
      PA_TRY(cuda::upload(p->desc.index.qblock_seq, tables.qblock_seq.data(), row_bytes));
      PA_TRY(cuda::upload(p->desc.index.kblock_seq, tables.kblock_seq.data(), key_bytes));
      PA_TRY(cuda::upload(p->desc.index.kblock_begin, tables.kblock_begin.data(), key_begin_bytes));
#endif
    } else {
      std::memcpy(p->desc.index.seqs, tables.seqs.data(), seq_bytes);
      if (row_bytes > 0) std::memcpy(p->desc.index.qblock_seq, tables.qblock_seq.data(), row_bytes);
      if (key_bytes > 0) std::memcpy(p->desc.index.kblock_seq, tables.kblock_seq.data(), key_bytes);
      if (key_begin_bytes > 0) std::memcpy(p->desc.index.kblock_begin, tables.kblock_begin.data(), key_begin_bytes);
    }
    *plan = p.release();
    return PA_STATUS_SUCCESS;
  });
}

void pa_plan_free(pa_plan* plan) { delete plan; }

pa_status pa_plan_get_stats(const pa_plan* plan, pa_plan_stats* stats) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    if (stats == nullptr) return fail(PA_STATUS_NULL_POINTER, "stats is NULL");
    const PlanDesc& d = plan->desc;
    HostArrays arrays;
    PA_TRY(host_arrays(*plan, arrays));
    const HostIndex index = host_index(*plan, arrays);
    pa_plan_stats out{};
    for (size_t s = 0; s < d.batch.seqs.size(); ++s) {
      const SeqSpan& span = d.batch.seqs[s];
      if (d.runs_dense(span) && span.length > 0) ++out.dense_seqs;
      for (int h = 0; h < d.problem.num_q_heads; ++h) {
        const HeadTotals t = head_totals(index, int(s), h, d.config.block_size);
        out.kept_pairs += t.kept_blocks;
        out.kept_token_pairs += t.kept_tokens;
        out.causal_pairs += span.group_entries();
      }
    }
    out.density = out.causal_pairs > 0 ? double(out.kept_pairs) / double(out.causal_pairs) : 1.0;
    *stats = out;
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_get_config(const pa_plan* plan, pa_config* config) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    if (config == nullptr) return fail(PA_STATUS_NULL_POINTER, "config is NULL");
    *config = plan->desc.config;
    return PA_STATUS_SUCCESS;
  });
}

pa_tuning pa_tuning_default(void) { return default_tuning(); }

const char* pa_cpu_kernels(void) { return cpu::kernel_isa_name(cpu::kernel_isa()); }

pa_status pa_plan_set_tuning(pa_plan* plan, const pa_tuning* tuning) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    PA_TRY(check_tuning(tuning));
    plan->desc.tuning = *tuning;
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_get_tuning(const pa_plan* plan, pa_tuning* tuning) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    if (tuning == nullptr) return fail(PA_STATUS_NULL_POINTER, "tuning is NULL");
    *tuning = plan->desc.tuning;
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_get_heads(const pa_plan* plan, int32_t* budget_blocks, int32_t* needed_blocks,
                            double* density) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    const PlanDesc& d = plan->desc;
    const int hq = d.problem.num_q_heads;
    HostArrays arrays;
    PA_TRY(host_arrays(*plan, arrays, /*with_order=*/false));  // the counts say the density
    const HostIndex index = host_index(*plan, arrays);
    for (size_t s = 0; s < d.batch.seqs.size(); ++s)
      for (int h = 0; h < hq; ++h) {
        const size_t at = s * hq + h;
        if (budget_blocks) budget_blocks[at] = arrays.budget[at];
        if (needed_blocks) needed_blocks[at] = arrays.needed[at];
        if (density) {
          const int64_t causal = d.batch.seqs[s].group_entries();
          density[at] = causal > 0 ? double(head_kept_blocks(index, int(s), h)) / double(causal) : 1.0;
        }
      }
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_get_anchors(const pa_plan* plan, int32_t* anchors) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    const PlanDesc& d = plan->desc;
    const size_t n = size_t(d.problem.num_seqs) * d.problem.num_q_heads * d.config.anchor_blocks;
    if (anchors == nullptr && n > 0) return fail(PA_STATUS_NULL_POINTER, "anchors is NULL");
    if (plan->on_device) {  // only this array, not the whole index
#if PROXYATTN_WITH_CUDA
      return cuda::download(anchors, d.index.anchors, n * sizeof(int32_t));
#endif
    }
    std::copy(d.index.anchors, d.index.anchors + n, anchors);
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_get_layout(const pa_plan* plan, int64_t* total_qblocks, int64_t* order_entries) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    if (total_qblocks) *total_qblocks = plan->desc.batch.total_qblocks;
    if (order_entries) *order_entries = plan->desc.batch.order_entries;
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_get_index(const pa_plan* plan, int32_t* order, int32_t* count) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    HostArrays arrays;
    PA_TRY(host_arrays(*plan, arrays));
    if (order) std::copy(arrays.order, arrays.order + arrays.order_n, order);
    if (count) std::copy(arrays.count, arrays.count + arrays.count_n, count);
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_set_index(pa_plan* plan, const int32_t* order, const int32_t* count,
                            const int32_t* budget, const int32_t* needed) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    const PlanDesc& d = plan->desc;
    const size_t order_n = d.batch.order_entries, count_n = d.batch.total_qblocks * d.problem.num_q_heads;
    const size_t head_n = size_t(d.problem.num_seqs) * d.problem.num_q_heads;
    if (order == nullptr && order_n > 0) return fail(PA_STATUS_NULL_POINTER, "order is NULL");
    if (count == nullptr && count_n > 0) return fail(PA_STATUS_NULL_POINTER, "count is NULL");
    PA_TRY(check_index_bounds(d, order, count));
    const std::vector<int32_t> zeros(budget != nullptr && needed != nullptr ? 0 : head_n, 0);
    if (budget == nullptr) budget = zeros.data();
    if (needed == nullptr) needed = zeros.data();
    const std::vector<int32_t> no_anchors(head_n * d.config.anchor_blocks, -1);
    if (plan->on_device) {
#if PROXYATTN_WITH_CUDA
      PA_TRY(cuda::upload(d.index.order, order, order_n * sizeof(int32_t)));
      PA_TRY(cuda::upload(d.index.count, count, count_n * sizeof(int32_t)));
      PA_TRY(cuda::upload(d.index.budget, budget, head_n * sizeof(int32_t)));
      PA_TRY(cuda::upload(d.index.needed, needed, head_n * sizeof(int32_t)));
      PA_TRY(cuda::upload(d.index.anchors, no_anchors.data(), no_anchors.size() * sizeof(int32_t)));
#endif
    } else {
      std::copy(order, order + order_n, d.index.order);
      std::copy(count, count + count_n, d.index.count);
      std::copy(budget, budget + head_n, d.index.budget);
      std::copy(needed, needed + head_n, d.index.needed);
      std::copy(no_anchors.begin(), no_anchors.end(), d.index.anchors);
    }
    plan->estimated = true;
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_check(const pa_plan* plan) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    HostArrays arrays;
    PA_TRY(host_arrays(*plan, arrays));
    return check_index(host_index(*plan, arrays), plan->desc.config.force_sink,
                       plan->desc.config.force_local);
  });
}

pa_status pa_plan_to_flex(const pa_plan* plan, int32_t seq, int32_t* kv_num_blocks,
                          int32_t* kv_indices) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    if (seq < 0 || seq >= plan->desc.problem.num_seqs)
      return fail(PA_STATUS_INVALID_SHAPE, "seq = %d: must lie in [0, %d)", seq,
                  plan->desc.problem.num_seqs);
    if (kv_num_blocks == nullptr) return fail(PA_STATUS_NULL_POINTER, "kv_num_blocks is NULL");
    if (kv_indices == nullptr) return fail(PA_STATUS_NULL_POINTER, "kv_indices is NULL");
    HostArrays arrays;
    PA_TRY(host_arrays(*plan, arrays));
    to_flex(host_index(*plan, arrays), seq, kv_num_blocks, kv_indices);
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_estimate_kv(pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv, void* workspace,
                         size_t workspace_bytes, void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    PA_TRY(check_kv_call(*plan, q, kv, false, nullptr, nullptr, workspace));
    return run_estimate(*plan, *q, *kv, workspace, workspace_bytes, stream);
  });
}

pa_status pa_estimate_kv_given(pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv,
                               const pa_given_budgets* budgets, void* workspace, size_t workspace_bytes,
                               void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    if (budgets == nullptr) return fail(PA_STATUS_NULL_POINTER, "budgets is NULL");
    PA_TRY(check_kv_call(*plan, q, kv, false, nullptr, nullptr, workspace));
    GivenBudgets given;
    PA_TRY(expand_given_budgets(plan->desc, *budgets, &given));
    return run_estimate(*plan, *q, *kv, workspace, workspace_bytes, stream, &given);
  });
}

pa_status pa_attend_kv(const pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv, pa_tensor* o,
                       float* lse, void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    if (o == nullptr) return fail(PA_STATUS_NULL_POINTER, "o is NULL");
    PA_TRY(check_kv_call(*plan, q, kv, true, o, lse, nullptr));
    return backend_attend(*plan, *q, *kv, *o, lse, stream);
  });
}

pa_status pa_forward_kv(pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv, pa_tensor* o, float* lse,
                        void* workspace, size_t workspace_bytes, void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    if (o == nullptr) return fail(PA_STATUS_NULL_POINTER, "o is NULL");
    // Check everything attend will need before estimate writes the plan.
    PA_TRY(check_kv_call(*plan, q, kv, true, o, lse, workspace));
    PA_TRY(run_estimate(*plan, *q, *kv, workspace, workspace_bytes, stream));
    return backend_attend(*plan, *q, *kv, *o, lse, stream);
  });
}

pa_status pa_estimate(pa_plan* plan, const pa_tensor* q, const pa_tensor* k, void* workspace,
                      size_t workspace_bytes, void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    pa_kv_cache kv;
    PA_TRY(packed_kv(*plan, k, nullptr, "pa_estimate", &kv));
    PA_TRY(check_kv_call(*plan, q, &kv, false, nullptr, nullptr, workspace, true));
    return run_estimate(*plan, *q, kv, workspace, workspace_bytes, stream);
  });
}

pa_status pa_attend(const pa_plan* plan, const pa_tensor* q, const pa_tensor* k, const pa_tensor* v,
                    pa_tensor* o, float* lse, void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    pa_kv_cache kv;
    PA_TRY(packed_kv(*plan, k, v, "pa_attend", &kv));
    if (v == nullptr) return fail(PA_STATUS_NULL_POINTER, "v is NULL");
    if (o == nullptr) return fail(PA_STATUS_NULL_POINTER, "o is NULL");
    PA_TRY(check_kv_call(*plan, q, &kv, true, o, lse, nullptr, true));
    return backend_attend(*plan, *q, kv, *o, lse, stream);
  });
}

pa_status pa_forward(pa_plan* plan, const pa_tensor* q, const pa_tensor* k, const pa_tensor* v,
                     pa_tensor* o, float* lse, void* workspace, size_t workspace_bytes,
                     void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    pa_kv_cache kv;
    PA_TRY(packed_kv(*plan, k, v, "pa_forward", &kv));
    if (v == nullptr) return fail(PA_STATUS_NULL_POINTER, "v is NULL");
    if (o == nullptr) return fail(PA_STATUS_NULL_POINTER, "o is NULL");
    PA_TRY(check_kv_call(*plan, q, &kv, true, o, lse, workspace, true));
    PA_TRY(run_estimate(*plan, *q, kv, workspace, workspace_bytes, stream));
    return backend_attend(*plan, *q, kv, *o, lse, stream);
  });
}

pa_status pa_proxy_state_bytes(const pa_problem* problem, const pa_config* config, size_t* bytes) {
  return guarded([&] {
    PA_TRY(validate_plan_inputs(problem, config));
    if (bytes == nullptr) return fail(PA_STATUS_NULL_POINTER, "bytes is NULL");
    if (!is_paged(*problem))
      return fail(PA_STATUS_INVALID_SHAPE, "problem.page_size = 0: an estimation state lives beside a "
                  "paged cache");
    // A page of the state holds page_size / stride sampled positions.
    if (problem->page_size % config->stride != 0)
      return fail(PA_STATUS_UNSUPPORTED, "problem.page_size = %d: an estimation state needs pages of a "
                  "multiple of config.stride = %d tokens", problem->page_size, config->stride);
    // [num_pages, page_size / stride, 2, g, d] of dtype
    *bytes = size_t(problem->num_pages) * (problem->page_size / config->stride) * 2 *
             config->num_proxy_groups * problem->head_dim * dtype_bytes(problem->dtype);
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_proxy_state_make(const pa_problem* problem, const pa_config* config, void* data, size_t bytes,
                              pa_proxy_state* state) {
  return guarded([&] {
    size_t needed = 0;
    PA_TRY(pa_proxy_state_bytes(problem, config, &needed));
    if (state == nullptr) return fail(PA_STATUS_NULL_POINTER, "state is NULL");
    if (data == nullptr) return fail(PA_STATUS_NULL_POINTER, "data is NULL");
    if (bytes < needed)
      return fail(PA_STATUS_BUFFER_TOO_SMALL, "bytes = %zu: the state needs %zu (pa_proxy_state_bytes)",
                  bytes, needed);
    *state = pa_proxy_state{data, problem->num_pages, problem->page_size, config->stride,
                            config->num_proxy_groups, problem->head_dim, problem->dtype};
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_dense_attention(const pa_problem* problem, float softmax_scale, const pa_tensor* q,
                             const pa_tensor* k, const pa_tensor* v, pa_tensor* o, float* lse,
                             void* stream) {
  const pa_tuning defaults = default_tuning();
  return pa_dense_attention_tuned(problem, softmax_scale, &defaults, q, k, v, o, lse, stream);
}

pa_status pa_dense_attention_tuned(const pa_problem* problem, float softmax_scale,
                                   const pa_tuning* tuning, const pa_tensor* q, const pa_tensor* k,
                                   const pa_tensor* v, pa_tensor* o, float* lse, void* stream) {
  return guarded([&] {
    PA_TRY(validate_problem(problem));
    if (is_paged(*problem))
      return fail(PA_STATUS_UNSUPPORTED, "pa_dense_attention: problem.page_size = %d: dense attention "
                  "takes packed keys (a paged cache runs dense through pa_attend_kv with a dense plan)",
                  problem->page_size);
    if (!(softmax_scale > 0.0f) || !std::isfinite(softmax_scale))
      return fail(PA_STATUS_INVALID_CONFIG, "softmax_scale = %g: must be finite and > 0",
                  double(softmax_scale));
    PA_TRY(check_tuning(tuning));
    PA_TRY(check_attention_views(*problem, q, k, v, o, lse));
    const bool device = on_device(q->data);
    PA_TRY(check_space(device, {{"k", k->data}, {"v", v->data}, {"o", o->data}, {"lse", lse}}));
#if PROXYATTN_WITH_CUDA
    if (device) return cuda::dense_attention(*problem, softmax_scale, *tuning, *q, *k, *v, *o, lse, stream);
#endif
    return cpu::dense_attention(*problem, softmax_scale, *q, *k, *v, *o, lse);
  });
}

pa_status pa_set_num_threads(int32_t num_threads) {
  return guarded([&] {
    if (num_threads < 0)
      return fail(PA_STATUS_INVALID_CONFIG, "num_threads = %d: must be >= 0", num_threads);
    cpu::set_num_threads(num_threads);
    return PA_STATUS_SUCCESS;
  });
}

static pa_status check_conversion(const pa_dtype& dtype, const void* src, int64_t count, const void* dst) {
  const int32_t raw = raw_value(dtype);  // the caller's int, not yet a pa_dtype
  if (raw != PA_DTYPE_FLOAT32 && raw != PA_DTYPE_FLOAT16 && raw != PA_DTYPE_BFLOAT16)
    return fail(PA_STATUS_INVALID_SHAPE, "dtype = %d: not a pa_dtype", raw);
  if (count < 0) return fail(PA_STATUS_INVALID_SHAPE, "count = %lld: must be >= 0", (long long)count);
  if (count > 0 && src == nullptr) return fail(PA_STATUS_NULL_POINTER, "src is NULL");
  if (count > 0 && dst == nullptr) return fail(PA_STATUS_NULL_POINTER, "dst is NULL");
  return PA_STATUS_SUCCESS;
}

pa_status pa_to_float32(pa_dtype dtype, const void* src, int64_t count, float* dst) {
  return guarded([&] {
    PA_TRY(check_conversion(dtype, src, count, dst));
    const int bytes = dtype_bytes(dtype);
    for (int64_t i = 0; i < count; ++i)
      cpu::load_row(static_cast<const char*>(src) + i * bytes, dtype, 1, dst + i);
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_from_float32(pa_dtype dtype, const float* src, int64_t count, void* dst) {
  return guarded([&] {
    PA_TRY(check_conversion(dtype, src, count, dst));
    const int bytes = dtype_bytes(dtype);
    for (int64_t i = 0; i < count; ++i)
      cpu::store_row(src + i, dtype, 1, static_cast<char*>(dst) + i * bytes);
    return PA_STATUS_SUCCESS;
  });
}

pa_synth_params pa_synth_default(uint64_t seed) { return synth::default_params(seed); }

pa_status pa_synth_generate(const pa_problem* problem, const pa_synth_params* params, void* q,
                            void* k, void* v) {
  return guarded([&] {
    PA_TRY(validate_problem(problem));
    if (params == nullptr) return fail(PA_STATUS_NULL_POINTER, "params is NULL");
    if (problem->total_tokens > 0) {
      if (q == nullptr) return fail(PA_STATUS_NULL_POINTER, "q is NULL");
      if (k == nullptr) return fail(PA_STATUS_NULL_POINTER, "k is NULL");
      if (v == nullptr) return fail(PA_STATUS_NULL_POINTER, "v is NULL");
    }
    return synth::generate(*problem, *params, q, k, v);
  });
}

}  // extern "C"
