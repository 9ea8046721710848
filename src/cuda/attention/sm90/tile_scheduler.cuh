// The persistent scheduler of the sm90 attention kernel: its CTAs (one per SM) take the
// work items of params.hpp in index order (longest rows first) from an atomic counter
// (Params::item_counter; without one, CTA i runs item i only), decode them (CtaWork, one
// GroupWork per consumer) and hand them on through the item ring (shared_storage.cuh).
//
// Protocol: the producer warpgroup takes and decodes, either by one thread that also loads
// (take_item, then producer.cuh: produce_item) or, with KernelTraits::kRankHeads, by a
// decoder warp (run_decoder; its lanes rank the heads, head_ranking.cuh) that hands each
// item to the loading thread (receive_item, item_loaded) as to the consumers
// (receive_consumer_item). A slot is taken only once free (item_empty: every reader has
// it), so an item is taken only when this CTA can start on it. Each reader gets the slot's
// end flag first; the item with end set closes the CTA's walk.
#pragma once

#include <cstdint>

#include "attention/params.hpp"
#include "attention/sm90/head_ranking.cuh"
#include "attention/sm90/kernel_traits.cuh"
#include "attention/sm90/shared_storage.cuh"
#include "attention/sm90/tma.cuh"
#include "attention/sm90/wgmma.cuh"
#include "attention/work_list.cuh"
#include "common/mma_sm80.cuh"

