// The heads of a KV group ranked by their count in one row, largest first (ties by head),
// for the sm90 kernel's decoder warp (tile_scheduler.cuh: decode_item). With three
// consumers a CTA holds the pairs of two heads (three at block 64) and streams the largest
// count's tiles while the other heads' consumers idle, so the slots of a row take the heads
// in this order, neighbours in count (real layers' heads differ in count far more than the
// benchmark's 0.5x-1.5x spread).
//
// Protocol: a whole warp ranks, lane h holding local head h; the pair numbering's place r
// (work_list.cuh: unit_work's head_at) is then the head of rank r, the same in every lane.
// Unranked (heads in order) when not asked for (kRank, or Params::rank_heads off), when
// dense or when a KV group has more heads than a warp has lanes.
#pragma once

#include <climits>

#include "attention/params.hpp"
#include "common/heads.hpp"

namespace proxyattn::cuda::attention::sm90 {

struct HeadsByCount {
  int rank;     // this lane's head's rank (-1: no head)
  bool ranked;
  __device__ __forceinline__ int operator()(int place) const {
    return ranked ? __ffs(int(__ballot_sync(0xffffffffu, rank == place))) - 1 : place;
  }
};

template <bool kRank>
__device__ __forceinline__ HeadsByCount heads_by_count(const Params& p, const SeqSpan& span, int m, int kv_head) {
  constexpr int kLanes = 32;
  const int lane = int(threadIdx.x) % kLanes;
  const int heads_per_kv = q_heads_per_kv(p);
  HeadsByCount ranks{lane, kRank && p.rank_heads != 0 && p.order != nullptr && heads_per_kv > 1 &&
                               heads_per_kv <= kLanes};
  if (!ranks.ranked) return ranks;
  const int count = lane < heads_per_kv
                        ? __ldg(p.count + count_row(span, m) * p.num_q_heads + kv_head * heads_per_kv + lane)
                        : INT_MIN;
  int rank = 0;
  for (int j = 0; j < heads_per_kv; ++j) {
    const int other = __shfl_sync(0xffffffffu, count, j);
    rank += other > count || (other == count && j < lane) ? 1 : 0;
  }
  ranks.rank = lane < heads_per_kv ? rank : -1;
  return ranks;
}

}  // namespace proxyattn::cuda::attention::sm90
