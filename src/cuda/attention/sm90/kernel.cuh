// Block-sparse causal attention forward for sm_90a (H100), FlashAttention-3 style:
// persistent CTAs (one per SM) taking the work items of params.hpp in order (longest rows
// first) from an atomic counter, warp-specialised.
//
//   warpgroup 0 (producer, registers released): thread 0 (d = 128) or a decoder warp (d = 64,
//     ranking heads with its lanes) takes the next item from the counter, decodes it and
//     hands it to the consumers (and from the decoder warp to thread 0) through a small
//     shared-memory ring (they read no global memory between items); thread 0 walks each
//     item's kept blocks in the order of the block index and copies each K and V tile with
//     the tensor copy engine (TMA, 128-byte swizzle) into a ring of kStages shared-memory
//     stages, each completing
//     on its own "full" mbarrier; it first copies every consumer's Q tile (once that consumer
//     has released the previous item's Q). The ring runs on across items, so the next
//     item's Q and first tiles load while the consumers finish the current one (the last
//     P V product and the epilogue): a short row no longer pays its pipeline fill.
//   warpgroups 1..kConsumers (consumers; 2 at d = 128, 3 at d = 64): kGroupRows query rows of
//     one head each (a pair of params.hpp). S = Q K^T with wgmma (Q and K from shared memory), mask, online softmax
//     in fp32 registers, O += P V with wgmma (P from registers, V from shared memory).
//
// Tiles: a K/V tile is kTileKeys = 2 x kBoxRows keys, two "halves" of kBoxRows keys, each
// one TMA box per 64 columns. At block 128 a tile is one kept block; at block 64 it is two
// consecutive kept blocks of the order row. A half that no consumer needs (past the
// row's kept prefix, above the diagonal, past the sequence) is loaded from the other
// half's keys (finite data) and masked to -inf, so its probabilities are exactly 0.
// The producer publishes each tile's halves (TileDesc) next to the stage, so consumers
// decide per half whether their head keeps it (heads of a CTA share the order row but not
// the count) without reading the index themselves.
//
// Consumer loop, intra-warpgroup overlap (FA3): in the iteration of tile j
//   issue S_j = Q K_j^T | rescale O, issue O += P_{j-1} V_{j-1} | wait S_j, release K_j |
//   mask + softmax of S_j (under the P V product) | wait P V, release V_{j-1} | P_j = S_j
// The products of an iteration are issued in the consumer's turn (Turns), so the
// consumers' softmaxes fall between each other's products.
// Every consumer waits on every tile's barriers and releases every stage, also a tile it
// skips (kept by another head of the CTA), so the ring's phases stay in step. The producer
// flags each item's last tile (an item whose units were all skipped gets one empty stage),
// and the consumers release Q as soon as that tile's Q K^T product has completed, so the
// next item's Q loads under the last softmax, P V and the epilogue. The epilogue stages O
// in its own buffer, not in Q's.
#pragma once

#include <cuda.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "attention/params.hpp"
#include "attention/sm90/tma.cuh"
#include "attention/sm90/wgmma.cuh"
#include "attention/work_list.cuh"
#include "common/heads.hpp"
#include "common/mma_sm80.cuh"
#include "common/online_softmax.cuh"

