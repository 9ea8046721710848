// Masking and online softmax of one S tile of an sm90 consumer (mainloop.cuh), in fp32
// registers of the m64n128 accumulator layout (wgmma.cuh): this thread holds rows row_lo and
// row_lo + 8 of the consumer's 64, columns 8 i + 2 t + (c % 2) of n8 tile i (t = lane % 4).
//
// Protocol per tile (softmax_tile): mask_scores (causal mask inside the diagonal block, keys
// past the sequence end, halves this head does not keep: -inf), then softmax_rows (the
// online softmax of common/online_softmax.cuh with the lazy max: S becomes P in fp32, and
// the factor the O accumulated so far must be multiplied by comes back); the epilogue
// (epilogue.cuh) finishes the rows from the running max and sum. The consumer's thread
// geometry (TileThread) is computed once per item and passed by reference, like every other
// value the helpers share.
#pragma once

#include <cmath>

#include "attention/sm90/kernel_traits.cuh"
#include "attention/sm90/shared_storage.cuh"
#include "common/online_softmax.cuh"

namespace proxyattn::cuda::attention::sm90 {

// Where this thread's registers sit in its consumer's tile for one item (the m64 register
// layouts of wgmma.cuh), passed by reference to the masking and the epilogue.
struct TileThread {
  int thread;              // in the warpgroup
  int warp, lane;
  int quad_row, quad_col;  // g and t of the register layouts
  int row_lo;              // this thread's rows: row_lo, row_lo + 8 (absolute positions)
  int length;              // keys of the item's sequence
};

// Sets to -inf the scores of keys above the diagonal, past the sequence end or in a half
// this head does not keep (half_on); tiles that need none of it (most) skip the loop.
// Column 8 i + 2 t + (c % 2) of S is key key0[i / 8] + that % 64.
template <typename Traits>
__device__ __forceinline__ void mask_scores(float (&s)[Traits::kScoreRegs], const TileDesc& desc,
                                            const bool (&half_on)[2], const GroupWork& mine, const TileThread& at) {
  bool needs_mask = false;
#pragma unroll
  for (int h = 0; h < 2; ++h)
    needs_mask |= !half_on[h] || desc.key0[h] + kBoxRows - 1 > mine.row0 || desc.key0[h] + kBoxRows > at.length;
  if (needs_mask) {
#pragma unroll
    for (int i = 0; i < Traits::kScoreTiles; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        constexpr int kTilesPerHalf = kBoxRows / kN8;
        const int h = i / kTilesPerHalf;
        const int key = desc.key0[h] + (i % kTilesPerHalf) * kN8 + 2 * at.quad_col + (c % 2);
        const int q_pos = at.row_lo + 8 * (c / 2);
        if (!half_on[h] || key > q_pos || key >= at.length) s[4 * i + c] = -INFINITY;
      }
  }
}

// The online softmax of both rows (common/online_softmax.cuh): per row the max moves only
// by more than kRescaleBound (then `correction` is what the O accumulated so far must be
// multiplied by, else 1), S becomes P = exp2(S * scale_log2 - max). row_max: running max
// of scaled scores (log2 domain); row_sum: this thread's share of the running denominators.
template <int kScoreRegs>
__device__ __forceinline__ void softmax_rows(float (&s)[kScoreRegs], float scale_log2, float (&row_max)[2],
                                             float (&row_sum)[2], float (&correction)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r)
    correction[r] = online_softmax_row<MaxRule::kLazy>(s, r, scale_log2, row_max[r], row_sum[r]).correction;
}

// Mask S, then the online softmax of its rows: S becomes P (fp32), `correction` is what the
// O accumulated so far must be multiplied by.
template <typename Traits>
__device__ __forceinline__ void softmax_tile(float (&s)[Traits::kScoreRegs], const TileDesc& desc,
                                             const bool (&half_on)[2], const GroupWork& mine, const TileThread& at,
                                             float scale_log2, float (&row_max)[2], float (&row_sum)[2],
                                             float (&correction)[2]) {
  mask_scores<Traits>(s, desc, half_on, mine, at);
  softmax_rows(s, scale_log2, row_max, row_sum, correction);
}

}  // namespace proxyattn::cuda::attention::sm90
