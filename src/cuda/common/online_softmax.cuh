// The online softmax of one tensor-core accumulator row, in log2 units (FlashAttention's
// running max and sum), shared by both attention kernels (sm80/kernel.cuh,
// sm90/softmax.cuh) and the estimation (estimate/budget.cu, estimate/proxy_scores.cu).
//
// Layout: an accumulator fragment of mma.sync m16n8k16 or wgmma m64nN (the same per warp,
// common/mma_sm80.cuh and sm90/wgmma.cuh) is a row of n8 tiles, 4 registers each; row half r
// of the thread is elements c = 2r and 2r + 1 of every tile, and the row's other values sit
// in the 3 other threads of its quad (lanes 4g .. 4g + 3). The kernels spell a fragment
// [tiles][4] (mma.sync) or flat [4 tiles] (wgmma); fragment_at reads both.
//
// Protocol of a row across its key tiles: online_softmax_row<rule> once per tile (raw
// scores, the scale goes into the exponent), then quad_sum of the thread's share of the sum,
// and row_inverse / row_lse at the end (attention) or the (max, sum) pair as partial
// statistics (estimation). Exponentials are fast_exp2 (common/mma_sm80.cuh): a term below
// 2^-126 that it flushes cannot change a sum that holds its maximum's 2^0 = 1.
#pragma once

#include <cmath>
#include <type_traits>

#include "common/mma_sm80.cuh"

namespace proxyattn::cuda {

inline constexpr float kLn2 = 0.693147180559945309f;

// Online softmax with a lazy max (both attention kernels): the max a row's exponents are
// taken against moves only when a tile's max exceeds it by more than this (log2 units), so
// probabilities stay <= 2^kRescaleBound (256: fp32 sums and 16-bit P hold it) and O is
// rescaled only on such a move, which after a row's first tiles is rare.
inline constexpr float kRescaleBound = 8.0f;

// How a row's running max follows its tiles.
enum class MaxRule {
  kLazy,   // attention: moves by more than kRescaleBound only; S becomes P in place and the
           // factor O must be multiplied by comes back (1 when the max stays)
  kExact,  // estimation: the max of all keys so far; statistics only, the scores stay
};

// Element c of n8 tile i of a fragment spelt [tiles][4] or flat [4 tiles].
template <int kTiles>
__device__ __forceinline__ float& fragment_at(float (&x)[kTiles][4], int i, int c) {
  return x[i][c];
}
template <int kRegs>
__device__ __forceinline__ float& fragment_at(float (&x)[kRegs], int i, int c) {
  return x[4 * i + c];
}
template <typename Fragment>
inline constexpr int kFragmentTiles =
    std::rank_v<Fragment> == 2 ? int(std::extent_v<Fragment, 0>) : int(std::extent_v<Fragment, 0>) / 4;

// Over the 4 lanes of a quad (the threads that hold one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The base a row's exponents are taken against: its max, or 0 for a row with no key yet
// (max -inf), so that no -inf - -inf NaN appears (its probabilities are exp2(-inf) = 0).
__device__ __forceinline__ float exponent_base(float row_max) { return row_max == -INFINITY ? 0.0f : row_max; }

// What one tile did to a row's earlier terms: the factor row_sum (and the O accumulated so
// far) is multiplied by, and whether the max moved (kExact: the sum is always rescaled).
struct RowRescale {
  float correction;
  bool moved;
};

// One key tile of row half r of fragment x (raw scores, masked keys -inf): the tile's max
// over the quad, scaled by scale_log2 (> 0, so -inf stays -inf), moves row_max by kRule
// (a row's first key always moves it: -inf + bound = -inf); row_sum (this thread's share)
// is rescaled to the new base and takes the tile's terms 2^(x scale_log2 - base), which
// with kLazy replace x (S becomes P).
template <MaxRule kRule, typename Fragment>
__device__ __forceinline__ RowRescale online_softmax_row(Fragment& x, int r, float scale_log2, float& row_max,
                                                         float& row_sum) {
  constexpr int kTiles = kFragmentTiles<Fragment>;
  float tile_max = -INFINITY;
#pragma unroll
  for (int i = 0; i < kTiles; ++i)
    tile_max = fmaxf(tile_max, fmaxf(fragment_at(x, i, 2 * r), fragment_at(x, i, 2 * r + 1)));
  const float scaled = quad_max(tile_max) * scale_log2;
  if constexpr (kRule == MaxRule::kLazy) {
    const bool moves = scaled > row_max + kRescaleBound;
    const float new_max = moves ? scaled : row_max;
    const float base = exponent_base(new_max);
    const float correction = moves ? fast_exp2(row_max - base) : 1.0f;
    row_max = new_max;
    float tile_sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kTiles; ++i)
#pragma unroll
      for (int c = 2 * r; c < 2 * r + 2; ++c) {
        const float prob = fast_exp2(fmaf(fragment_at(x, i, c), scale_log2, -base));
        fragment_at(x, i, c) = prob;
        tile_sum += prob;
      }
    row_sum = row_sum * correction + tile_sum;
    return {correction, moves};
  } else {
    const float new_max = fmaxf(row_max, scaled);
    const float base = exponent_base(new_max);
    float tile_sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kTiles; ++i)
      tile_sum += fast_exp2(fmaf(fragment_at(x, i, 2 * r), scale_log2, -base)) +
                  fast_exp2(fmaf(fragment_at(x, i, 2 * r + 1), scale_log2, -base));
    const float correction = fast_exp2(row_max - base);
    row_sum = row_sum * correction + tile_sum;
    row_max = new_max;
    return {correction, true};
  }
}

// The end of an attention row whose quad-summed denominator is l: the factor of O (0 for a
// row that saw no key, so its O stays 0), and LSE = ln(l) + max in natural-log units (-inf
// for a row that saw no key).
__device__ __forceinline__ float row_inverse(float l) { return l > 0.0f ? 1.0f / l : 0.0f; }
__device__ __forceinline__ float row_lse(float row_max, float l) {
  return !(l <= 0.0f) ? (row_max + log2f(l)) * kLn2 : -INFINITY;  // a NaN sum gives NaN
}

}  // namespace proxyattn::cuda
