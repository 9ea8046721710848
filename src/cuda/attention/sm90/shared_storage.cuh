// Shared memory of one CTA of the sm90 attention kernel and the protocol of its mbarriers
// (tma.cuh): each consumer's Q tile and O staging buffer; the K/V ring of kStages stages,
// each with the TileDesc the producer publishes next to it; and the item ring of kItemSlots
// slots through which the decoded work items reach the consumers (and, with a decoder warp,
// the loading thread). The producer and every consumer walk both rings in step (Ring),
// across all the items of the CTA.
//
// Barriers (arrivals a phase waits for):
//   q_full[c]       1: the loading thread's arrival + the Q tile's TMA bytes
//   q_empty[c]      one per warp of consumer c: Q read for the last time
//   k_full/v_full   1: the loading thread's arrival + the tile's TMA bytes
//   k_empty/v_empty one per consumer warp: the stage released
//   item_full       1: the decoding thread's arrival
//   item_empty      one per consumer warp (+ the loading thread's with a decoder warp)
//   item_loaded     1, with a decoder warp: the loading thread is done with the slot's item
#pragma once

#include <cstdint>

#include "attention/params.hpp"
#include "attention/sm90/kernel_traits.cuh"
#include "attention/sm90/tma.cuh"
#include "attention/work_list.cuh"
#include "common/mma_sm80.cuh"

namespace proxyattn::cuda::attention::sm90 {

// Items in flight between the producer and the consumers: the producer runs at most this
// many items ahead.
inline constexpr int kItemSlots = 2;

// A K/V tile as the producer loaded it, published next to its stage.
enum TileFlags : uint32_t {
  kTileLast = 1,   // the item's last tile
  kTileEmpty = 2,  // carries no data: closes an item whose units were all skipped
};
struct TileDesc {
  int32_t key0[2];   // first key of each half (sequence-relative) where `needed` has its bit
  int32_t rank[2];   // rank of each half's block in the order row
  uint32_t needed;   // bit h: some consumer of the CTA may keep half h
  uint32_t flags;    // TileFlags
};

// What one consumer warpgroup computes: kGroupRows query rows of one Q head.
using GroupWork = UnitWork;

// The CTA's work item as the producer decoded it (tile_scheduler.cuh: decode_item).
struct CtaWork {
  int seq;                   // params.seqs[seq] holds the row
  const SeqSpan* span;
  int m;                     // query block of the sequence
  int kv_head;
  const int32_t* order_row;  // the group's order row; null = dense (block n at rank n)
  int max_count;             // largest count of the active consumers
  int last_row;              // last valid row of the active consumers (-1: none)

  // The key block at rank `rank` of the order row.
  __device__ __forceinline__ int block_at(int rank) const {
    return order_row == nullptr ? rank : __ldg(order_row + rank);
  }
};

// A work item as the producer decoded it, handed to the consumers (and, with a decoder warp,
// to the loading thread) through the item ring: they read no global memory between items.
struct ItemSlot {
  int32_t end;  // 1: no more items
  CtaWork cta;
  UnitWork group[kMaxConsumers];  // [0, KernelTraits::kConsumers) used
};

// Shared memory of one CTA; its sizeof is the launch's dynamic shared memory.
template <typename Traits>
struct alignas(kTileAlignment) SharedStorage {
  uint8_t q[Traits::kConsumers][Traits::kQBytes];  // consumer c's Q tile
  uint8_t o[Traits::kConsumers][Traits::kQBytes];  // consumer c's O staging (epilogue)
  uint8_t k[Traits::kStages][Traits::kKvBytes];
  uint8_t v[Traits::kStages][Traits::kKvBytes];
  uint64_t q_full[Traits::kConsumers];
  uint64_t q_empty[Traits::kConsumers];
  ItemSlot item[kItemSlots];          // the items handed to the consumers
  uint64_t item_full[kItemSlots];
  uint64_t item_empty[kItemSlots];
  uint64_t item_loaded[kItemSlots];
  uint64_t k_full[Traits::kStages];
  uint64_t k_empty[Traits::kStages];
  uint64_t v_full[Traits::kStages];
  uint64_t v_empty[Traits::kStages];
  TileDesc desc[Traits::kStages];
};

// Every barrier with its arrival count (above), by one thread before the CTA's first
// __syncthreads.
template <typename Traits>
__device__ __forceinline__ void init_barriers(SharedStorage<Traits>& smem) {
  constexpr int kConsumerWarps = Traits::kConsumers * kWarpsPerGroup;
#pragma unroll
  for (int i = 0; i < kItemSlots; ++i) {
    mbarrier_init(smem_address(&smem.item_full[i]), 1);
    mbarrier_init(smem_address(&smem.item_empty[i]), kConsumerWarps + (Traits::kRankHeads ? 1 : 0));
  }
#pragma unroll
  for (int c = 0; c < Traits::kConsumers; ++c) {
    mbarrier_init(smem_address(&smem.q_full[c]), 1);
    mbarrier_init(smem_address(&smem.q_empty[c]), kWarpsPerGroup);
  }
#pragma unroll
  for (int s = 0; s < Traits::kStages; ++s) {
    mbarrier_init(smem_address(&smem.k_full[s]), 1);
    mbarrier_init(smem_address(&smem.v_full[s]), 1);
    mbarrier_init(smem_address(&smem.k_empty[s]), kConsumerWarps);
    mbarrier_init(smem_address(&smem.v_empty[s]), kConsumerWarps);
  }
#pragma unroll
  for (int i = 0; i < kItemSlots; ++i) mbarrier_init(smem_address(&smem.item_loaded[i]), 1);
  mbarrier_init_fence();
}

// A position in a ring of kSlots stages (K/V) or slots (items); the producer and every
// consumer walk it in step, across all the items of the CTA.
template <int kSlots>
struct Ring {
  int stage = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == kSlots) stage = 0, phase ^= 1;
  }
};

}  // namespace proxyattn::cuda::attention::sm90
