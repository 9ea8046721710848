// The loading side of the sm90 attention kernel's producer warpgroup (kernel.cuh gives the
// warpgroup's threads their roles; tile_scheduler.cuh takes and decodes the items): thread
// 0 walks each item's kept blocks in the order of the block index and copies each
// consumer's Q tile, then each K and V tile with the tensor copy engine (TMA, 128-byte
// swizzle, tma.cuh) into the ring of kStages shared-memory stages (shared_storage.cuh), each
// completing on its own "full" mbarrier.
//
// Tiles: a K/V tile is kTileKeys = 2 x kBoxRows keys, two "halves" of kBoxRows keys, each
// one TMA box per 64 columns. At block 128 a tile is one kept block; at block 64 it is two
// consecutive kept blocks of the order row. A half that no consumer needs (past the row's
// kept prefix, above the diagonal, past the sequence) is loaded from the other half's keys
// (finite data) and masked to -inf by the consumers, so its probabilities are exactly 0.
// The producer publishes each tile's halves (TileDesc) next to the stage, so consumers
// decide per half whether their head keeps it (heads of a CTA share the order row but not
// the count) without reading the index themselves. It flags each item's last tile (an item
// whose units were all skipped gets one empty stage). A consumer's Q tile is copied once
// that consumer has released the previous item's Q, so the ring runs on across items: the
// next item's Q and first tiles load while the consumers finish the current one.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "attention/params.hpp"
#include "attention/sm90/kernel_traits.cuh"
#include "attention/sm90/shared_storage.cuh"
#include "attention/sm90/tma.cuh"
#include "common/mma_sm80.cuh"