namespace proxyattn::cuda::attention::sm90 {

using cuda::smem_address;

inline constexpr int kWarpgroupThreads = 128;
inline constexpr int kWarpsPerGroup = 4;
inline constexpr int kSwizzleBytes = 128;                  // one swizzled row: 64 16-bit elements
inline constexpr int kSwizzleElems = kSwizzleBytes / 2;    // columns of a TMA box
inline constexpr int kAtomBytes = 8 * kSwizzleBytes;       // 8 rows: swizzle period, descriptor row-group step
inline constexpr int kTileAlignment = kAtomBytes;
inline constexpr int kBoxRows = 64;                        // rows of one TMA box: half a K/V tile
inline constexpr int kTileKeys = 2 * kBoxRows;             // keys of a K/V tile: N of S = Q K^T
inline constexpr int kMmaK = 16;                           // K of one wgmma
inline constexpr int kMmaStepBytes = kMmaK * 2;            // a k-step inside a swizzled row
inline constexpr int kN8 = 8;                              // columns of one accumulator n8 tile
inline constexpr uint32_t kUnusedLeadingBytes = 16;        // K-major swizzled: LBO ignored (encoded 1)
// Registers per thread (setmaxnreg, KernelTraits): the producer warpgroup first, the
// consumers share the rest of the register file.
inline constexpr int kRegisterFile = 65536;
inline constexpr int kRegisterGranule = 8;  // setmaxnreg counts are multiples of 8 ...
inline constexpr int kMinSetMaxNreg = 24;   // ... in [24, 256]
inline constexpr int kMaxSetMaxNreg = 256;
static_assert(kGroupRows == 64, "a consumer is one wgmma m64 tile");
static_assert(kBoxRows == kGroupRows, "Q and K/V use tensor maps of the same box");

// Items in flight between the producer and the consumers: the producer runs at most this
// many items ahead.
inline constexpr int kItemSlots = 2;
// The producer warpgroup's warp that decodes the items when a kernel ranks heads (warp 0's
// thread 0 loads).
inline constexpr int kDecoderWarp = 1;
// With a decoder warp, the decoder takes an item ahead of the one thread 0 loads when that
// one keeps at most kLookaheadMaxBlocks blocks (a short item's decoding and Q load are what
// the lookahead hides; behind a long item the held item would only wait) and more than
// kLookaheadMarginPerCta items per CTA remain (speed settings; version 24).
inline constexpr int kLookaheadMaxBlocks = 16;
inline constexpr int kLookaheadMarginPerCta = 4;

// Named barriers (id 0 is __syncthreads): the epilogue of consumer c syncs its warpgroup on
// kBarrierEpilogue + c; consumer c waits for its turn (Turns) on kBarrierTurn + c.
enum NamedBarrier : int { kBarrierEpilogue = 1, kBarrierTurn = kBarrierEpilogue + kMaxConsumers };
static_assert(kBarrierTurn + kMaxConsumers <= 16, "16 named barriers per CTA");

// Turn-taking of the consumer warpgroups around their tensor-core issue (FA3's
// inter-warpgroup ping-pong): consumer c issues the products of a tile once consumer c - 1
// has issued its own, then passes the turn on, so one consumer's softmax runs while the
// others' products keep the tensor cores busy. Named barrier kBarrierTurn + c is consumer c's
// turn: it waits there (128 threads) for the previous consumer's arrival (128 more). Every
// consumer walks the same tiles, so all take the same number of turns; the last consumer's
// opening pass starts the ring and consumer 0's closing wait takes the last pass, so no
// arrival is left over.
struct Turns {
  static constexpr int kThreads = 2 * kWarpgroupThreads;
  bool enabled;  // Params::consumer_turns
  int mine, next;
  __device__ __forceinline__ void wait() const {
    if (enabled) named_barrier_sync(mine, kThreads);
  }
  __device__ __forceinline__ void pass() const {
    if (enabled) named_barrier_arrive(next, kThreads);
  }
};

// Every shape of the kernel, derived from the element type and head_dim. Stage counts are
// speed settings: a stage holds a K and a V tile; 2 at d = 128 (FA3's choice; 192 KiB with
// Q and the O staging), 3 at d = 64 (tiles compute in half the time, so the copies need more
// lead; 144 KiB with three consumers' Q and O staging).
template <typename Element_, int kHeadDim_>
struct KernelTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumers = consumers_for(kHeadDim_);
  static constexpr int kThreads = (1 + kConsumers) * kWarpgroupThreads;
  // Two consumers: the producer keeps its item and ring state in 56 (ptxas spills 12 bytes
  // of it; none in the consumers' loop), the consumers get 224 (64512 of the 65536). Three:
  // a consumer needs 160 (S, P and O of a d = 64 tile are 128; at 152 it spills P's
  // registers in the loop), which leaves the producer 32 (FA3's split at d = 64): its
  // decoder warp and loading thread keep part of their item state in local memory, off the
  // consumers' loop (the consumers spill ~40 bytes around an item's start and epilogue).
  static constexpr int kProducerRegisters = kConsumers == 2 ? 56 : 32;
  // At block 128 with the default packing, two consumers hold one head's block, three the
  // pairs of two heads with different counts; so with three the producer's decoder warp
  // ranks the heads by count (heads_by_count), and with two one thread decodes and loads (a
  // ranking warp cost d = 128 about 3% in an A/B, 2026-11-24). At
  // block 64 or packed by heads, d = 128 CTAs also mix heads, unranked (not measured).
  static constexpr bool kRankHeads = kConsumers == 3;
  static constexpr int kConsumerRegisters =
      (kRegisterFile / kWarpgroupThreads - kProducerRegisters) / kConsumers / kRegisterGranule * kRegisterGranule;
  static_assert(kWarpgroupThreads * (kProducerRegisters + kConsumers * kConsumerRegisters) <= kRegisterFile,
                "register split within the register file");
  static_assert(kProducerRegisters >= kMinSetMaxNreg && kConsumerRegisters <= kMaxSetMaxNreg &&
                    kProducerRegisters % kRegisterGranule == 0 && kConsumerRegisters % kRegisterGranule == 0,
                "setmaxnreg takes multiples of 8 in [24, 256]");
  static constexpr int kStages = kHeadDim == 128 ? 2 : 3;
  static constexpr int kChunks = kHeadDim / kSwizzleElems;      // 64-column chunks of a row
  static constexpr int kQChunkBytes = kGroupRows * kSwizzleBytes;
  static constexpr int kQBytes = kChunks * kQChunkBytes;         // (kChunks, 64 rows, 64 cols)
  static constexpr int kKvChunkBytes = kTileKeys * kSwizzleBytes;
  static constexpr int kKvBytes = kChunks * kKvChunkBytes;       // (kChunks, 128 keys, 64 cols)
  static constexpr int kBoxBytes = kBoxRows * kSwizzleBytes;
  static constexpr int kScoreRegs = kTileKeys / 2;   // S accumulators of a thread (m64n128)
  static constexpr int kOutRegs = kHeadDim / 2;      // O accumulators of a thread (m64nD)
  static constexpr int kScoreTiles = kTileKeys / kN8;
  static constexpr int kOutTiles = kHeadDim / kN8;
  static constexpr int kDimSteps = kHeadDim / kMmaK;   // k-steps of Q K^T
  static constexpr int kKeySteps = kTileKeys / kMmaK;  // k-steps of P V
  static constexpr int kStepsPerChunk = kSwizzleElems / kMmaK;
  static constexpr int kOutRowBytes = kHeadDim * 2;    // O staging rows (row-major, swizzled)
  static constexpr int kVectorElems = 8;               // 16-byte vectors of the O stores

