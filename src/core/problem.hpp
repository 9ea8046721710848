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

// Validates one tensor view of [total_tokens, heads, head_dim]; name is used in messages.
pa_status validate_tensor(const pa_tensor* tensor, const char* name, const pa_problem& problem,
                          int heads);

int dtype_bytes(pa_dtype dtype);
const char* dtype_name(pa_dtype dtype);

// T(n) = n (n + 1) / 2: causal block pairs of n query blocks, and the triangular order size.
PA_HOST_DEVICE inline int64_t triangle(int64_t n) { return n * (n + 1) / 2; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One sequence of the batch and where its rows live in the block index.
struct SeqSpan {
  int64_t token_begin;    // first token in the packed tensors
  int32_t length;         // N
  int32_t num_qblocks;    // Nqb = ceil(N / b)
  int64_t qblock_begin;   // first row of this sequence in count [total_qblocks, Hq]
  int64_t order_begin;    // first entry of this sequence in order (g triangles of Nqb)
};

struct BatchLayout {
  std::vector<SeqSpan> seqs;
  int64_t total_qblocks = 0;   // sum of Nqb
  int64_t order_entries = 0;   // sum of g * T(Nqb)
  int32_t max_length = 0;
};

// Requires a validated problem; block_size and groups from a validated config.
BatchLayout make_batch_layout(const pa_problem& problem, int block_size, int groups);

}  // namespace proxyattn
