// Device helpers both attention kernels use to decode their work item (params.hpp).
#pragma once

#include <cstdint>

#include "attention/params.hpp"

namespace proxyattn::cuda::attention {

// T(n) = n (n + 1) / 2 (core/problem.hpp's triangle, for device code).
__device__ __forceinline__ int64_t triangular(int64_t n) { return n * (n + 1) / 2; }

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

}  // namespace proxyattn::cuda::attention
