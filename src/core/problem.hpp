// Problem shapes, tensor views and the per-sequence layout of a varlen batch.
#pragma once

#include <cstdint>
#include <vector>

#include "proxyattn/proxyattn.h"

// Layout helpers that host code and the CUDA kernels share (one definition for both).
#ifdef __CUDACC__
#define PA_HOST_DEVICE __host__ __device__
#else
#define PA_HOST_DEVICE
#endif

namespace proxyattn {

inline constexpr int kMaxHeadDim = 256;
inline constexpr int64_t kMaxTotalTokens = INT32_MAX;  // cu_seqlens are int32

// Validates head counts, head_dim, dtype, total_tokens and cu_seqlens (host memory).
pa_status validate_problem(const pa_problem* problem);

// Validates one tensor view of [tokens, heads, head_dim] (tokens: total_tokens unless given);
// name is used in messages.
pa_status validate_tensor(const pa_tensor* tensor, const char* name, const pa_problem& problem,
                          int heads, int64_t tokens = -1);

// Rows of the key and value tensors: total_kv_tokens packed, num_pages * page_size paged,
// total_tokens for a whole prompt.
int64_t kv_rows(const pa_problem& problem);
bool is_chunked(const pa_problem& problem);   // cu_seqlens_k given
bool is_paged(const pa_problem& problem);     // page_size > 0

int dtype_bytes(pa_dtype dtype);
const char* dtype_name(pa_dtype dtype);

// T(n) = n (n + 1) / 2: causal block pairs of n query blocks, and the triangular order size.
PA_HOST_DEVICE inline int64_t triangle(int64_t n) { return n * (n + 1) / 2; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One sequence of the batch and where its rows live in the block index. Positions are
// absolute in the sequence: its queries are positions [kv_length - length, kv_length) (all
// of them unless chunked), query block m covers positions [m b, (m + 1) b), and the index
// holds rows m = first_qblock .. first_qblock + num_qblocks - 1 (the last is the last key
// block), row m with its m + 1 causal key blocks.
struct SeqSpan {
  int64_t token_begin;    // first query token in the packed Q and O
  int32_t length;         // q_len: the queries of this call
  int32_t num_qblocks;    // rows of the index (0 without queries)
  int64_t qblock_begin;   // first row of this sequence in count [total_qblocks, Hq]
  int64_t order_begin;    // first entry of this sequence in order (g groups of row entries)
  int32_t kv_begin;       // first key token in the packed K and V (0 for a paged cache)
  int32_t kv_length;      // kv_len >= q_len
  int32_t first_qblock;   // absolute index of the first row: (kv_len - q_len) / b
  int32_t index;          // the sequence's place in the batch (its block-table row)

  PA_HOST_DEVICE int64_t query_offset() const { return int64_t(kv_length) - length; }
  PA_HOST_DEVICE bool chunked() const { return kv_length != length; }
  // A chunk of fewer queries than a block (a decode step): it runs dense whatever its keys.
  PA_HOST_DEVICE bool short_chunk(int block_size) const { return chunked() && length < block_size; }
  // Key blocks of the sequence, ceil(kv_len / b), given as the last row + 1.
  PA_HOST_DEVICE int32_t num_kblocks() const { return first_qblock + num_qblocks; }
  // Order entries of one group: rows first_qblock .. num_kblocks - 1 of m + 1 entries each.
  PA_HOST_DEVICE int64_t group_entries() const {
    return triangle(num_kblocks()) - triangle(first_qblock);
  }
};

struct BatchLayout {
  std::vector<SeqSpan> seqs;
  int64_t total_qblocks = 0;   // sum of the rows
  // The GPU estimation's per-key-block arrays (proxy keys, budget partials): sequence s at
  // key block kblock_begin[s], num_kblocks blocks (its rows' count for a short chunk, which
  // runs dense and needs no keys there); for whole prompts the rows' layout (qblock_begin).
  std::vector<int64_t> kblock_begin;
  int64_t total_kblocks = 0;
  int64_t order_entries = 0;   // sum of g * group_entries
  int32_t max_length = 0;      // longest q_len
  int32_t max_kv_length = 0;   // longest kv_len
  bool chunked = false;        // some sequence has kv_len != q_len
};

// Row of the key and value tensors that holds position pos of sequence seq: packed from the
// span's kv_begin, or through the block table [num_seqs, max_pages_per_seq] of a paged cache.
PA_HOST_DEVICE inline int64_t kv_row(const SeqSpan& span, int seq, int64_t pos,
                                     const int32_t* block_table, int page_size, int max_pages) {
  if (block_table == nullptr) return span.kv_begin + pos;
  return int64_t(block_table[int64_t(seq) * max_pages + pos / page_size]) * page_size + pos % page_size;
}

// Requires a validated problem; block_size and groups from a validated config.
BatchLayout make_batch_layout(const pa_problem& problem, int block_size, int groups);

}  // namespace proxyattn
