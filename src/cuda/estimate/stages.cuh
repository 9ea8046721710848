// The stages of GPU estimation (ALGORITHM.md steps 2-6) as launchers: what each kernel
// reads and writes, and the batch geometry they share. estimate.cu runs them in order on
// the caller's stream:
//   pool_proxies    Q, K, state   -> proxy_q, proxy_k,   (steps 2-3; the state written at
//                                    state                the call's own positions)
//   pool_prefix_keys K or state   -> proxy_k             (steps 2-3: keys before a chunk's
//                                                         first row; chunked batches only)
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
// Positions are absolute in a sequence (ALGORITHM.md, "Chunked prefill"): a chunk's rows
// are query blocks first_qblock .. num_kblocks - 1, its keys positions [0, kv_length).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/block_index.hpp"
#include "core/budget.hpp"
#include "core/problem.hpp"
#include "proxyattn/proxyattn.h"

namespace proxyattn::cuda::est {

// The batch as the kernels see it (device tables of the plan, config values).
struct Geometry {
  const SeqSpan* seqs;        // [num_seqs] device
  const int32_t* qblock_seq;  // [total_qblocks] device: sequence of each global block row
  const int32_t* kblock_seq;  // [total_kblocks] device: sequence of each key block of the key
                              //   arrays (qblock_seq when no chunk starts after block 0)
  const int64_t* kblock_begin;  // [num_seqs] device: first key block of each sequence; null
                                //   when no chunk starts after block 0 (then qblock_begin)
  int64_t total_qblocks;
  int64_t total_kblocks;
  int32_t num_seqs;
  int32_t num_q_heads, num_kv_heads, groups;
  int32_t block;              // b: query and key block edge in tokens
  int32_t stride;             // s: sampled positions t % s == 0
  int32_t stride_log2;        // s = 2^stride_log2
  int32_t per_block;          // b / s: sampled positions per block (4..128, a power of 2)
  int32_t dense_below;        // sequences with fewer keys than this run dense
  float scale_log2;           // softmax_scale * log2(e): logits in log2 units
  int32_t chunk_tiles;        // proxy scores: key tiles (64 sampled keys) per CTA at most
  int32_t chunks;             // proxy scores: chunks of the longest row (row_stats planes)
  bool state;                 // an estimation state holds the prefix's proxies
  int32_t budget_rows;        // R: step 5's query blocks per sequence (budget_row)
  const int32_t* budget_kblocks;  // [num_seqs] whole sequences' key blocks when step 5 is given
                                  //   (the proportional N_b), else null: each span's own

  __host__ __device__ int64_t sampled_rows() const { return total_qblocks * per_block; }
  __host__ __device__ int64_t key_rows() const { return total_kblocks * per_block; }
  // PlanDesc::runs_dense (kGeneral = false: whole prompts, where no chunk is short).
  template <bool kGeneral = true>
  __host__ __device__ bool dense(const SeqSpan& s) const {
    return s.kv_length < dense_below || (kGeneral && s.short_chunk(block));
  }
  // Sampled keys of the sequence, ceil(kv_len / s); its sampled query rows end there too.
  __host__ __device__ int64_t sampled(const SeqSpan& s) const {
    return (int64_t(s.kv_length) + stride - 1) / stride;
  }
  // First sampled position of the call's own queries, ceil(query_offset / s).
  __host__ __device__ int32_t own_begin(const SeqSpan& s) const {
    return int32_t((s.query_offset() + stride - 1) >> stride_log2);
  }
  // First sampled query row that the scores use: the start of the first row's block when a
  // state holds the earlier queries of a partial first block, else the call's first own.
  __host__ __device__ int32_t query_begin(const SeqSpan& s) const {
    return state ? s.first_qblock * per_block : own_begin(s);
  }
  // First key block of sequence seq in the key arrays.
  __device__ int64_t key_block0(const SeqSpan& s, int seq) const {
    return kblock_begin != nullptr ? kblock_begin[seq] : s.qblock_begin;
  }
  // Query block of step 5's row j (0..R-1) of a sequence, or -1 where the row is not
  // measured: a repeat of row j - 1, or a block the call does not hold whole (a chunk's
  // earlier blocks; the last block is always measured), as src/cpu/estimate.cpp.
  __host__ __device__ int32_t budget_row(const SeqSpan& s, int j) const {
    const int32_t nkb = s.num_kblocks();
    const int32_t qb = proxyattn::budget_row(nkb, budget_rows, j + 1);
    if (j > 0 && qb == proxyattn::budget_row(nkb, budget_rows, j)) return -1;
    if (qb != nkb - 1 && int64_t(qb) * block < s.query_offset()) return -1;
    return qb;
  }
  // Padded row (of sampled_rows) of a sequence's sampled index 0: negative offsets are never
  // read, the rows held start at first_qblock * per_block.
  __host__ __device__ int64_t row_base(const SeqSpan& s) const {
    return (s.qblock_begin - s.first_qblock) * per_block;
  }
};

// Caller workspace, carved by estimate.cu. Sampled rows use a padded layout: global query
// block gb owns rows [gb * per_block, (gb + 1) * per_block), so a sequence's sampled index
// i (absolute, i >= first_qblock * per_block) lives at row row_base + i without a further
// table. Keys likewise by key block: a sequence's sampled key i at key_block0 * per_block
// + i, for every i < sampled() (the prefix of a chunk included; for whole prompts the two
// layouts coincide).
struct Workspace {
  void* proxy_q;            // T [g, sampled_rows, d]: mean of the group's Q heads
  void* proxy_k;            // T [g, key_rows, d]: mean of the group's KV heads
  float2* row_stats;        // [g, chunks, sampled_rows]: per key chunk (row max of log2
                            //   logits, sum of 2^(x - max))
  float* scores;            // [order_entries]: A[j][m][n] at the order layout's offsets
  float* block_logits;      // [order_entries, per_block] or null: entry (j, m, n) holds, for
                            //   each sampled row of block m, its largest raw logit in key
                            //   block n (proxy_scores.cu; null: pass 2 recomputes them)
  float2* budget_partials;  // [R, Hq, total_kblocks, b]: per (step 5 row j, head, key block,
                            //   row of j's query block) (max of log2 logits, sum of
                            //   2^(x - max)) over the block's keys
};

// Input tensors as the kernels take them: data and strides in elements.
struct InputView {
  const void* data;
  int64_t token_stride, head_stride;
  bool vector_ok;  // 16-byte aligned base and strides: vector loads and cp.async allowed
};

// The keys: K rows of sequence seq's position pos, packed from span.kv_begin or through the
// block table of a paged cache (core/problem.hpp, kv_row).
struct KeyView {
  InputView k;
  const int32_t* block_table;  // [num_seqs, max_pages] device; null: packed
  int32_t page_size, max_pages;

