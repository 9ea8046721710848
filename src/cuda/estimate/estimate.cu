// GPU estimation (ALGORITHM.md steps 2-6): validates what this backend supports, carves
// the caller's workspace and runs the stages of stages.cuh on the caller's stream. No host
// round trip and no synchronisation: the batch layout is known on the host from the plan,
// everything data-dependent stays on the device. Chunks, paged keys and the estimation
// state follow src/cpu/estimate.cpp (ALGORITHM.md, "Chunked prefill").
#include <algorithm>
#include <cmath>

#include "common/check.cuh"
#include "core/status.hpp"
#include "cuda/backend.hpp"
#include "estimate/stages.cuh"

namespace proxyattn::cuda {
namespace {

constexpr size_t kWorkspaceAlignment = 256;  // each array starts 256-byte aligned (vector loads)
constexpr size_t kProxyElementBytes = 2;     // proxies are stored as bf16 / fp16
constexpr float kLog2e = 1.4426950408889634f;

size_t align_up(size_t x) { return (x + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment; }

// Byte offsets of the workspace arrays (stages.cuh, Workspace); depends on the plan's shapes
// and tuning (est_block_logits) only. budget_kblocks == block_logits: no block logits (pass 2
// runs).
// Rows by query block (proxy_q, row_stats), keys by key block (proxy_k, budget_partials):
// the same sizes for whole prompts, a chunk's prefix blocks more for the keys.
struct WorkspaceLayout {
  size_t proxy_q, proxy_k, row_stats, scores, budget_partials, block_logits, budget_kblocks, total;
};

// Block logits (one float per sampled row and entry of A) replace pass 2 where b / s allows
// and they take at most this much memory; past it (e.g. 256K tokens with g = 8: 2 GiB) the
// two-pass path keeps the workspace small. tuning.est_block_logits = 0 forces the two passes
// (tests and benchmarks run both paths at the default config); the workspace size follows it
// (pa_workspace_bytes_tuned).
constexpr size_t kMaxBlockLogitsBytes = size_t(1) << 30;

size_t block_logits_bytes(const PlanDesc& plan) {
  const int32_t per_block = plan.config.block_size / plan.config.stride;
  if (!plan.tuning.est_block_logits || !est::block_logits_supported(per_block)) return 0;
  const size_t bytes = size_t(plan.batch.order_entries) * size_t(per_block) * sizeof(float);
  return bytes <= kMaxBlockLogitsBytes ? bytes : 0;
}

// Key chunks of the proxy scores (stages.cuh, Geometry): the longest row's 64-key tiles
// cut into at most kMaxChunks chunks of at least kMinChunkTiles tiles. Speed settings: short
// chunks balance the causal rows over the SMs; the floor keeps a CTA's fixed costs small.
constexpr int64_t kProxyKeyTile = 64;  // proxy_scores.cu's kTileKeys
constexpr int64_t kMinChunkTiles = 16;
constexpr int64_t kMaxChunks = 64;

struct Chunking {
  int32_t chunk_tiles, chunks;
};

Chunking chunking(const PlanDesc& plan) {
  const int64_t ns = (int64_t(plan.batch.max_kv_length) + plan.config.stride - 1) / plan.config.stride;
  const int64_t tiles = std::max<int64_t>(1, (ns + kProxyKeyTile - 1) / kProxyKeyTile);
  const int64_t chunk_tiles = std::max(kMinChunkTiles, (tiles + kMaxChunks - 1) / kMaxChunks);
  return Chunking{int32_t(chunk_tiles), int32_t((tiles + chunk_tiles - 1) / chunk_tiles)};
}

WorkspaceLayout workspace_layout(const PlanDesc& plan) {
  const int64_t per_block = plan.config.block_size / plan.config.stride;
  const size_t sampled_rows = size_t(plan.batch.total_qblocks) * size_t(per_block);
  const size_t key_rows = size_t(plan.batch.total_kblocks) * size_t(per_block);
  const size_t groups = size_t(plan.groups());
  WorkspaceLayout w{};
  w.proxy_q = 0;
  w.proxy_k = align_up(w.proxy_q + groups * sampled_rows * plan.problem.head_dim * kProxyElementBytes);
  w.row_stats = align_up(w.proxy_k + groups * key_rows * plan.problem.head_dim * kProxyElementBytes);
  w.scores = align_up(w.row_stats + groups * size_t(chunking(plan).chunks) * sampled_rows * sizeof(float2));
  w.budget_partials = align_up(w.scores + size_t(plan.batch.order_entries) * sizeof(float));
  w.block_logits = align_up(w.budget_partials + size_t(plan.config.budget_rows) *
                                                    size_t(plan.problem.num_q_heads) *
                                                    size_t(plan.batch.total_kblocks) *
                                                    size_t(plan.config.block_size) * sizeof(float2));
  w.budget_kblocks = align_up(w.block_logits + block_logits_bytes(plan));
  w.total = align_up(w.budget_kblocks + size_t(plan.problem.num_seqs) * sizeof(int32_t));
  return w;
}

// Step 5's given results into the plan's arrays and the whole sequences' key blocks into the
// workspace; the host vectors are the caller's locals, so the copies complete before return.
pa_status upload_given(const PlanDesc& plan, const GivenBudgets& given, void* kblocks, cudaStream_t stream) {
  const auto copy = [&](void* dst, const std::vector<int32_t>& src) -> pa_status {
    if (src.empty()) return PA_STATUS_SUCCESS;
    PA_CUDA_TRY(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    return PA_STATUS_SUCCESS;
  };
  PA_TRY(copy(plan.index.budget, given.budget));
  PA_TRY(copy(plan.index.needed, given.needed));
  PA_TRY(copy(plan.index.anchors, given.anchors));
  if (plan.batch.total_qblocks > 0) PA_TRY(copy(kblocks, given.num_kblocks));  // else no workspace
  PA_CUDA_TRY(cudaStreamSynchronize(stream));
  return PA_STATUS_SUCCESS;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

est::InputView input_view(const pa_tensor& t) {
  constexpr int64_t kVecElems = 8;  // 16 bytes of 2-byte elements
  const bool aligned = aligned16(t.data) && t.token_stride % kVecElems == 0 && t.head_stride % kVecElems == 0;
  return est::InputView{t.data, t.token_stride, t.head_stride, aligned};
}

est::KeyView key_view(const PlanDesc& plan, const pa_kv_cache& kv) {
  return est::KeyView{input_view(kv.k), kv.block_table, plan.problem.page_size, plan.problem.max_pages_per_seq};
}

est::StateView state_view(const pa_kv_cache& kv) {
  if (kv.proxy_state == nullptr) return est::StateView{nullptr, false};
  return est::StateView{kv.proxy_state->data, aligned16(kv.proxy_state->data)};
}

int log2_of(int32_t power_of_two) {
  int n = 0;
  while ((int32_t(1) << n) < power_of_two) ++n;
  return n;
}

}  // namespace

size_t estimate_workspace_bytes(const PlanDesc& plan) {
  if (plan.batch.total_qblocks == 0) return 0;
  return workspace_layout(plan).total;
}

pa_status estimate(const PlanDesc& plan, const pa_tensor& q, const pa_kv_cache& kv, void* workspace,
                   void* stream, const GivenBudgets* given) {
  const pa_problem& p = plan.problem;
  const pa_config& c = plan.config;
  if (p.dtype != PA_DTYPE_BFLOAT16 && p.dtype != PA_DTYPE_FLOAT16)
    return fail(PA_STATUS_UNSUPPORTED,
                "pa_estimate: dtype %s on the GPU: the CUDA estimation takes bfloat16 or float16 "
                "tensors (convert Q and K, or estimate on the CPU)", dtype_name(p.dtype));
  if (p.head_dim != 64 && p.head_dim != 128)
    return fail(PA_STATUS_UNSUPPORTED,
                "pa_estimate: problem.head_dim = %d: the CUDA estimation supports 64 and 128",
                p.head_dim);

  est::Launch l{};
  l.dtype = p.dtype;
  l.head_dim = p.head_dim;
  l.config = c;
  l.stream = static_cast<cudaStream_t>(stream);
  const bool state = kv.proxy_state != nullptr;
  l.general = plan.batch.chunked || plan.paged() || state;
  // Every sequence with queries writes its own positions to the state (dense ones too: a
  // later chunk reads them).
  const bool state_writes = state && plan.batch.total_qblocks > 0;
  bool any_sparse = false;
  for (size_t s = 0; s < plan.batch.seqs.size(); ++s) {
    const SeqSpan& span = plan.batch.seqs[s];
    if (span.num_qblocks == 0) continue;  // no row, no key read, no state written
    if (span.num_kblocks() > est::kMaxSortedBlocks)
      return fail(PA_STATUS_UNSUPPORTED,
                  "pa_estimate: sequence %zu has %d keys = %d blocks of %d; the CUDA estimation "
                  "sorts at most %d blocks per row", s, span.kv_length, span.num_kblocks(),
                  c.block_size, est::kMaxSortedBlocks);
    l.max_row_blocks = std::max(l.max_row_blocks, span.num_kblocks());
    if (given != nullptr || !plan.runs_dense(span)) {
      any_sparse = true;
      l.max_sparse_kblocks = std::max(l.max_sparse_kblocks, span.num_kblocks());
      l.prefix_keys = l.prefix_keys || span.first_qblock > 0;
    }
  }

  est::Geometry& g = l.geo;
  g.seqs = plan.index.seqs;
  g.qblock_seq = plan.index.qblock_seq;
  g.kblock_seq = plan.index.kblock_seq;
  g.kblock_begin = plan.index.kblock_begin;
  g.total_qblocks = plan.batch.total_qblocks;
  g.total_kblocks = plan.batch.total_kblocks;
  g.num_seqs = p.num_seqs;
  g.num_q_heads = p.num_q_heads;
  g.num_kv_heads = p.num_kv_heads;
  g.groups = plan.groups();
  g.block = c.block_size;
  g.stride = c.stride;
  g.stride_log2 = log2_of(c.stride);
  g.per_block = c.block_size / c.stride;
  g.dense_below = given != nullptr ? 0 : c.dense_below;  // given: every sequence sparse
  g.scale_log2 = c.softmax_scale * kLog2e;
  const Chunking ch = chunking(plan);
  g.chunk_tiles = ch.chunk_tiles;
  g.chunks = ch.chunks;
  g.state = state;
  g.budget_rows = c.budget_rows;

  const WorkspaceLayout w = workspace_layout(plan);
  char* base = static_cast<char*>(workspace);
  est::Workspace ws{};
  if (plan.batch.total_qblocks > 0) {
    ws.proxy_q = base + w.proxy_q;
    ws.proxy_k = base + w.proxy_k;
    ws.row_stats = reinterpret_cast<float2*>(base + w.row_stats);
    ws.scores = reinterpret_cast<float*>(base + w.scores);
    ws.budget_partials = reinterpret_cast<float2*>(base + w.budget_partials);
    if (w.budget_kblocks > w.block_logits) ws.block_logits = reinterpret_cast<float*>(base + w.block_logits);
  }
  const est::InputView qv = input_view(q);
  const est::KeyView keys = key_view(plan, kv);
  const est::StateView sv = state_view(kv);

  // A starts at 0 (dense sequences' rows stay so; pass 2 reduces with atomicMax from 0);
  // then steps 2-3 (and the state), step 4 and the budget partials.
  if (any_sparse)
    PA_CUDA_TRY(cudaMemsetAsync(ws.scores, 0, size_t(plan.batch.order_entries) * sizeof(float), l.stream));
  if (any_sparse || state_writes) PA_TRY(est::launch_pool_proxies(l, qv, keys, sv, ws));
  if (any_sparse) {
    PA_TRY(est::launch_proxy_row_stats(l, ws));
    PA_TRY(est::launch_proxy_block_max(l, ws));
    if (given == nullptr) PA_TRY(est::launch_budget_partials(l, qv, keys, ws));
  }
  // Budgets of every sequence (dense and empty ones too), or the caller's; then the shared
  // orderings.
  if (given != nullptr) {
    PA_TRY(upload_given(plan, *given, base + w.budget_kblocks, l.stream));
    g.budget_kblocks = reinterpret_cast<const int32_t*>(base + w.budget_kblocks);
  } else {
    PA_TRY(est::launch_budget_heads(l, ws, plan.index.budget, plan.index.needed, plan.index.anchors));
  }
  if (plan.batch.total_qblocks > 0)
    PA_TRY(est::launch_select(l, ws, plan.index.budget, plan.index.needed, plan.index.anchors,
                              plan.index.order, plan.index.count));
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cuda