  static_assert(sizeof(Element) == 2, "16-bit elements (bf16, fp16)");
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static_assert(kConsumers >= 2 && kConsumers <= kMaxConsumers, "turns need two consumers; named barriers for three");
  static_assert(kGroupRows * kOutRowBytes == kQBytes, "O staging has the Q tile's size");
  static_assert(kQChunkBytes % kTileAlignment == 0 && kBoxBytes % kTileAlignment == 0,
                "every TMA box starts on a swizzle atom");
};

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

// The CTA's work item as the producer decoded it (decode_item).
struct CtaWork {
  int seq;                   // params.seqs[seq] holds the row
  const SeqSpan* span;
  int m;                     // query block of the sequence
  int kv_head;
  const int32_t* order_row;  // the group's order row; null = dense (block n at rank n)
  int max_count;             // largest count of the active consumers
  int last_row;              // last valid row of the active consumers (-1: none)
};

// A work item as the producer decoded it (decode_item), handed to the consumers (and, with
// a decoder warp, to the loading thread) through the item ring: they read no global memory
// between items.
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
  uint64_t q_empty[Traits::kConsumers];  // one arrival per consumer warp: Q read for the last time
  ItemSlot item[kItemSlots];          // the items handed to the consumers
  uint64_t item_full[kItemSlots];     // the decoding thread's arrival
  uint64_t item_empty[kItemSlots];    // one arrival per consumer warp (+ the loading thread's with a decoder warp)
  uint64_t item_loaded[kItemSlots];   // with a decoder warp: the loading thread is done with the slot's item
  uint64_t k_full[Traits::kStages];   // producer arrival + TMA bytes
  uint64_t k_empty[Traits::kStages];  // one arrival per consumer warp
  uint64_t v_full[Traits::kStages];
  uint64_t v_empty[Traits::kStages];
  TileDesc desc[Traits::kStages];
};

// What one consumer warpgroup computes: kGroupRows query rows of one Q head.
using GroupWork = UnitWork;
// The heads of a KV group ranked by their count in one row, largest first (ties by head),
// by a whole warp (lane h holds local head h): with three consumers a CTA holds the pairs of
// two heads (three at block 64) and streams the largest count's tiles while the other heads'
// consumers idle, so the slots of a row take the heads in this order, neighbours in count
// (real layers' heads differ in count far more than the benchmark's 0.5x-1.5x spread). The pair numbering's
// place r is the head of rank r. Unranked (heads in order) when not asked for (kRank, or
// Params::rank_heads off), when dense or when a KV group has more heads than a warp has lanes.
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
                        ? __ldg(p.count + (span.qblock_begin + m) * p.num_q_heads + kv_head * heads_per_kv + lane)
                        : INT_MIN;
  int rank = 0;
  for (int j = 0; j < heads_per_kv; ++j) {
    const int other = __shfl_sync(0xffffffffu, count, j);
    rank += other > count || (other == count && j < lane) ? 1 : 0;
  }
  ranks.rank = lane < heads_per_kv ? rank : -1;
  return ranks;
}

// The value of lane 0 for the whole warp. Branches around wgmma must be provably uniform,
// or ptxas serialises every wgmma of the kernel (warning C7518); a broadcast is what its
// uniformity analysis recognises (as cutlass::canonical_warp_idx_sync does).
__device__ __forceinline__ int warp_uniform(int value) { return __shfl_sync(0xffffffffu, value, 0); }

// A position in the ring of K/V stages; the producer and every consumer walk it in step,
// across all the items of the CTA.
template <int kStages>
struct Ring {
  int stage = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == kStages) stage = 0, phase ^= 1;
  }
};

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
  cta.m = int(row - cta.span->qblock_begin);
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

// ---- producer ------------------------------------------------------------------------
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

