// Device helpers both attention kernels use to decode their work item (params.hpp).
#pragma once

#include <cstdint>

#include "attention/params.hpp"
#include "common/heads.hpp"
#include "core/block_index.hpp"

namespace proxyattn::cuda::attention {

// The sequence of global query-block row `row`: the last of the launch's (non-empty)
// sequences that starts at or before it.
__device__ __forceinline__ int find_seq(const Params& p, int64_t row) {
  int lo = 0, hi = p.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.seqs[mid].qblock_begin <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// What one compute unit of a CTA (a warp of the sm80 kernel, a consumer warpgroup of the
// sm90 kernel) computes: kUnitRows query rows of one Q head.
struct UnitWork {
  bool active = false;  // has a (head, chunk) pair with at least one of the call's queries
  int head = 0;         // Q head
  int row0 = 0;         // first query row, an absolute position of the sequence
  int last_row = -1;    // last valid query row (inclusive)
  int count = 0;        // kept blocks of this head in this row: the prefix of the order row
};

// The pair numbering's heads in their own order: the local head at place `place` of a KV
// group is head `place`.
struct HeadsInOrder {
  __device__ __forceinline__ int operator()(int place) const { return place; }
};

// Unit `unit` of slot `slot` of work item (row m, KV head): the pair numbering of
// params.hpp (Packing) over kUnitsPerCta units of kUnitRows rows each; head_at maps a place
// in the numbering to a local head of the KV group (a permutation).
template <int kUnitRows, int kUnitsPerCta, typename HeadAt = HeadsInOrder>
__device__ __forceinline__ UnitWork unit_work(const Params& p, const SeqSpan& span, int m, int kv_head,
                                              int slot, int unit, const HeadAt& head_at = HeadAt{}) {
  UnitWork w;
  const int heads_per_kv = q_heads_per_kv(p);
  const int chunks = p.block_size / kUnitRows;
  const int pair = slot * kUnitsPerCta + unit;
  if (pair >= heads_per_kv * chunks) return w;
  const bool head_major = p.packing == Packing::kChunksOfHead;
  const int head_local = head_at(head_major ? pair / chunks : pair % heads_per_kv);
  const int chunk = head_major ? pair % chunks : pair / heads_per_kv;
  w.head = kv_head * heads_per_kv + head_local;
  w.row0 = m * p.block_size + chunk * kUnitRows;
  if (w.row0 >= span.kv_length || w.row0 + kUnitRows <= span.query_offset()) return w;
  w.active = true;
  w.last_row = min(w.row0 + kUnitRows, span.kv_length) - 1;
  // Dense: every causal block. Sparse: the head's count, clamped to [0, m + 1] so that a
  // corrupt index cannot send the CTA outside the row.
  const int kept = p.order == nullptr ? m + 1 : __ldg(p.count + count_row(span, m) * p.num_q_heads + w.head);
  w.count = max(0, min(kept, m + 1));
  return w;
}

// Absolute query-block row of global row `row` of the batch.
__device__ __forceinline__ int block_row(const SeqSpan& span, int64_t row) {
  return span.first_qblock + int(row - span.qblock_begin);
}

// Token of query position pos in Q, O and LSE: the sequence's queries are its last positions.
__device__ __forceinline__ int64_t query_token(const SeqSpan& span, int pos) {
  return span.token_begin - span.query_offset() + pos;
}

// Whether query position pos is one of the call's queries (earlier rows of a chunk's partial
// first block, and rows past the sequence, are neither loaded nor stored).
__device__ __forceinline__ bool own_query(const SeqSpan& span, int pos) {
  return pos >= span.query_offset() && pos < span.kv_length;
}

// Row of K and V holding key position pos: packed from kv_begin, or through the block table.
__device__ __forceinline__ int64_t key_token(const Params& p, const SeqSpan& span, int pos) {
  return kv_row(span, span.index, pos, p.block_table, p.page_size, p.max_pages_per_seq);
}

// The order row of work item (row m of `span`, KV head): the row of the proxy group that
// the KV head's Q heads share (params.hpp); null when dense (block n at rank n).
__device__ __forceinline__ const int32_t* item_order_row(const Params& p, const SeqSpan& span, int m,
                                                         int kv_head) {
  const int group = kv_head * q_heads_per_kv(p) / p.q_heads_per_group;
  return p.order == nullptr ? nullptr : p.order + order_row(span, group, m);
}

}  // namespace proxyattn::cuda::attention
