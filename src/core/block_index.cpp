#include "core/block_index.hpp"

#include <algorithm>
#include <vector>

#include "core/budget.hpp"
#include "core/status.hpp"

namespace proxyattn {

static size_t align_up(size_t x) { return (x + kStorageAlignment - 1) / kStorageAlignment * kStorageAlignment; }

StorageLayout storage_layout(const BatchLayout& batch, int num_q_heads, int num_seqs,
                             int anchor_blocks) {
  StorageLayout s{};
  s.order_offset = 0;
  s.count_offset = align_up(s.order_offset + sizeof(int32_t) * batch.order_entries);
  s.budget_offset = align_up(s.count_offset + sizeof(int32_t) * batch.total_qblocks * num_q_heads);
  s.needed_offset = align_up(s.budget_offset + sizeof(int32_t) * num_seqs * num_q_heads);
  s.anchors_offset = align_up(s.needed_offset + sizeof(int32_t) * num_seqs * num_q_heads);
  s.seqs_offset =
      align_up(s.anchors_offset + sizeof(int32_t) * size_t(num_seqs) * num_q_heads * anchor_blocks);
  s.qblock_seq_offset = align_up(s.seqs_offset + sizeof(SeqSpan) * num_seqs);
  const size_t qblock_seq_end = s.qblock_seq_offset + sizeof(int32_t) * batch.total_qblocks;
  s.separate_keys = separate_keys(batch);
  if (!s.separate_keys) {  // kblock_seq is qblock_seq, no kblock_begin: no bytes of their own
    s.kblock_seq_offset = s.kblock_begin_offset = s.qblock_seq_offset;
    s.total_bytes = align_up(qblock_seq_end);
    return s;
  }
  s.kblock_seq_offset = align_up(qblock_seq_end);
  s.kblock_begin_offset = align_up(s.kblock_seq_offset + sizeof(int32_t) * batch.total_kblocks);
  s.total_bytes = align_up(s.kblock_begin_offset + sizeof(int64_t) * num_seqs);
  return s;
}

BatchTables batch_tables(const BatchLayout& batch) {
  BatchTables t;
  t.seqs = batch.seqs;
  t.qblock_seq.reserve(batch.total_qblocks);
  for (size_t s = 0; s < batch.seqs.size(); ++s)
    t.qblock_seq.insert(t.qblock_seq.end(), batch.seqs[s].num_qblocks, int32_t(s));
  if (!separate_keys(batch)) return t;
  t.kblock_begin = batch.kblock_begin;
  t.kblock_seq.reserve(batch.total_kblocks);
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const int64_t end = s + 1 < batch.seqs.size() ? batch.kblock_begin[s + 1] : batch.total_kblocks;
    t.kblock_seq.insert(t.kblock_seq.end(), end - batch.kblock_begin[s], int32_t(s));
  }
  return t;
}

IndexArrays bind_storage(void* storage, const StorageLayout& layout) {
  char* base = static_cast<char*>(storage);
  IndexArrays a;
  a.order = reinterpret_cast<int32_t*>(base + layout.order_offset);
  a.count = reinterpret_cast<int32_t*>(base + layout.count_offset);
  a.budget = reinterpret_cast<int32_t*>(base + layout.budget_offset);
  a.needed = reinterpret_cast<int32_t*>(base + layout.needed_offset);
  a.anchors = reinterpret_cast<int32_t*>(base + layout.anchors_offset);
  a.seqs = reinterpret_cast<SeqSpan*>(base + layout.seqs_offset);
  a.qblock_seq = reinterpret_cast<int32_t*>(base + layout.qblock_seq_offset);
  a.kblock_seq = reinterpret_cast<int32_t*>(base + layout.kblock_seq_offset);
  if (layout.separate_keys) a.kblock_begin = reinterpret_cast<int64_t*>(base + layout.kblock_begin_offset);
  return a;
}

