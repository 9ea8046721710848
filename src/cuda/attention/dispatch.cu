// GPU attention entry points (cuda/backend.hpp): checks what the kernels support, fills the
// kernel parameters from the plan (or, for dense attention, from the problem) and the
// tuning (core/tuning.hpp), picks the kernel for the device (sm90 on compute capability 9.0,
// sm80 elsewhere) and the compiled variant for the runtime dtype and head_dim, and launches
// the work list on the caller's stream, kMaxSeqsPerLaunch sequences per launch. Never
// synchronises.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention/params.hpp"
#include "common/check.cuh"
#include "common/device.cuh"
#include "common/heads.hpp"
#include "core/problem.hpp"
#include "core/status.hpp"
#include "cuda/backend.hpp"

namespace proxyattn::cuda {
namespace {

using attention::CtaShape;
using attention::Packing;
using attention::Params;

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMinComputeMajor = 8;   // mma.sync bf16, cp.async, ldmatrix: sm_80
constexpr int kHopperMajor = 9, kHopperMinor = 0;  // the sm_90a machine code of the sm90 kernel
constexpr int kVectorBytes = 16;      // the kernels move rows in 16-byte vectors
// Row and key positions are int in the kernel and run up to a block (<= 128) plus a tile
// past the sequence end.
constexpr int kPositionSlack = 256;

// A launch's item order has at least this many chunks (params.hpp), so that its last chunk,
// whose last KV head runs that chunk's longest rows at the very end, holds at most an eighth
// of the rows: a short tail where SMs could idle.
inline constexpr int kMinChunksPerLaunch = 8;

// How the rows of a launch are chunked (params.hpp): `fill` rows, the chunk whose one KV
// head's items about fill the GPU (shape.chunk_ctas_per_sm CTAs per SM; 0 where the kernel
// keeps one row per chunk), capped per launch at kMinChunksPerLaunch chunks.
// tuning.attn_rows_per_chunk = n > 0 fixes the rows per chunk instead (1: row-major order, to
// measure what the chunks bring; applies to both kernels).
struct ChunkRule {
  int32_t fill = 0;   // 0: one row per chunk
  int32_t fixed = 0;  // > 0: tuning.attn_rows_per_chunk
  int32_t rows_per_chunk(int32_t num_rows) const {
    if (fixed > 0) return fixed;
    if (fill == 0) return 1;
    return std::max(1, std::min(fill, (num_rows + kMinChunksPerLaunch - 1) / kMinChunksPerLaunch));
  }
};

pa_status chunk_rule(const CtaShape& shape, int slots_per_row, int32_t rows_per_chunk, ChunkRule* rule) {
  *rule = ChunkRule{};
  if (rows_per_chunk > 0) {
    rule->fixed = rows_per_chunk;
    return PA_STATUS_SUCCESS;
  }
  if (shape.chunk_ctas_per_sm == 0) return PA_STATUS_SUCCESS;
  int sms = 0;
  PA_TRY(current_sm_count(&sms));
  const int resident = shape.chunk_ctas_per_sm * sms;
  rule->fill = std::max(1, (resident + slots_per_row - 1) / slots_per_row);
  return PA_STATUS_SUCCESS;
}

// Which kernel runs. Both compute the same function (within rounding); sm90 is the fast one
// on Hopper. tuning.attn_kernel = PA_TUNING_KERNEL_SM80 forces the mma.sync kernel everywhere
// (comparisons, a fallback); PA_TUNING_KERNEL_AUTO leaves the choice to the device.
enum class Kernel { kSm80, kSm90 };

// Checks the device and picks the kernel for it, the problem's token and key rows and the
// tuning. The sm90 kernel copies K and V in boxes of sm90::kKeyBoxRows keys and finds a
// page by a shift, so a paged cache of other pages (16, 32, not a power of 2) runs the sm80
// kernel, which looks up each row.
pa_status select_kernel(const char* call, const pa_problem& p, const pa_tuning& tuning, Kernel* kernel) {
  int device = 0, major = 0, minor = 0;
  PA_CUDA_TRY(cudaGetDevice(&device));
  PA_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  PA_CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major < kMinComputeMajor)
    return fail(PA_STATUS_UNSUPPORTED, "%s: the GPU attention needs compute capability %d.0 or newer; "
                "device %d is %d.%d", call, kMinComputeMajor, device, major, minor);
  const bool hopper = major == kHopperMajor && minor == kHopperMinor;
  const bool tma_coordinates_fit = std::max(p.total_tokens, kv_rows(p)) <= INT32_MAX - attention::kTmaSlack;
  const bool power_of_2 = (p.page_size & (p.page_size - 1)) == 0;
  const bool boxes_fit_pages = p.page_size == 0 || (p.page_size % attention::sm90::kKeyBoxRows == 0 && power_of_2);
  const bool sm80_forced = tuning.attn_kernel == PA_TUNING_KERNEL_SM80;
  *kernel = hopper && tma_coordinates_fit && boxes_fit_pages && !sm80_forced ? Kernel::kSm90 : Kernel::kSm80;
  return PA_STATUS_SUCCESS;
}

pa_status check_view(const char* call, const char* name, const pa_tensor& t, int element_bytes) {
  const int64_t vector_elements = kVectorBytes / element_bytes;
  if (reinterpret_cast<uintptr_t>(t.data) % kVectorBytes != 0 || t.token_stride % vector_elements != 0 ||
      t.head_stride % vector_elements != 0)
    return fail(PA_STATUS_UNSUPPORTED,
                "%s: %s must be %d-byte aligned with token_stride and head_stride multiples of %lld "
                "elements on the GPU (data %p, token_stride %lld, head_stride %lld)",
                call, name, kVectorBytes, (long long)vector_elements, t.data, (long long)t.token_stride,
                (long long)t.head_stride);
  return PA_STATUS_SUCCESS;
}

// What the kernels support of a problem, beyond what the API has validated.
pa_status check_problem(const char* call, const pa_problem& p, int32_t max_length) {
  if (p.dtype == PA_DTYPE_FLOAT32)
    return fail(PA_STATUS_UNSUPPORTED, "%s: float32 tensors are not supported by the GPU attention "
                "(bfloat16 and float16 are); convert them, or pass host tensors to run on the CPU", call);
  if (p.dtype != PA_DTYPE_BFLOAT16 && p.dtype != PA_DTYPE_FLOAT16)
    return fail(PA_STATUS_UNSUPPORTED, "%s: dtype = %d is not supported on the GPU", call, int(p.dtype));
  if (p.head_dim != 64 && p.head_dim != 128)
    return fail(PA_STATUS_UNSUPPORTED, "%s: head_dim = %d: the GPU attention supports 64 and 128", call,
                p.head_dim);
  if (max_length > INT32_MAX - kPositionSlack)
    return fail(PA_STATUS_OVERFLOW, "%s: a sequence of %d tokens is too long for the GPU attention", call,
                max_length);
  return PA_STATUS_SUCCESS;
}

// The tensors' alignment (after check_problem has accepted the dtype).
pa_status check_views(const char* call, pa_dtype dtype, const pa_tensor& q, const pa_tensor& k, const pa_tensor& v,
                      const pa_tensor& o) {
  const int bytes = dtype_bytes(dtype);
  PA_TRY(check_view(call, "q", q, bytes));
  PA_TRY(check_view(call, "k", k, bytes));
  PA_TRY(check_view(call, "v", v, bytes));
  return check_view(call, "o", o, bytes);
}

using Launcher = pa_status (*)(const Params&, int64_t, const pa_tuning&, void*);

// The compiled variant and the CTA shape of its work list.
struct Variant {
  Launcher launch;
  CtaShape shape;
};

Variant select_variant(Kernel kernel, pa_dtype dtype, int head_dim) {
  using attention::run_sm80;
  using attention::run_sm90;
  const bool bf16 = dtype == PA_DTYPE_BFLOAT16, d64 = head_dim == 64;
  if (kernel == Kernel::kSm90) {
    const Launcher launch = bf16 ? (d64 ? &run_sm90<PA_DTYPE_BFLOAT16, 64> : &run_sm90<PA_DTYPE_BFLOAT16, 128>)
                                 : (d64 ? &run_sm90<PA_DTYPE_FLOAT16, 64> : &run_sm90<PA_DTYPE_FLOAT16, 128>);
    return {launch, attention::sm90_shape(head_dim)};
  }
  const Launcher launch = bf16 ? (d64 ? &run_sm80<PA_DTYPE_BFLOAT16, 64> : &run_sm80<PA_DTYPE_BFLOAT16, 128>)
                               : (d64 ? &run_sm80<PA_DTYPE_FLOAT16, 64> : &run_sm80<PA_DTYPE_FLOAT16, 128>);
  return {launch, attention::kSm80Shape};
}

Params base_params(const pa_problem& p, const pa_tensor& q, const pa_kv_cache& kv, const pa_tensor& o,
                   float* lse, float scale, const pa_tuning& tuning) {
  Params params{};
  params.q = {q.data, q.token_stride, q.head_stride};
  params.k = {kv.k.data, kv.k.token_stride, kv.k.head_stride};
  params.v = {kv.v.data, kv.v.token_stride, kv.v.head_stride};
  params.o = {o.data, o.token_stride, o.head_stride};
  params.lse = lse;
  params.total_tokens = p.total_tokens;
  params.total_kv_rows = kv_rows(p);
  params.block_table = kv.block_table;
  params.page_size = p.page_size;
  params.page_shift = p.page_size > 0 ? __builtin_ctz(unsigned(p.page_size)) : 0;
  params.max_pages_per_seq = p.max_pages_per_seq;
  params.num_q_heads = p.num_q_heads;
  params.num_kv_heads = p.num_kv_heads;
  params.scale_log2 = scale * kLog2e;
  params.packing = tuning.attn_packing == PA_TUNING_PACKING_HEADS_OF_CHUNK ? Packing::kHeadsOfChunk
                                                                           : Packing::kChunksOfHead;
  params.consumer_turns = tuning.attn_consumer_turns;
  params.rank_heads = tuning.attn_rank_heads;
  return params;
}

// Launches the work list of every non-empty sequence, at most kMaxSeqsPerLaunch a launch.
pa_status launch_batch(Params params, const std::vector<SeqSpan>& seqs, const Variant& variant,
                       const pa_tuning& tuning, void* stream) {
  const int heads_per_kv = q_heads_per_kv(params);
  const int pairs_per_row = heads_per_kv * (params.block_size / variant.shape.pair_rows);
  params.slots_per_row = (pairs_per_row + variant.shape.pairs_per_cta - 1) / variant.shape.pairs_per_cta;
  ChunkRule chunks;
  PA_TRY(chunk_rule(variant.shape, params.slots_per_row, tuning.attn_rows_per_chunk, &chunks));
  size_t next = 0;
  while (next < seqs.size()) {
    params.num_seqs = 0;
    int64_t rows = 0;
    for (; next < seqs.size() && params.num_seqs < attention::kMaxSeqsPerLaunch; ++next) {
      if (seqs[next].num_qblocks == 0) continue;
      if (params.num_seqs == 0) params.row_begin = seqs[next].qblock_begin;
      params.seqs[params.num_seqs++] = seqs[next];
      rows += seqs[next].num_qblocks;
    }
    if (params.num_seqs == 0) break;
    const int64_t grid = rows * params.num_kv_heads * params.slots_per_row;
    if (grid > INT32_MAX)
      return fail(PA_STATUS_OVERFLOW, "GPU attention: %lld CTAs in one launch exceed the grid limit",
                  (long long)grid);
    params.num_rows = int32_t(rows);
    params.rows_per_chunk = chunks.rows_per_chunk(params.num_rows);
    PA_TRY(variant.launch(params, grid, tuning, stream));
  }
  return PA_STATUS_SUCCESS;
}

}  // namespace