// One item (with at least one kept block): Q tiles, then K/V tiles, the last one flagged.
// Run by the producer's loading thread. q_phase[c]: parity of consumer c's Q loads so far.
template <typename Traits>
__device__ __forceinline__ void produce_item(SharedStorage<Traits>& smem, const Params& params, const CtaWork& cta,
                                             const GroupWork (&group)[Traits::kConsumers],
                                             Ring<Traits::kStages>& ring, uint32_t (&q_phase)[Traits::kConsumers],
                                             const CUtensorMap* q_map, const CUtensorMap* k_map,
                                             const CUtensorMap* v_map) {
  const SeqSpan& span = *cta.span;
  const int token_begin = int(span.token_begin);  // the dispatcher keeps tokens within int32

  // Q of every active consumer, once it has read its previous Q for the last time.
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
                  group[c].head, token_begin + group[c].row0);
  }

  // K/V tiles: unit u (a half) is sub-block u % units_per_block of the block at rank
  // u / units_per_block of the order row; tile t holds units 2t and 2t + 1. A unit is
  // skipped when its block is outside [0, m] (a corrupt index), starts past the sequence
  // end, or lies wholly above the diagonal of every row of the CTA.
  const int block = params.block_size;
  const int units_per_block = block / kBoxRows;
  const int num_units = cta.max_count * units_per_block;
  auto block_at = [&](int rank) { return cta.order_row == nullptr ? rank : __ldg(cta.order_row + rank); };
  auto unit_key0 = [&](int unit, int n) {  // first key of the unit, or -1 when skipped
    if (n < 0 || n > cta.m) return -1;
    const int key0 = n * block + (unit % units_per_block) * kBoxRows;
    return key0 >= span.length || key0 > cta.last_row ? -1 : key0;
  };
  // Each tile is published once the next one is known, so that the item's last tile
  // carries kTileLast; an item whose units were all skipped closes with an empty stage.
  auto publish = [&](const TileDesc& desc, int token0, int token1) {
    // Arrival on a stage's full barrier, with the bytes of its tile to come (none for an
    // empty stage).
    auto copy = [&](uint64_t& full, uint8_t* tile, const CUtensorMap* map) {
      const uint32_t bar = smem_address(&full);
      if (desc.flags & kTileEmpty) {
        mbarrier_arrive(bar);
        return;
      }
      mbarrier_arrive_expect_tx(bar, Traits::kKvBytes);
      load_kv_tile<Traits>(smem_address(tile), map, bar, cta.kv_head, token0, token1);
    };
    // K: wait until every consumer warp released the stage, publish the tile, copy.
    mbarrier_wait(smem_address(&smem.k_empty[ring.stage]), ring.phase ^ 1);
    smem.desc[ring.stage] = desc;
    copy(smem.k_full[ring.stage], smem.k[ring.stage], k_map);
    // V, into the same stage of its own ring.
    mbarrier_wait(smem_address(&smem.v_empty[ring.stage]), ring.phase ^ 1);
    copy(smem.v_full[ring.stage], smem.v[ring.stage], v_map);
    ring.advance();
  };
  TileDesc held{};
  int held_token[2] = {0, 0};
  bool holding = false;
  for (int unit = 0; unit < num_units; unit += 2) {
    const int rank0 = unit / units_per_block, rank1 = (unit + 1) / units_per_block;
    const bool has_second = unit + 1 < num_units;
    const int n0 = block_at(rank0);
    const int n1 = !has_second ? -1 : rank1 == rank0 ? n0 : block_at(rank1);
    const int key0 = unit_key0(unit, n0);
    const int key1 = has_second ? unit_key0(unit + 1, n1) : -1;
    if (key0 < 0 && key1 < 0) continue;
    if (holding) publish(held, held_token[0], held_token[1]);
    held.key0[0] = key0;
    held.key0[1] = key1;
    held.rank[0] = rank0;
    held.rank[1] = rank1;
    held.needed = (key0 >= 0 ? 1u : 0u) | (key1 >= 0 ? 2u : 0u);
    held.flags = 0;
    held_token[0] = token_begin + (key0 >= 0 ? key0 : key1);  // a skipped half: the other's keys
    held_token[1] = token_begin + (key1 >= 0 ? key1 : key0);
    holding = true;
  }
  if (!holding) held = TileDesc{};
  held.flags = holding ? kTileLast : kTileLast | kTileEmpty;
  publish(held, held_token[0], held_token[1]);
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
  // No counter: one item per CTA (PROXYATTN_ATTN_PERSISTENT=0, a launch of `items` CTAs).
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

// ---- consumer ------------------------------------------------------------------------
// One item of sequence `span`: this consumer's rows `mine`; has_tiles: the producer streams
// K/V tiles for it (the largest count of the item's consumers is positive). q_phase: parity
// of this consumer's Q loads so far.
template <typename Traits>
__device__ __forceinline__ void consume_item(SharedStorage<Traits>& smem, const Params& params, const SeqSpan& span,
                                             bool has_tiles, const GroupWork& mine, int consumer, const Turns& turns,
                                             Ring<Traits::kStages>& ring, uint32_t& q_phase) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr float kNegInf = -INFINITY;
  constexpr float kLn2 = 0.693147180559945309f;
  const int thread = int(threadIdx.x) % kWarpgroupThreads;
  const int warp = thread / 32, lane = thread % 32;
  const int quad_row = lane / 4, quad_col = lane % 4;  // g and t of the register layouts
  const int length = span.length;
  const int row_lo = mine.row0 + 16 * warp + quad_row;  // this thread's rows: row_lo, row_lo + 8

  const uint32_t q_tile = smem_address(smem.q[consumer]);
  const uint64_t q_desc = make_descriptor(q_tile, kUnusedLeadingBytes, kAtomBytes);

  float o[Traits::kOutRegs];     // O accumulators, fp32 (m64nD layout)
  float s[Traits::kScoreRegs];   // scores, then probabilities (m64n128 layout)
  uint32_t p[Traits::kKeySteps][4];  // probabilities in the input type: A registers of P V
  float row_max[2] = {kNegInf, kNegInf};  // running max of scaled scores (log2 domain), rows lo/hi
  float row_sum[2] = {0.0f, 0.0f};        // this thread's share of the running denominators