pa_status check_index(const HostIndex& index, bool force_sink, bool force_local) {
  const BatchLayout& batch = *index.batch;
  std::vector<uint8_t> seen;
  std::vector<int32_t> forced;
  const int per_group = index.num_q_heads / index.num_groups;
  const int anchor_count = index.anchors != nullptr ? per_group * index.anchor_blocks : 0;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const SeqSpan& span = batch.seqs[s];
    seen.assign(span.num_kblocks(), 0);
    for (int j = 0; j < index.num_groups; ++j) {
      const int32_t* anchors =
          anchor_count > 0 ? group_anchors(index.anchors, int(s), j, index.num_q_heads,
                                           index.num_groups, index.anchor_blocks)
                           : nullptr;
      for (int m = span.first_qblock; m < span.num_kblocks(); ++m) {
        // The row's forced blocks are the group's: one list for all its heads.
        row_forced(m, force_sink, force_local, anchors, anchor_count, forced);
        const int32_t lowest = std::max<int32_t>(1, int32_t(forced.size()));
        const int32_t* row = index.order + order_row(span, j, m);
        for (int h = j * per_group; h < (j + 1) * per_group; ++h) {
          const int32_t c = index.count[count_row(span, m) * index.num_q_heads + h];
          if (c < lowest || c > m + 1)
            return fail(PA_STATUS_INTERNAL, "index: seq %zu head %d row %d: count %d outside [%d, %d]",
                        s, h, m, c, lowest, m + 1);
          std::fill(seen.begin(), seen.begin() + m + 1, 0);
          for (int e = 0; e < c; ++e) {
            const int32_t n = row[e];
            if (n < 0 || n > m)
              return fail(PA_STATUS_INTERNAL, "index: seq %zu group %d row %d entry %d: block %d is "
                          "not causal (must lie in [0, %d])", s, j, m, e, n, m);
            if (seen[n])
              return fail(PA_STATUS_INTERNAL, "index: seq %zu group %d row %d: block %d kept twice",
                          s, j, m, n);
            seen[n] = 1;
          }
          for (int32_t n : forced) {
            if (seen[n]) continue;
            const char* kind = n == 0 && force_sink ? "sink" : n == m && force_local ? "diagonal" : "anchor";
            return fail(PA_STATUS_INTERNAL, "index: seq %zu head %d row %d: forced block %d (%s) missing",
                        s, h, m, n, kind);
          }
        }
      }
    }
  }
  return PA_STATUS_SUCCESS;
}

HeadTotals head_totals(const HostIndex& index, int seq, int head, int block_size) {
  const SeqSpan& span = index.batch->seqs[seq];
  const int j = group_of_head(head, index.num_q_heads, index.num_groups);
  HeadTotals t;
  for (int m = span.first_qblock; m < span.num_kblocks(); ++m) {
    const int32_t c = index.count[count_row(span, m) * index.num_q_heads + head];
    const int32_t* row = index.order + order_row(span, j, m);
    // The call's queries of block m: positions [q_begin, q_end).
    const int64_t q_begin = std::max<int64_t>(int64_t(m) * block_size, span.query_offset());
    const int64_t q_end = std::min<int64_t>(int64_t(m + 1) * block_size, span.kv_length);
    t.kept_blocks += c;
    for (int e = 0; e < c; ++e) {
      const int64_t k_begin = int64_t(row[e]) * block_size;
      const int64_t k_end = std::min<int64_t>(k_begin + block_size, span.kv_length);
      if (row[e] < m) {
        t.kept_tokens += (q_end - q_begin) * (k_end - k_begin);
      } else {  // diagonal block: query t sees keys k_begin..t
        t.kept_tokens += triangle(q_end - k_begin) - triangle(q_begin - k_begin);
      }
    }
  }
  return t;
}

int64_t head_kept_blocks(const HostIndex& index, int seq, int head) {
  const SeqSpan& span = index.batch->seqs[seq];
  int64_t kept = 0;
  for (int m = span.first_qblock; m < span.num_kblocks(); ++m)
    kept += index.count[count_row(span, m) * index.num_q_heads + head];
  return kept;
}

void to_flex(const HostIndex& index, int seq, int32_t* kv_num_blocks, int32_t* kv_indices) {
  const SeqSpan& span = index.batch->seqs[seq];
  const int64_t rows = span.num_qblocks, nkb = span.num_kblocks();
  for (int h = 0; h < index.num_q_heads; ++h) {
    const int j = group_of_head(h, index.num_q_heads, index.num_groups);
    for (int r = 0; r < rows; ++r) {
      const int m = span.first_qblock + r;
      const int32_t c = index.count[count_row(span, m) * index.num_q_heads + h];
      const int32_t* row = index.order + order_row(span, j, m);
      int32_t* out = kv_indices + (h * rows + r) * nkb;
      std::copy(row, row + c, out);
      std::sort(out, out + c);
      std::fill(out + c, out + nkb, 0);
      kv_num_blocks[h * rows + r] = c;
    }
  }
}

}  // namespace proxyattn
