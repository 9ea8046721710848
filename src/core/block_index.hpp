// The block index: the seam between estimation and attention (docs/index_format.md).
//
//   order  int32 [order_entries]: for sequence s, group j, query-block row m, the key
//          blocks n <= m in rank order (forced blocks first), at
//          order_begin(s) + j * T(Nqb_s) + T(m), m + 1 entries.
//   count  int32 [total_qblocks, Hq]: head h keeps order row [0, count) of its group.
//   budget int32 [num_seqs, Hq]: K_i.   needed int32 [num_seqs, Hq]: count_i.
//   anchors int32 [num_seqs, Hq, T]: each head's anchor blocks (T = config.anchor_blocks,
//          -1 = none); a group's anchors n <= m are forced in its row m.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/problem.hpp"
#include "proxyattn/proxyattn.h"

namespace proxyattn {

// Pointers into plan storage (host or device memory). seqs, qblock_seq, kblock_seq and
// kblock_begin describe the batch for kernels (written once by pa_plan_create); the rest is
// written by estimation.
struct IndexArrays {
  int32_t* order = nullptr;       // [order_entries]
  int32_t* count = nullptr;       // [total_qblocks, Hq]
  int32_t* budget = nullptr;      // [num_seqs, Hq]
  int32_t* needed = nullptr;      // [num_seqs, Hq]
  int32_t* anchors = nullptr;     // [num_seqs, Hq, T]
  SeqSpan* seqs = nullptr;        // [num_seqs]
  int32_t* qblock_seq = nullptr;  // [total_qblocks]: sequence of each global query-block row
  // The GPU estimation's key arrays (BatchLayout::kblock_begin) when they have a layout of
  // their own (separate_keys); else kblock_seq is qblock_seq and kblock_begin null (a
  // sequence's first key block is its qblock_begin).
  int32_t* kblock_seq = nullptr;    // [total_kblocks]: sequence of each key block
  int64_t* kblock_begin = nullptr;  // [num_seqs]: first key block of each sequence
};

// Byte offsets of the arrays inside plan storage.
struct StorageLayout {
  size_t order_offset, count_offset, budget_offset, needed_offset, anchors_offset, seqs_offset,
      qblock_seq_offset, kblock_seq_offset, kblock_begin_offset;
  size_t total_bytes;
  bool separate_keys;  // the key tables exist (separate_keys(batch))
};

// The batch description part of plan storage, built on the host.
struct BatchTables {
  std::vector<SeqSpan> seqs;
  std::vector<int32_t> qblock_seq;
  std::vector<int32_t> kblock_seq;    // empty unless separate_keys(batch)
  std::vector<int64_t> kblock_begin;  // empty unless separate_keys(batch)
};

// Whether the GPU estimation's key arrays have a layout of their own: some sequence has key
// blocks before its first row (a chunk after block 0). Else they share the rows' layout
// and the plan holds no key tables.
inline bool separate_keys(const BatchLayout& batch) { return batch.total_kblocks != batch.total_qblocks; }
BatchTables batch_tables(const BatchLayout& batch);

inline constexpr size_t kStorageAlignment = 256;  // cudaMalloc's alignment, for vector loads

StorageLayout storage_layout(const BatchLayout& batch, int num_q_heads, int num_seqs,
                             int anchor_blocks);
IndexArrays bind_storage(void* storage, const StorageLayout& layout);

// Offset of order row m (absolute query block) of group j in sequence span.
PA_HOST_DEVICE inline int64_t order_row(const SeqSpan& span, int group, int m) {
  return span.order_begin + group * span.group_entries() + triangle(m) - triangle(span.first_qblock);
}

// Row of count [total_qblocks, Hq] of absolute query block m in sequence span.
PA_HOST_DEVICE inline int64_t count_row(const SeqSpan& span, int m) {
  return span.qblock_begin + m - span.first_qblock;
}

// Host view of a complete index, for checks, statistics and conversion.
struct HostIndex {
  const BatchLayout* batch;
  int num_q_heads;
  int num_groups;
  const int32_t* order;
  const int32_t* count;
  const int32_t* anchors = nullptr;  // [num_seqs, Hq, anchor_blocks]; nullptr: none
  int anchor_blocks = 0;
};

inline int group_of_head(int head, int num_q_heads, int num_groups) {
  return head / (num_q_heads / num_groups);
}

// Group j's anchors in sequence seq: heads_per_group * anchor_blocks entries.
PA_HOST_DEVICE inline const int32_t* group_anchors(const int32_t* anchors, int seq, int group, int num_q_heads,
                                    int num_groups, int anchor_blocks) {
  return anchors + (int64_t(seq) * num_q_heads + int64_t(group) * (num_q_heads / num_groups)) *
                       anchor_blocks;
}

// First violated invariant as PA_STATUS_INTERNAL with a message, else success.
pa_status check_index(const HostIndex& index, bool force_sink, bool force_local);

// Kept block pairs and kept causal token pairs of head h in one sequence.
struct HeadTotals {
  int64_t kept_blocks = 0;
  int64_t kept_tokens = 0;
};
HeadTotals head_totals(const HostIndex& index, int seq, int head, int block_size);

// The kept blocks of (seq, head), head_totals' kept_blocks from the counts alone (index.order
// is not read: it may be null).
int64_t head_kept_blocks(const HostIndex& index, int seq, int head);

// FlexAttention BlockMask form of sequence seq: kv_num_blocks [Hq, rows],
// kv_indices [Hq, rows, Nkb] (kept blocks ascending, then zeros); rows = num_qblocks, the
// query blocks first_qblock .. Nkb - 1.
void to_flex(const HostIndex& index, int seq, int32_t* kv_num_blocks, int32_t* kv_indices);

}  // namespace proxyattn