pa_status check_attend_supported(const char* call, const PlanDesc& plan) {
  PA_TRY(check_problem(call, plan.problem, std::max(plan.batch.max_length, plan.batch.max_kv_length)));
  if (plan.config.block_size != 64 && plan.config.block_size != 128)
    return fail(PA_STATUS_UNSUPPORTED, "%s: block_size = %d: the GPU attention supports 64 and 128", call,
                plan.config.block_size);
  return PA_STATUS_SUCCESS;
}

pa_status attend(const PlanDesc& plan, const pa_tensor& q, const pa_kv_cache& kv, const pa_tensor& o,
                 float* lse, void* stream) {
  const pa_problem& p = plan.problem;
  PA_TRY(check_attend_supported("pa_attend", plan));
  PA_TRY(check_views("pa_attend", p.dtype, q, kv.k, kv.v, o));
  Kernel kernel;
  PA_TRY(select_kernel("pa_attend", p, plan.tuning, &kernel));
  if (p.total_tokens == 0) return PA_STATUS_SUCCESS;
  Params params = base_params(p, q, kv, o, lse, plan.config.softmax_scale, plan.tuning);
  params.q_heads_per_group = plan.q_heads_per_group();
  params.block_size = plan.config.block_size;
  params.order = plan.index.order;
  params.count = plan.index.count;
  return launch_batch(params, plan.batch.seqs, select_variant(kernel, p.dtype, p.head_dim), plan.tuning, stream);
}