namespace proxyattn::cuda::attention::sm90 {

// One K or V tile: two halves of kBoxRows tokens from `token0`/`token1`, one box per chunk.
template <typename Traits>
__device__ __forceinline__ void load_kv_tile(uint32_t tile, const CUtensorMap* map, uint32_t bar, int kv_head,
                                             int token0, int token1) {
#pragma unroll
  for (int c = 0; c < Traits::kChunks; ++c) {
    tma_load_3d(tile + c * Traits::kKvChunkBytes, map, bar, c * kSwizzleElems, kv_head, token0);
    tma_load_3d(tile + c * Traits::kKvChunkBytes + Traits::kBoxBytes, map, bar, c * kSwizzleElems, kv_head,
                token1);
  }
}

// Q of every active consumer, once it has read its previous Q for the last time.
// q_phase[c]: parity of consumer c's Q loads so far; q_token0: the Q token of position 0 of
// the sequence (negative, or another sequence's, for a chunk: those rows are not stored).
template <typename Traits>
__device__ __forceinline__ void load_q_tiles(SharedStorage<Traits>& smem, const GroupWork (&group)[Traits::kConsumers],
                                             uint32_t (&q_phase)[Traits::kConsumers], const CUtensorMap* q_map,
                                             int q_token0) {
#pragma unroll
  for (int c = 0; c < Traits::kConsumers; ++c) {
    if (!group[c].active) continue;
    mbarrier_wait(smem_address(&smem.q_empty[c]), q_phase[c] ^ 1);
    q_phase[c] ^= 1;
    const uint32_t bar = smem_address(&smem.q_full[c]);
    mbarrier_arrive_expect_tx(bar, Traits::kQBytes);
#pragma unroll
    for (int ch = 0; ch < Traits::kChunks; ++ch)
      tma_load_3d(smem_address(smem.q[c]) + ch * Traits::kQChunkBytes, q_map, bar, ch * kSwizzleElems,
                  group[c].head, q_token0 + group[c].row0);
  }
}

// First key of unit `unit` (a half tile) of block n, or -1 when skipped: unit u is sub-block
// u % units_per_block of the block at rank u / units_per_block of the order row, and is
// skipped when its block is outside [0, m] (a corrupt index), starts past the sequence end,
// or lies wholly above the diagonal of every row of the CTA.
__device__ __forceinline__ int unit_key0(const CtaWork& cta, const SeqSpan& span, int block, int units_per_block,
                                         int unit, int n) {
  if (n < 0 || n > cta.m) return -1;
  const int key0 = n * block + (unit % units_per_block) * kBoxRows;
  return key0 >= span.kv_length || key0 > cta.last_row ? -1 : key0;
}

// Arrival on a stage's full barrier, with the bytes of its tile to come (none for an empty
// stage), and the tile's copy.
template <typename Traits>
__device__ __forceinline__ void fill_stage(uint64_t& full, uint8_t* tile, const CUtensorMap* map, const TileDesc& desc,
                                           int kv_head, int token0, int token1) {
  const uint32_t bar = smem_address(&full);
  if (desc.flags & kTileEmpty) {
    mbarrier_arrive(bar);
    return;
  }
  mbarrier_arrive_expect_tx(bar, Traits::kKvBytes);
  load_kv_tile<Traits>(smem_address(tile), map, bar, kv_head, token0, token1);
}

// A tile into the ring's current stage: K once every consumer warp released the stage, with
// its TileDesc published before the copy; then V, into the same stage of its own ring.
template <typename Traits>
__device__ __forceinline__ void publish_tile(SharedStorage<Traits>& smem, Ring<Traits::kStages>& ring,
                                             const TileDesc& desc, int kv_head, int token0, int token1,
                                             const CUtensorMap* k_map, const CUtensorMap* v_map) {
  mbarrier_wait(smem_address(&smem.k_empty[ring.stage]), ring.phase ^ 1);
  smem.desc[ring.stage] = desc;
  fill_stage<Traits>(smem.k_full[ring.stage], smem.k[ring.stage], k_map, desc, kv_head, token0, token1);
  mbarrier_wait(smem_address(&smem.v_empty[ring.stage]), ring.phase ^ 1);
  fill_stage<Traits>(smem.v_full[ring.stage], smem.v[ring.stage], v_map, desc, kv_head, token0, token1);
  ring.advance();
}

// One item (with at least one kept block): Q tiles, then K/V tiles, the last one flagged.
// Run by the producer's loading thread.
template <typename Traits>
__device__ __forceinline__ void produce_item(SharedStorage<Traits>& smem, const Params& params, const CtaWork& cta,
                                             const GroupWork (&group)[Traits::kConsumers],
                                             Ring<Traits::kStages>& ring, uint32_t (&q_phase)[Traits::kConsumers],
                                             const CUtensorMap* q_map, const CUtensorMap* k_map,
                                             const CUtensorMap* v_map) {
  const SeqSpan& span = *cta.span;
  // The dispatcher keeps tokens and key rows within int32 (the tensor-copy coordinates).
  load_q_tiles<Traits>(smem, group, q_phase, q_map, int(query_token(span, 0)));

  // K/V tiles: tile t holds units 2t and 2t + 1 (unit_key0). Each tile is published once
  // the next one is known, so that the item's last tile carries kTileLast; an item whose
  // units were all skipped closes with an empty stage.
  // Row of K and V of key position `key`: packed, or in a page (of 2^page_shift tokens, whole
  // boxes; dispatch.cu sends other pages to the sm80 kernel).
  auto key_row = [&](int key) {
    if (params.block_table == nullptr) return span.kv_begin + key;
    const int page = __ldg(params.block_table + int64_t(span.index) * params.max_pages_per_seq + (key >> params.page_shift));
    return (page << params.page_shift) + (key & (params.page_size - 1));
  };
  const int block = params.block_size;
  const int units_per_block = block / kBoxRows;
  const int num_units = cta.max_count * units_per_block;
  TileDesc held{};
  int held_token[2] = {0, 0};
  bool holding = false;
  for (int unit = 0; unit < num_units; unit += 2) {
    const int rank0 = unit / units_per_block, rank1 = (unit + 1) / units_per_block;
    const bool has_second = unit + 1 < num_units;
    const int n0 = cta.block_at(rank0);
    const int n1 = !has_second ? -1 : rank1 == rank0 ? n0 : cta.block_at(rank1);
    const int key0 = unit_key0(cta, span, block, units_per_block, unit, n0);
    const int key1 = has_second ? unit_key0(cta, span, block, units_per_block, unit + 1, n1) : -1;
    if (key0 < 0 && key1 < 0) continue;
    if (holding) publish_tile<Traits>(smem, ring, held, cta.kv_head, held_token[0], held_token[1], k_map, v_map);
    held.key0[0] = key0;
    held.key0[1] = key1;
    held.rank[0] = rank0;
    held.rank[1] = rank1;
    held.needed = (key0 >= 0 ? 1u : 0u) | (key1 >= 0 ? 2u : 0u);
    held.flags = 0;
    held_token[0] = key_row(key0 >= 0 ? key0 : key1);  // a skipped half: the other's keys
    held_token[1] = key_row(key1 >= 0 ? key1 : key0);
    holding = true;
  }
  if (!holding) held = TileDesc{};
  held.flags = holding ? kTileLast : kTileLast | kTileEmpty;
  publish_tile<Traits>(smem, ring, held, cta.kv_head, held_token[0], held_token[1], k_map, v_map);
}

}  // namespace proxyattn::cuda::attention::sm90