namespace proxyattn::cuda::attention::sm90 {

// The producer warpgroup's warp that decodes the items when a kernel ranks heads (warp 0's
// thread 0 loads).
inline constexpr int kDecoderWarp = 1;
// With a decoder warp, the decoder takes an item ahead of the one thread 0 loads when that
// one keeps at most kLookaheadMaxBlocks blocks (a short item's decoding and Q load are what
// the lookahead hides; behind a long item the held item would only wait) and more than
// kLookaheadMarginPerCta items per CTA remain (speed settings, measured in
// bench/results/attention-sm90-v24-*).
inline constexpr int kLookaheadMaxBlocks = 16;
inline constexpr int kLookaheadMarginPerCta = 4;

// Work item `item` (params.hpp: item_position), decoded by the producer: with kRankHeads by
// its decoder warp (kDecoderWarp; heads_by_count), every lane to the same result.
template <int kConsumers, bool kRankHeads>
__device__ __forceinline__ void decode_item(const Params& params, int64_t item, CtaWork& cta,
                                            GroupWork (&group)[kConsumers]) {
  const ItemPosition position = item_position(params, item);
  const int slot = position.slot;
  cta.kv_head = position.kv_head;
  const int64_t row = position.row;
  cta.seq = find_seq(params, row);
  cta.span = &params.seqs[cta.seq];
  cta.m = block_row(*cta.span, row);
  cta.max_count = 0;
  cta.last_row = -1;
  const HeadsByCount heads = heads_by_count<kRankHeads>(params, *cta.span, cta.m, cta.kv_head);
#pragma unroll
  for (int c = 0; c < kConsumers; ++c) {
    group[c] = unit_work<kGroupRows, kConsumers>(params, *cta.span, cta.m, cta.kv_head, slot, c, heads);
    if (group[c].active) {
      cta.max_count = max(cta.max_count, group[c].count);
      cta.last_row = max(cta.last_row, group[c].last_row);
    }
  }
  cta.order_row = item_order_row(params, *cta.span, cta.m, cta.kv_head);
}

// Takes the next work item into the item ring's current slot, once the slot is free (an item
// is taken only when this CTA can start on it), decodes it and hands it on. Run by one
// thread, or with kRankHeads by the decoder warp (lane 0 takes and writes, every lane
// decodes: heads_by_count). Returns the item taken, `items` at the end.
template <typename Traits>
__device__ __forceinline__ int64_t take_item(SharedStorage<Traits>& smem, const Params& params, int64_t items,
                                             bool first, Ring<kItemSlots>& item_ring, CtaWork& cta,
                                             GroupWork (&group)[Traits::kConsumers]) {
  const bool leader = threadIdx.x % 32 == 0;
  mbarrier_wait(smem_address(&smem.item_empty[item_ring.stage]), item_ring.phase ^ 1);
  // No counter: one item per CTA (tuning.attn_persistent = 0, a launch of `items` CTAs).
  int64_t item = items;
  if (leader)
    item = params.item_counter != nullptr ? int64_t(atomicAdd(params.item_counter, 1u))
           : first                        ? int64_t(blockIdx.x)
                                          : items;
  if constexpr (Traits::kRankHeads) item = __shfl_sync(0xffffffffu, item, 0);
  if (item < items) decode_item<Traits::kConsumers, Traits::kRankHeads>(params, item, cta, group);
  if (leader) {
    ItemSlot& slot = smem.item[item_ring.stage];
    slot.end = item >= items ? 1 : 0;
    if (item < items) {
      slot.cta = cta;
#pragma unroll
      for (int c = 0; c < Traits::kConsumers; ++c) slot.group[c] = group[c];
    }
    mbarrier_arrive(smem_address(&smem.item_full[item_ring.stage]));
  }
  item_ring.advance();
  return item < items ? item : items;
}

// The decoder warp's walk (kRankHeads). The next item is taken once thread 0 has loaded the
// current one, when a single producer thread would take it: taken earlier, items wait in a
// CTA's slots while other CTAs run dry (measured up to 1.45x slower at 8K-16K with uneven
// budgets, bench/results/attention-sm90-v23a-*). Except behind a short item while many items
// remain: then the decoder holds one more (both slots), so that the next item's decoding and
// Q load wait under the short one's tiles, and a held item waits a short item's time at
// most. Item j's load completes a phase of its slot's item_loaded barrier; the decoder waits
// for every item's load once, in order, before it reuses that item's slot at the latest, so
// no barrier runs two phases ahead of its waits.
template <typename Traits>
__device__ __forceinline__ void run_decoder(SharedStorage<Traits>& smem, const Params& params, int64_t items,
                                            Ring<kItemSlots>& item_ring, CtaWork& cta,
                                            GroupWork (&group)[Traits::kConsumers]) {
  int64_t taken = 0, loaded = 0, ahead = 0;
  for (bool first = true;; first = false) {
    for (; loaded < taken - ahead; ++loaded)  // items [0, taken - ahead) loaded
      mbarrier_wait(smem_address(&smem.item_loaded[loaded % kItemSlots]), uint32_t(loaded / kItemSlots) & 1u);
    const int64_t item = take_item<Traits>(smem, params, items, first, item_ring, cta, group);
    if (item >= items) break;
    ++taken;
    // Items held beyond the one thread 0 loads: one after a short item, while many items
    // per CTA remain.
    ahead = cta.max_count <= kLookaheadMaxBlocks && item < items - int64_t(kLookaheadMarginPerCta) * gridDim.x
                ? 1 : 0;
  }
}

// The loading thread's next item from the decoder warp (kRankHeads), into `cta` and `group`;
// false at the end. The slot goes back at once (the item is copied); the thread signals
// item_loaded(slot) once it has loaded the item.
template <typename Traits>
__device__ __forceinline__ bool receive_item(SharedStorage<Traits>& smem, Ring<kItemSlots>& item_ring, CtaWork& cta,
                                             GroupWork (&group)[Traits::kConsumers], int& slot_index) {
  slot_index = item_ring.stage;
  mbarrier_wait(smem_address(&smem.item_full[slot_index]), item_ring.phase);
  const ItemSlot& slot = smem.item[slot_index];
  const bool end = slot.end != 0;
  if (!end) {
    cta = slot.cta;
#pragma unroll
    for (int c = 0; c < Traits::kConsumers; ++c) group[c] = slot.group[c];
  }
  mbarrier_arrive(smem_address(&smem.item_empty[slot_index]));
  item_ring.advance();
  return !end;
}
template <typename Traits>
__device__ __forceinline__ void item_loaded(SharedStorage<Traits>& smem, int slot_index) {
  mbarrier_arrive(smem_address(&smem.item_loaded[slot_index]));
}

// A work item as one consumer warp receives it.
struct ConsumerItem {
  GroupWork mine;  // this consumer's rows
  int seq;         // params.seqs[seq] holds the row
  int max_count;   // largest count of the item's consumers: the producer streams K/V tiles when > 0
};

// The consumer's next item as the producer decoded it, read by lane 0 and broadcast (uniform
// for the branches around wgmma); the slot goes back once every warp has it. False at the end.
template <typename Traits>
__device__ __forceinline__ bool receive_consumer_item(SharedStorage<Traits>& smem, Ring<kItemSlots>& item_ring,
                                                      int consumer, int lane, ConsumerItem& item) {
  mbarrier_wait(smem_address(&smem.item_full[item_ring.stage]), item_ring.phase);
  int end = 0, seq = 0, max_count = 0;
  GroupWork mine;
  if (lane == 0) {
    const ItemSlot& slot = smem.item[item_ring.stage];
    end = slot.end;
    seq = slot.cta.seq;
    max_count = slot.cta.max_count;
    mine = slot.group[consumer];
    mbarrier_arrive(smem_address(&smem.item_empty[item_ring.stage]));
  }
  item_ring.advance();
  if (warp_uniform(end)) return false;
  item.mine.active = warp_uniform(mine.active ? 1 : 0) != 0;
  item.mine.head = warp_uniform(mine.head);
  item.mine.row0 = warp_uniform(mine.row0);
  item.mine.last_row = warp_uniform(mine.last_row);
  item.mine.count = warp_uniform(mine.count);
  item.seq = warp_uniform(seq);
  item.max_count = warp_uniform(max_count);
  return true;
}

}  // namespace proxyattn::cuda::attention::sm90
