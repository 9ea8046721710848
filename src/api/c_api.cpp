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
#include "core/plan.hpp"
#include "core/problem.hpp"
#include "core/status.hpp"
#include "cpu/backend.hpp"
#include "cpu/elements.hpp"
#include "cpu/parallel.hpp"
#include "proxyattn/proxyattn.h"
#include "synth/structured_input.hpp"
#if PROXYATTN_WITH_CUDA
#include "cuda/backend.hpp"
#endif

using namespace proxyattn;

struct pa_plan {
  PlanDesc desc;
  std::vector<int32_t> cu_seqlens;  // the handle's copy of problem.cu_seqlens
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

PlanDesc describe(const pa_problem& problem, const pa_config& config) {
  PlanDesc d;
  d.problem = problem;
  d.config = resolve_config(config, problem);
  d.batch = make_batch_layout(problem, config.block_size, config.num_proxy_groups);
  d.storage = storage_layout(d.batch, problem.num_q_heads, problem.num_seqs, d.config.anchor_blocks);
  return d;
}

pa_status check_plan(const pa_plan* plan, bool needs_estimate) {
  if (plan == nullptr) return fail(PA_STATUS_NULL_POINTER, "plan is NULL");
  if (needs_estimate && !plan->estimated)
    return fail(PA_STATUS_PLAN_MISMATCH, "plan has not been estimated yet (call pa_estimate first)");
  return PA_STATUS_SUCCESS;
}

// A view validated (validate_tensor) and aligned to its elements: the backends read and
// write whole elements through typed pointers (the GPU asks for more, cuda::check_views).
pa_status check_view(const pa_tensor* t, const char* name, const pa_problem& p, int heads) {
  PA_TRY(validate_tensor(t, name, p, heads));
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

// The views of an attention call: Q, K, V, O checked, and the outputs (O, LSE [Hq, T] float32)
// overlapping no input nor each other: O over K or V (or shifted over Q) races with the work
// items still reading them, so any overlap, exact in-place O = Q included, is refused.
pa_status check_attention_views(const pa_problem& p, const pa_tensor* q, const pa_tensor* k,
                                const pa_tensor* v, const pa_tensor* o, const float* lse) {
  PA_TRY(check_view(q, "q", p, p.num_q_heads));
  PA_TRY(check_view(k, "k", p, p.num_kv_heads));
  PA_TRY(check_view(v, "v", p, p.num_kv_heads));
  PA_TRY(check_view(o, "o", p, p.num_q_heads));
  if (reinterpret_cast<uintptr_t>(lse) % sizeof(float) != 0)
    return fail(PA_STATUS_INVALID_SHAPE, "lse = %p is not aligned to its 4-byte float32 elements",
                static_cast<const void*>(lse));
  const int bytes = dtype_bytes(p.dtype);
  const int64_t t = p.total_tokens, d = p.head_dim;
  auto of = [&](const pa_tensor* x, int heads) {
    return extent_of(x->data, t, heads, x->token_stride, x->head_stride, d, bytes);
  };
  const std::pair<const char*, Extent> inputs[] = {
      {"q", of(q, p.num_q_heads)}, {"k", of(k, p.num_kv_heads)}, {"v", of(v, p.num_kv_heads)}};
  const Extent out = of(o, p.num_q_heads);
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

// The index as host memory: a host plan's own arrays, read in place, or one downloaded copy
// of a device plan's arrays.
struct HostArrays {
  const int32_t* order = nullptr;   // [order_entries]
  const int32_t* count = nullptr;   // [total_qblocks, Hq]
  const int32_t* budget = nullptr;  // [num_seqs, Hq]
  const int32_t* needed = nullptr;  // [num_seqs, Hq]
  const int32_t* anchors = nullptr;  // [num_seqs, Hq, T]
  size_t order_n = 0, count_n = 0, head_n = 0, anchor_n = 0;
  std::vector<int32_t> downloaded;  // backs the pointers for a device plan
};

pa_status host_arrays(const pa_plan& plan, HostArrays& out) {
  const PlanDesc& d = plan.desc;
  out.order_n = d.batch.order_entries;
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
  PA_TRY(cuda::download(order, d.index.order, out.order_n * sizeof(int32_t)));
  PA_TRY(cuda::download(count, d.index.count, out.count_n * sizeof(int32_t)));
  PA_TRY(cuda::download(budget, d.index.budget, out.head_n * sizeof(int32_t)));
  PA_TRY(cuda::download(needed, d.index.needed, out.head_n * sizeof(int32_t)));
  PA_TRY(cuda::download(anchors, d.index.anchors, out.anchor_n * sizeof(int32_t)));
  out.order = order, out.count = count, out.budget = budget, out.needed = needed;
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
    seen.assign(span.num_qblocks, 0);
    for (int j = 0; j < g; ++j)
      for (int m = 0; m < span.num_qblocks; ++m) {
        int32_t kept = 0;  // the longest prefix any head of the group keeps
        for (int h = j * (hq / g); h < (j + 1) * (hq / g); ++h) {
          const int32_t c = count[(span.qblock_begin + m) * hq + h];
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

pa_status backend_estimate(const pa_plan& plan, const pa_tensor& q, const pa_tensor& k, void* workspace,
                           void* stream) {
#if PROXYATTN_WITH_CUDA
  if (plan.on_device) return cuda::estimate(plan.desc, q, k, workspace, stream);
#endif
  return cpu::estimate(plan.desc, q, k, workspace);
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
  switch (status) {
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
    *bytes = describe(*problem, *config).storage.total_bytes;
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_workspace_bytes(const pa_problem* problem, const pa_config* config, size_t* bytes) {
  return guarded([&] {
    PA_TRY(validate_plan_inputs(problem, config));
    if (bytes == nullptr) return fail(PA_STATUS_NULL_POINTER, "bytes is NULL");
    *bytes = workspace_bytes_for(describe(*problem, *config));
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_plan_create(const pa_problem* problem, const pa_config* config, void* storage,
                         size_t storage_bytes, pa_plan** plan) {
  return guarded([&] {
    PA_TRY(validate_plan_inputs(problem, config));
    if (plan == nullptr) return fail(PA_STATUS_NULL_POINTER, "plan is NULL");
    const PlanDesc desc = describe(*problem, *config);
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
    p->storage = storage;
    p->on_device = device;
    p->desc.index = bind_storage(storage, desc.storage);
    // The batch tables: written once here, read by every kernel.
    const BatchTables tables = batch_tables(desc.batch);
    const size_t seq_bytes = sizeof(SeqSpan) * tables.seqs.size();
    const size_t row_bytes = sizeof(int32_t) * tables.qblock_seq.size();
    if (device) {
#if PROXYATTN_WITH_CUDA
      PA_TRY(cuda::upload(p->desc.index.seqs, tables.seqs.data(), seq_bytes));
      PA_TRY(cuda::upload(p->desc.index.qblock_seq, tables.qblock_seq.data(), row_bytes));
#endif
    } else {
      std::memcpy(p->desc.index.seqs, tables.seqs.data(), seq_bytes);
      if (row_bytes > 0) std::memcpy(p->desc.index.qblock_seq, tables.qblock_seq.data(), row_bytes);
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
        out.causal_pairs += triangle(span.num_qblocks);
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

pa_status pa_plan_get_heads(const pa_plan* plan, int32_t* budget_blocks, int32_t* needed_blocks,
                            double* density) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    const PlanDesc& d = plan->desc;
    const int hq = d.problem.num_q_heads;
    HostArrays arrays;
    PA_TRY(host_arrays(*plan, arrays));
    const HostIndex index = host_index(*plan, arrays);
    for (size_t s = 0; s < d.batch.seqs.size(); ++s)
      for (int h = 0; h < hq; ++h) {
        const size_t at = s * hq + h;
        if (budget_blocks) budget_blocks[at] = arrays.budget[at];
        if (needed_blocks) needed_blocks[at] = arrays.needed[at];
        if (density) {
          const int64_t causal = triangle(d.batch.seqs[s].num_qblocks);
          density[at] = causal > 0
              ? double(head_totals(index, int(s), h, d.config.block_size).kept_blocks) / double(causal)
              : 1.0;
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

pa_status pa_estimate(pa_plan* plan, const pa_tensor* q, const pa_tensor* k, void* workspace,
                      size_t workspace_bytes, void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    const PlanDesc& d = plan->desc;
    PA_TRY(check_view(q, "q", d.problem, d.problem.num_q_heads));
    PA_TRY(check_view(k, "k", d.problem, d.problem.num_kv_heads));
    PA_TRY(check_space(plan->on_device, {{"q", q->data}, {"k", k->data}, {"workspace", workspace}}));
    const size_t needed = backend_workspace_bytes(*plan);
    if (workspace == nullptr && needed > 0) return fail(PA_STATUS_NULL_POINTER, "workspace is NULL");
    if (workspace_bytes < needed)
      return fail(PA_STATUS_BUFFER_TOO_SMALL,
                  "workspace_bytes = %zu: estimation needs %zu (pa_workspace_bytes)", workspace_bytes,
                  needed);
    PA_TRY(backend_estimate(*plan, *q, *k, workspace, stream));
    plan->estimated = true;
    return PA_STATUS_SUCCESS;
  });
}

pa_status pa_attend(const pa_plan* plan, const pa_tensor* q, const pa_tensor* k, const pa_tensor* v,
                    pa_tensor* o, float* lse, void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, true));
    const PlanDesc& d = plan->desc;
    PA_TRY(check_attention_views(d.problem, q, k, v, o, lse));
    PA_TRY(check_space(plan->on_device,
                       {{"q", q->data}, {"k", k->data}, {"v", v->data}, {"o", o->data}, {"lse", lse}}));
#if PROXYATTN_WITH_CUDA
    if (plan->on_device) return cuda::attend(d, *q, *k, *v, *o, lse, stream);
#endif
    return cpu::attend(d, *q, *k, *v, *o, lse);
  });
}

pa_status pa_forward(pa_plan* plan, const pa_tensor* q, const pa_tensor* k, const pa_tensor* v,
                     pa_tensor* o, float* lse, void* workspace, size_t workspace_bytes,
                     void* stream) {
  return guarded([&] {
    PA_TRY(check_plan(plan, false));
    const PlanDesc& d = plan->desc;
    // Check everything attend will need before estimate writes the plan.
    PA_TRY(check_attention_views(d.problem, q, k, v, o, lse));
    PA_TRY(check_space(plan->on_device,
                       {{"q", q->data}, {"k", k->data}, {"v", v->data}, {"o", o->data}, {"lse", lse}}));
    PA_TRY(pa_estimate(plan, q, k, workspace, workspace_bytes, stream));
    return pa_attend(plan, q, k, v, o, lse, stream);
  });
}

pa_status pa_dense_attention(const pa_problem* problem, float softmax_scale, const pa_tensor* q,
                             const pa_tensor* k, const pa_tensor* v, pa_tensor* o, float* lse,
                             void* stream) {
  return guarded([&] {
    PA_TRY(validate_problem(problem));
    if (!(softmax_scale > 0.0f) || !std::isfinite(softmax_scale))
      return fail(PA_STATUS_INVALID_CONFIG, "softmax_scale = %g: must be finite and > 0",
                  double(softmax_scale));
    PA_TRY(check_attention_views(*problem, q, k, v, o, lse));
    const bool device = on_device(q->data);
    PA_TRY(check_space(device, {{"k", k->data}, {"v", v->data}, {"o", o->data}, {"lse", lse}}));
#if PROXYATTN_WITH_CUDA
    if (device) return cuda::dense_attention(*problem, softmax_scale, *q, *k, *v, *o, lse, stream);
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

static pa_status check_conversion(pa_dtype dtype, const void* src, int64_t count, const void* dst) {
  if (dtype != PA_DTYPE_FLOAT32 && dtype != PA_DTYPE_FLOAT16 && dtype != PA_DTYPE_BFLOAT16)
    return fail(PA_STATUS_INVALID_SHAPE, "dtype = %d: not a pa_dtype", int(dtype));
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
