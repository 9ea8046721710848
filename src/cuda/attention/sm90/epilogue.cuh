// The epilogue of an sm90 consumer warpgroup, after its mainloop (mainloop.cuh) for an item
// with active rows: O = acc / l staged in this consumer's O buffer (row-major, 16-byte
// vectors XOR-swizzled by row % 8), then 16-byte stores of the valid rows; LSE = ln(l) + max.
// A row that saw no key gets O = 0, LSE = -inf.
//
// Protocol: the staging buffer is the consumer's own (not its Q tile, which the producer may
// already be refilling with the next item's Q); a named barrier over the warpgroup
// (kBarrierEpilogue + consumer) before the staging stores waits for the previous item's
// reads of it, one after them for this item's stores.
#pragma once

#include <cstdint>

#include "attention/params.hpp"
#include "attention/sm90/kernel_traits.cuh"
#include "attention/sm90/shared_storage.cuh"
#include "attention/sm90/softmax.cuh"
#include "attention/sm90/tma.cuh"
#include "common/mma_sm80.cuh"
#include "common/online_softmax.cuh"

namespace proxyattn::cuda::attention::sm90 {

// O and LSE of this consumer's rows `mine`; row_max and row_sum: the rows' running
// statistics (softmax.cuh), o: the accumulators (m64nD layout).
template <typename Traits>
__device__ __forceinline__ void epilogue(SharedStorage<Traits>& smem, const Params& params, const SeqSpan& span,
                                         const GroupWork& mine, int consumer, const float (&o)[Traits::kOutRegs],
                                         const float (&row_max)[2], const float (&row_sum)[2], const TileThread& at) {
  using Element = typename Traits::Element;
  const uint32_t o_tile = smem_address(smem.o[consumer]);
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(row_sum[r]);
    inv[r] = row_inverse(l);
    const int row = at.row_lo + 8 * r;
    if (params.lse != nullptr && at.quad_col == 0 && own_query(span, row))
      params.lse[int64_t(mine.head) * params.total_tokens + query_token(span, row)] = row_lse(row_max[r], l);
  }
  named_barrier_sync(kBarrierEpilogue + consumer, kWarpgroupThreads);  // the previous item's reads are done
#pragma unroll
  for (int i = 0; i < Traits::kOutTiles; ++i)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = 16 * at.warp + at.quad_row + 8 * r;  // row % 8 == quad_row
      const uint32_t address =
          o_tile + row * Traits::kOutRowBytes + ((i ^ at.quad_row) * 16) + at.quad_col * 4;
      st_shared_32(address, ElementTraits<Element>::pack(o[4 * i + 2 * r] * inv[r], o[4 * i + 2 * r + 1] * inv[r]));
    }
  named_barrier_sync(kBarrierEpilogue + consumer, kWarpgroupThreads);
  Element* o_head = static_cast<Element*>(params.o.data) + int64_t(mine.head) * params.o.head_stride;
  constexpr int kRowVectors = Traits::kHeadDim / Traits::kVectorElems;
  for (int i = at.thread; i < kGroupRows * kRowVectors; i += kWarpgroupThreads) {
    const int r = i / kRowVectors, vc = i % kRowVectors;
    if (!own_query(span, mine.row0 + r)) continue;
    const uint4 value =
        *reinterpret_cast<const uint4*>(smem.o[consumer] + r * Traits::kOutRowBytes + ((vc ^ (r % 8)) * 16));
    *reinterpret_cast<uint4*>(o_head + query_token(span, mine.row0 + r) * params.o.token_stride + vc * Traits::kVectorElems) =
        value;
  }
}

}  // namespace proxyattn::cuda::attention::sm90