pa_status dense_attention(const pa_problem& problem, float scale, const pa_tuning& tuning, const pa_tensor& q,
                          const pa_tensor& k, const pa_tensor& v, const pa_tensor& o, float* lse, void* stream) {
  // The dense work list: every causal block of kDenseBlock, one proxy group.
  const BatchLayout batch = make_batch_layout(problem, attention::kDenseBlock, 1);
  PA_TRY(check_problem("pa_dense_attention", problem, std::max(batch.max_length, batch.max_kv_length)));
  PA_TRY(check_views("pa_dense_attention", problem.dtype, q, k, v, o));
  Kernel kernel;
  PA_TRY(select_kernel("pa_dense_attention", problem, tuning, &kernel));
  if (problem.total_tokens == 0) return PA_STATUS_SUCCESS;
  const pa_kv_cache kv{k, v, nullptr, nullptr};  // packed keys (the API refuses paged problems here)
  Params params = base_params(problem, q, kv, o, lse, scale, tuning);
  params.q_heads_per_group = problem.num_q_heads;
  params.block_size = attention::kDenseBlock;
  params.order = nullptr;  // dense: row m keeps blocks 0..m
  params.count = nullptr;
  return launch_batch(params, batch.seqs, select_variant(kernel, problem.dtype, problem.head_dim), tuning, stream);
}

}  // namespace proxyattn::cuda
