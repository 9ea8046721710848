// The stages of GPU estimation (ALGORITHM.md steps 2-6) as launchers: what each kernel
// reads and writes, and the batch geometry they share. estimate.cu runs them in order on
// the caller's stream:
//   pool_proxies    Q, K          -> proxy_q, proxy_k    (steps 2-3)
//   proxy_scores 1  proxies       -> row_stats           (step 4, softmax statistics per
//                                    [block_logits]       key chunk, then combined; with
//                                                         block logits also each row's
//                                                         largest logit per key block)
//   proxy_scores 2  proxies+stats -> scores (A)          (step 4, block maxima; from the
//                   [block_logits]                        block logits when there are)
//   budget_partials Q, K          -> budget_partials     (step 5, per key block)
//   budget_heads    partials      -> budget, needed,     (step 5, per head)
//                                    anchors
//   select          scores+budget -> order, count        (step 6)
//                   +anchors
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/block_index.hpp"
#include "core/problem.hpp"
#include "proxyattn/proxyattn.h"

namespace proxyattn::cuda::est {

// The batch as the kernels see it (device tables of the plan, config values).
struct Geometry {
  const SeqSpan* seqs;        // [num_seqs] device
  const int32_t* qblock_seq;  // [total_qblocks] device: sequence of each global block row
  int64_t total_qblocks;
  int32_t num_seqs;
  int32_t num_q_heads, num_kv_heads, groups;
  int32_t block;              // b: query and key block edge in tokens
  int32_t stride;             // s: sampled positions t % s == 0
  int32_t per_block;          // b / s: sampled positions per block (4..128, a power of 2)
  int32_t dense_below;        // sequences shorter than this run dense
  float scale_log2;           // softmax_scale * log2(e): logits in log2 units
  int32_t chunk_tiles;        // proxy scores: key tiles (64 sampled keys) per CTA at most
  int32_t chunks;             // proxy scores: chunks of the longest row (row_stats planes)

  __host__ __device__ int64_t sampled_rows() const { return total_qblocks * per_block; }
  __host__ __device__ bool dense(const SeqSpan& s) const { return s.length < dense_below; }
  __host__ __device__ int64_t sampled(const SeqSpan& s) const {
    return (int64_t(s.length) + stride - 1) / stride;
  }
};

// Caller workspace, carved by estimate.cu. Sampled rows use a padded layout: global query
// block gb owns rows [gb * per_block, (gb + 1) * per_block), so a sequence's sampled index
// i lives at row qblock_begin * per_block + i without a further table.
struct Workspace {
  void* proxy_q;            // T [g, sampled_rows, d]: mean of the group's Q heads
  void* proxy_k;            // T [g, sampled_rows, d]: mean of the group's KV heads
  float2* row_stats;        // [g, chunks, sampled_rows]: per key chunk (row max of log2
                            //   logits, sum of 2^(x - max))
  float* scores;            // [order_entries]: A[j][m][n] at the order layout's offsets
  float* block_logits;      // [order_entries, per_block] or null: entry (j, m, n) holds, for
                            //   each sampled row of block m, its largest raw logit in key
                            //   block n (proxy_scores.cu; null: pass 2 recomputes them)
  float2* budget_partials;  // [Hq, total_qblocks, b]: per (head, key block, last-block row)
                            //   (max of log2 logits, sum of 2^(x - max)) over the block's keys
};

// Input tensors as the kernels take them: data and strides in elements.
struct InputView {
  const void* data;
  int64_t token_stride, head_stride;
  bool vector_ok;  // 16-byte aligned base and strides: vector loads and cp.async allowed
};

// Sequences of the batch described for the launchers (host side).
struct Launch {
  Geometry geo;
  pa_dtype dtype;
  int head_dim;
  pa_config config;
  int32_t max_qblocks;         // largest Nqb of any sequence
  int32_t max_sparse_qblocks;  // largest Nqb of a sequence that is estimated (not dense)
  cudaStream_t stream;
};

pa_status launch_pool_proxies(const Launch& l, const InputView& q, const InputView& k,
                              const Workspace& ws);
// Whether the row pass can store block logits at this b / s (then pass 2 is skipped).
bool block_logits_supported(int32_t per_block);
pa_status launch_proxy_row_stats(const Launch& l, const Workspace& ws);
pa_status launch_proxy_block_max(const Launch& l, const Workspace& ws);
pa_status launch_budget_partials(const Launch& l, const InputView& q, const InputView& k,
                                 const Workspace& ws);
pa_status launch_budget_heads(const Launch& l, const Workspace& ws, int32_t* budget,
                              int32_t* needed, int32_t* anchors);
pa_status launch_select(const Launch& l, const Workspace& ws, const int32_t* budget,
                        const int32_t* needed, const int32_t* anchors, int32_t* order,
                        int32_t* count);

// Largest row (in blocks) the in-CTA sorts handle: 16384 blocks = 1M tokens at b = 64.
inline constexpr int32_t kMaxSortedBlocks = 16384;

}  // namespace proxyattn::cuda::est