  __device__ int64_t row(const SeqSpan& span, int seq, int64_t pos) const {
    return kv_row(span, seq, pos, block_table, page_size, max_pages);
  }
};

// The caller's estimation state (pa_proxy_state) [num_pages, page_size / s, 2, g, d] in the
// input type: the proxy key (plane 0) and query (plane 1) of every sampled position, paged
// like the cache (src/cpu/estimate.cpp, Sources::state_row).
struct StateView {
  void* data;      // null: no state
  bool vector_ok;  // 16-byte aligned: vector loads and stores

  // Element offset of (sequence seq, sampled position pos, plane, group j); d elements.
  __device__ int64_t row(const KeyView& kv, const Geometry& geo, int seq, int64_t pos, int plane,
                         int j, int d) const {
    const int64_t page = kv.block_table[int64_t(seq) * kv.max_pages + pos / kv.page_size];
    const int64_t slot = page * (kv.page_size / geo.stride) + (pos % kv.page_size) / geo.stride;
    return ((slot * 2 + plane) * geo.groups + j) * d;
  }
};

// Sequences of the batch described for the launchers (host side).
struct Launch {
  Geometry geo;
  pa_dtype dtype;
  int head_dim;
  pa_config config;
  int32_t max_row_blocks;      // longest order row of any sequence (its num_kblocks)
  int32_t max_sparse_kblocks;  // most key blocks of a sequence that is estimated (not dense)
  // Some sequence's queries start at an offset, the keys are paged or there is a state: the
  // general instantiations of the pooling, proxy score and budget partial kernels (whole
  // prompts keep the plain ones, where the chunk's terms fold away).
  bool general;
  bool prefix_keys;            // some estimated sequence has keys before its first row
  cudaStream_t stream;
};

// pool_proxies, then pool_prefix_keys when l.prefix_keys.
pa_status launch_pool_proxies(const Launch& l, const InputView& q, const KeyView& k,
                              const StateView& state, const Workspace& ws);
// Whether the row pass can store block logits at this b / s (then pass 2 is skipped).
bool block_logits_supported(int32_t per_block);
pa_status launch_proxy_row_stats(const Launch& l, const Workspace& ws);
pa_status launch_proxy_block_max(const Launch& l, const Workspace& ws);
pa_status launch_budget_partials(const Launch& l, const InputView& q, const KeyView& k,
                                 const Workspace& ws);
pa_status launch_budget_heads(const Launch& l, const Workspace& ws, int32_t* budget,
                              int32_t* needed, int32_t* anchors);
pa_status launch_select(const Launch& l, const Workspace& ws, const int32_t* budget,
                        const int32_t* needed, const int32_t* anchors, int32_t* order,
                        int32_t* count);

// Largest row (in blocks) the in-CTA sorts handle: 16384 blocks = 1M tokens at b = 64.
inline constexpr int32_t kMaxSortedBlocks = 16384;

}  // namespace proxyattn::cuda::est