#pragma unroll
  for (int i = 0; i < Traits::kOutRegs; ++i) o[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < Traits::kScoreRegs; ++i) s[i] = 0.0f;
#pragma unroll
  for (int k = 0; k < Traits::kKeySteps; ++k)
#pragma unroll
    for (int c = 0; c < 4; ++c) p[k][c] = 0u;

  // A CTA whose heads keep no block of this row runs no pipeline (producer included):
  // straight to the epilogue, O = 0 and LSE = -inf.
  bool q_held = mine.active && has_tiles;  // the producer's condition for this Q tile
  if (q_held) {
    mbarrier_wait(smem_address(&smem.q_full[consumer]), q_phase);
    q_phase ^= 1;
  }
  // Releases a stage to the producer: one arrival per warp, by lane 0, the only lane that
  // reads the stage's TileDesc (read_desc), so its release orders every generic read of the
  // stage before the producer's next write (the tiles themselves are read by wgmma, which
  // has completed before any release).
  auto release = [&](uint32_t bar) {
    if (lane == 0) mbarrier_arrive(bar);
  };
  // Once the item's last Q K^T product has completed, the producer may load the next Q
  // (while this consumer finishes the last softmax, P V and the epilogue).
  auto release_q = [&]() {
    if (q_held) release(smem_address(&smem.q_empty[consumer]));
    q_held = false;
  };

  // The TileDesc of a stage, read by lane 0 and broadcast (also makes it warp-uniform).
  auto read_desc = [&](int stage) {
    TileDesc d{};
    if (lane == 0) d = smem.desc[stage];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      d.key0[h] = warp_uniform(d.key0[h]);
      d.rank[h] = warp_uniform(d.rank[h]);
    }
    d.needed = uint32_t(warp_uniform(int(d.needed)));
    d.flags = uint32_t(warp_uniform(int(d.flags)));
    return d;
  };

  // The tile before the current one, whose P V product is still to be issued.
  bool pending = false, pending_on = false;
  int pending_stage = 0;
  uint32_t pending_phase = 0;
  float pending_correction[2] = {1.0f, 1.0f};

  // O = O * correction (skipped when no row of the warp moved its max), then issue
  // O += P V of the pending tile.
  auto issue_pv = [&]() {
    if (__any_sync(0xffffffffu, pending_correction[0] != 1.0f || pending_correction[1] != 1.0f)) {
#pragma unroll
      for (int i = 0; i < Traits::kOutRegs; ++i) o[i] *= pending_correction[(i % 4) / 2];
    }
    fence_registers(o);
    fence_registers(p);
    wgmma_fence();
    const uint64_t v_desc =
        make_descriptor(smem_address(smem.v[pending_stage]), Traits::kKvChunkBytes, kAtomBytes);
#pragma unroll
    for (int k = 0; k < Traits::kKeySteps; ++k)
      wgmma_rs<Element, D>(o, p[k], v_desc + descriptor_offset(k * kMmaK * kSwizzleBytes), 1);
    wgmma_commit();
    fence_registers(o);
    fence_registers(p);
  };

  // Issue S = Q K^T of the tile in `stage` (raw scores; the scale goes into the exponent).
  // Always the whole tile, also where this head keeps one half (the first consumer's
  // diagonal tile): branches between an n64 and an n128 product, or around the P V k-steps
  // of the masked half, make ptxas serialise every product of the kernel (C7520, measured
  // at compile time).
  auto issue_s = [&](int stage) {
    fence_registers(s);
    wgmma_fence();
    const uint64_t k_desc = make_descriptor(smem_address(smem.k[stage]), kUnusedLeadingBytes, kAtomBytes);
#pragma unroll
    for (int k = 0; k < Traits::kDimSteps; ++k) {
      const int chunk = k / Traits::kStepsPerChunk, within = (k % Traits::kStepsPerChunk) * kMmaStepBytes;
      wgmma_ss<Element, kTileKeys>(s, q_desc + descriptor_offset(chunk * Traits::kQChunkBytes + within),
                                   k_desc + descriptor_offset(chunk * Traits::kKvChunkBytes + within),
                                   k > 0 ? 1 : 0);
    }
    wgmma_commit();
    fence_registers(s);
  };

  // Mask S, then the online softmax: S becomes P (fp32), `correction` is what the O
  // accumulated so far must be multiplied by.
  auto softmax = [&](const TileDesc& desc, const bool (&half_on)[2], float (&correction)[2]) {
    // Causal mask inside the diagonal block, keys past the sequence end, halves this head
    // does not keep. Column 8 i + 2 t + (c % 2) of S is key key0[i / 8] + that % 64.
    bool needs_mask = false;
#pragma unroll
    for (int h = 0; h < 2; ++h)
      needs_mask |= !half_on[h] || desc.key0[h] + kBoxRows - 1 > mine.row0 || desc.key0[h] + kBoxRows > length;
    if (needs_mask) {
#pragma unroll
      for (int i = 0; i < Traits::kScoreTiles; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          constexpr int kTilesPerHalf = kBoxRows / kN8;
          const int h = i / kTilesPerHalf;
          const int key = desc.key0[h] + (i % kTilesPerHalf) * kN8 + 2 * quad_col + (c % 2);
          const int q_pos = row_lo + 8 * (c / 2);
          if (!half_on[h] || key > q_pos || key >= length) s[4 * i + c] = kNegInf;
        }
    }
    // Per row (its values sit in the 4 threads of a quad): the max moves only by more than
    // kRescaleBound (common/online_softmax.cuh; then `correction` is what the O accumulated so far must be
    // multiplied by, else 1), S becomes P = exp2(S * scale_log2 - max).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = kNegInf;
#pragma unroll
      for (int i = 0; i < Traits::kScoreTiles; ++i)
        tile_max = fmaxf(tile_max, fmaxf(s[4 * i + 2 * r], s[4 * i + 2 * r + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      // A row's first key always moves it (-inf + bound = -inf).
      const float scaled = tile_max * params.scale_log2;
      const bool moves = scaled > row_max[r] + kRescaleBound;
      const float new_max = moves ? scaled : row_max[r];
      // A row with no key yet keeps max -inf; exponents then use 0 so that no -inf - -inf
      // NaN appears (its probabilities are exp2(-inf) = 0).
      const float base = new_max == kNegInf ? 0.0f : new_max;
      correction[r] = moves ? fast_exp2(row_max[r] - base) : 1.0f;
      row_max[r] = new_max;
      float tile_sum = 0.0f;
#pragma unroll
      for (int i = 0; i < Traits::kScoreTiles; ++i)
#pragma unroll
        for (int c = 2 * r; c < 2 * r + 2; ++c) {
          const float prob = fast_exp2(fmaf(s[4 * i + c], params.scale_log2, -base));
          s[4 * i + c] = prob;
          tile_sum += prob;
        }
      row_sum[r] = row_sum[r] * correction[r] + tile_sum;
    }
  };

  // P rounded to the input type: n8 tiles 2k and 2k + 1 of S are the A registers of k-step k.
  auto pack_p = [&]() {
#pragma unroll
    for (int k = 0; k < Traits::kKeySteps; ++k)
#pragma unroll
      for (int c = 0; c < 4; ++c) p[k][c] = ElementTraits<Element>::pack(s[8 * k + 2 * c], s[8 * k + 2 * c + 1]);
  };

  // Every wgmma group is waited for in the branch that issued it: ptxas's register
  // tracking does not correlate conditions, and would otherwise serialise the products.
  while (has_tiles) {
    const int stage = ring.stage;
    const uint32_t phase = ring.phase;
    // ---- K of tile j landed: which halves does this head keep?
    mbarrier_wait(smem_address(&smem.k_full[stage]), phase);
    const TileDesc desc = read_desc(stage);
    if (desc.flags & kTileEmpty) {  // an item without tiles: release the stage in both rings
      release(smem_address(&smem.k_empty[stage]));
      mbarrier_wait(smem_address(&smem.v_full[stage]), phase);
      release(smem_address(&smem.v_empty[stage]));
      ring.advance();
      break;
    }
    const bool last = (desc.flags & kTileLast) != 0;
    bool half_on[2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
      half_on[h] = ((desc.needed >> h) & 1u) && desc.rank[h] < mine.count && desc.key0[h] <= mine.last_row;
    const bool on = warp_uniform(half_on[0] || half_on[1]);  // the same over the warpgroup
    const uint32_t k_empty = smem_address(&smem.k_empty[stage]);
    const uint32_t v_full_pending = smem_address(&smem.v_full[pending_stage]);
    const uint32_t v_empty_pending = smem_address(&smem.v_empty[pending_stage]);
    float correction[2] = {1.0f, 1.0f};
    if (on && pending_on) {
      // S_j, then the previous tile's P V; softmax of S_j runs under the P V product.
      turns.wait();
      issue_s(stage);
      mbarrier_wait(v_full_pending, pending_phase);
      issue_pv();
      turns.pass();
      wgmma_wait<1>();
      fence_registers(s);
      release(k_empty);
      if (last) release_q();
      softmax(desc, half_on, correction);
      wgmma_wait<0>();
      fence_registers(o);
      fence_registers(p);
      release(v_empty_pending);
      pack_p();
    } else if (on) {
      // No previous product (first tile, or the previous one not kept by this head).
      turns.wait();
      issue_s(stage);
      turns.pass();
      if (pending) mbarrier_wait(v_full_pending, pending_phase);
      wgmma_wait<0>();
      fence_registers(s);
      release(k_empty);
      if (last) release_q();
      softmax(desc, half_on, correction);
      if (pending) release(v_empty_pending);
      pack_p();
    } else {
      // A tile another head of the CTA keeps: release it, finish the previous product.
      release(k_empty);
      if (last) release_q();
      if (pending) mbarrier_wait(v_full_pending, pending_phase);
      turns.wait();
      if (pending_on) {
        issue_pv();
        turns.pass();
        wgmma_wait<0>();
        fence_registers(o);
        fence_registers(p);
      } else {
        turns.pass();
      }
      if (pending) release(v_empty_pending);
    }
    pending = true;
    pending_on = on;
    pending_stage = stage;
    pending_phase = phase;
    pending_correction[0] = correction[0];
    pending_correction[1] = correction[1];
    ring.advance();
    if (last) break;
  }
  release_q();  // an item without tiles

  // ---- the last tile's P V.
  if (pending) {
    mbarrier_wait(smem_address(&smem.v_full[pending_stage]), pending_phase);
    if (pending_on) {
      issue_pv();
      wgmma_wait<0>();
      fence_registers(o);
      fence_registers(p);
    }
    release(smem_address(&smem.v_empty[pending_stage]));
  }
  if (!mine.active) return;

  // ---- Epilogue: O = acc / l staged in this consumer's O buffer (row-major, 16-byte
  // vectors XOR-swizzled by row % 8), then 16-byte stores of the valid rows;
  // LSE = ln(l) + max. A row that saw no key gets O = 0, LSE = -inf.
  const uint32_t o_tile = smem_address(smem.o[consumer]);
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = row_sum[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    inv[r] = l > 0.0f ? 1.0f / l : 0.0f;
    const int row = row_lo + 8 * r;
    if (params.lse != nullptr && quad_col == 0 && row < length)
      params.lse[int64_t(mine.head) * params.total_tokens + span.token_begin + row] =
          l > 0.0f ? (row_max[r] + log2f(l)) * kLn2 : kNegInf;
  }
  named_barrier_sync(kBarrierEpilogue + consumer, kWarpgroupThreads);  // the previous item's reads are done
#pragma unroll
  for (int i = 0; i < Traits::kOutTiles; ++i)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = 16 * warp + quad_row + 8 * r;  // row % 8 == quad_row
      const uint32_t address =
          o_tile + row * Traits::kOutRowBytes + ((i ^ quad_row) * 16) + quad_col * 4;
      st_shared_32(address, ElementTraits<Element>::pack(o[4 * i + 2 * r] * inv[r], o[4 * i + 2 * r + 1] * inv[r]));
    }
  named_barrier_sync(kBarrierEpilogue + consumer, kWarpgroupThreads);
  Element* o_base = static_cast<Element*>(params.o.data) + span.token_begin * params.o.token_stride +
                    int64_t(mine.head) * params.o.head_stride;
  constexpr int kRowVectors = D / Traits::kVectorElems;
  for (int i = thread; i < kGroupRows * kRowVectors; i += kWarpgroupThreads) {
    const int r = i / kRowVectors, vc = i % kRowVectors;
    if (mine.row0 + r >= length) continue;
    const uint4 value =
        *reinterpret_cast<const uint4*>(smem.o[consumer] + r * Traits::kOutRowBytes + ((vc ^ (r % 8)) * 16));
    *reinterpret_cast<uint4*>(o_base + int64_t(mine.row0 + r) * params.o.token_stride + vc * Traits::kVectorElems) =
        value;
  }
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    attention_kernel(const __grid_constant__ Params params, const __grid_constant__ CUtensorMap q_map,
                     const __grid_constant__ CUtensorMap k_map, const __grid_constant__ CUtensorMap v_map) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(kTileAlignment) unsigned char smem_bytes[];
  SharedStorage<Traits>& smem = *reinterpret_cast<SharedStorage<Traits>*>(smem_bytes);
  constexpr int kConsumers = Traits::kConsumers;
  if (smem_address(smem_bytes) % kTileAlignment != 0) __trap();  // the swizzle atoms need it

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int role = warp_uniform(warp / kWarpsPerGroup);  // 0: producer, 1 + c: consumer c
  const int64_t items = int64_t(params.num_rows) * params.num_kv_heads * params.slots_per_row;

  // ---- Barriers, then the roles, each walking the items the producer takes.
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < kItemSlots; ++i) {
      mbarrier_init(smem_address(&smem.item_full[i]), 1);
      mbarrier_init(smem_address(&smem.item_empty[i]), kConsumers * kWarpsPerGroup + (Traits::kRankHeads ? 1 : 0));
    }
#pragma unroll
    for (int c = 0; c < kConsumers; ++c) {
      mbarrier_init(smem_address(&smem.q_full[c]), 1);
      mbarrier_init(smem_address(&smem.q_empty[c]), kWarpsPerGroup);
    }
#pragma unroll
    for (int s = 0; s < Traits::kStages; ++s) {
      mbarrier_init(smem_address(&smem.k_full[s]), 1);
      mbarrier_init(smem_address(&smem.v_full[s]), 1);
      mbarrier_init(smem_address(&smem.k_empty[s]), kConsumers * kWarpsPerGroup);
      mbarrier_init(smem_address(&smem.v_empty[s]), kConsumers * kWarpsPerGroup);
    }
#pragma unroll
    for (int i = 0; i < kItemSlots; ++i) mbarrier_init(smem_address(&smem.item_loaded[i]), 1);
    mbarrier_init_fence();
  }
  __syncthreads();

  Ring<Traits::kStages> ring;
  Ring<kItemSlots> item_ring;
  if (role == 0) {
    registers_release<Traits::kProducerRegisters>();
    // Thread 0 loads (TMA); with kRankHeads a warp of its own decodes the items (ranking each
    // one's heads with its lanes) and hands them to thread 0 through the item ring, as to
    // the consumers; else thread 0 decodes them too. The rest of the warpgroup leaves.
    // (Version 21 had the decoding warp walk the tiles too, lane 0 issuing: 8-11% at short
    // rows; version 22, lane 0 alone walking while the other lanes waited: slower still.)
    uint32_t q_phase[kConsumers] = {};
    CtaWork cta;
    GroupWork group[kConsumers];
    if (threadIdx.x == 0) {
      tma_prefetch_descriptor(&q_map);
      tma_prefetch_descriptor(&k_map);
      tma_prefetch_descriptor(&v_map);
    }
    if constexpr (Traits::kRankHeads) {
      if (warp == kDecoderWarp) {
        // The next item is taken once thread 0 has loaded the current one, when a single
        // producer thread would take it: taken earlier, items wait in a CTA's slots while
        // other CTAs run dry (version 23's first run: up to 1.45x slower at 8K-16K with
        // uneven budgets). Except behind a short item while many items remain (version 24):
        // then the decoder holds one more (both slots), so that the next item's decoding and
        // Q load wait under the short one's tiles, and a held item waits a short item's time
        // at most. Item j's load completes a phase of its slot's item_loaded barrier; the
        // decoder waits for every item's load once, in order, before it reuses that item's
        // slot at the latest, so no barrier runs two phases ahead of its waits.
        int64_t taken = 0, loaded = 0, ahead = 0;
        for (bool first = true;; first = false) {
          for (; loaded < taken - ahead; ++loaded)  // items [0, taken - ahead) loaded
            mbarrier_wait(smem_address(&smem.item_loaded[loaded % kItemSlots]),
                          uint32_t(loaded / kItemSlots) & 1u);
          const int64_t item = take_item<Traits>(smem, params, items, first, item_ring, cta, group);
          if (item >= items) break;
          ++taken;
          // Items held beyond the one thread 0 loads: one after a short item, while many
          // items per CTA remain.
          ahead = cta.max_count <= kLookaheadMaxBlocks && item < items - int64_t(kLookaheadMarginPerCta) * gridDim.x
                      ? 1 : 0;
        }
      } else if (threadIdx.x == 0) {
        for (;;) {
          const int slot_index = item_ring.stage;
          mbarrier_wait(smem_address(&smem.item_full[slot_index]), item_ring.phase);
          const ItemSlot& slot = smem.item[slot_index];
          const bool end = slot.end != 0;
          if (!end) {
            cta = slot.cta;
#pragma unroll
            for (int c = 0; c < kConsumers; ++c) group[c] = slot.group[c];
          }
          mbarrier_arrive(smem_address(&smem.item_empty[slot_index]));
          item_ring.advance();
          if (end) break;
          if (cta.max_count > 0)
            produce_item<Traits>(smem, params, cta, group, ring, q_phase, &q_map, &k_map, &v_map);
          mbarrier_arrive(smem_address(&smem.item_loaded[slot_index]));
        }
      }
    } else if (threadIdx.x == 0) {
      for (bool first = true; take_item<Traits>(smem, params, items, first, item_ring, cta, group) < items;
           first = false)
        if (cta.max_count > 0)
          produce_item<Traits>(smem, params, cta, group, ring, q_phase, &q_map, &k_map, &v_map);
    }
    return;
  }
  registers_acquire<Traits::kConsumerRegisters>();
  const int consumer = role - 1;
  const Turns turns{params.consumer_turns != 0, kBarrierTurn + consumer, kBarrierTurn + (consumer + 1) % kConsumers};
  if (consumer == kConsumers - 1) turns.pass();
  uint32_t q_phase = 0;
  for (;;) {
    // The next item as the producer decoded it, read by lane 0 and broadcast (uniform for
    // the branches around wgmma); the slot goes back once every warp has it.
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
    if (warp_uniform(end)) break;
    mine.active = warp_uniform(mine.active ? 1 : 0) != 0;
    mine.head = warp_uniform(mine.head);
    mine.row0 = warp_uniform(mine.row0);
    mine.last_row = warp_uniform(mine.last_row);
    mine.count = warp_uniform(mine.count);
    consume_item<Traits>(smem, params, params.seqs[warp_uniform(seq)], warp_uniform(max_count) > 0, mine,
                         consumer, turns, ring, q_phase);
  }
  if (consumer == 0) turns.wait();
#endif
}

}  // namespace proxyattn::cuda::attention::sm90
