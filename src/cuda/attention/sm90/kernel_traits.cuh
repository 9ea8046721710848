// Every shape and resource split of the sm90 attention kernel (kernel.cuh): the geometry of
// its TMA boxes and wgmma operands (128-byte swizzle, wgmma.cuh), the register split between
// the producer and the consumer warpgroups (setmaxnreg), the named barriers, and
// KernelTraits, which derives the rest from the element type and head_dim.
#pragma once

#include <cstdint>

#include "attention/params.hpp"

namespace proxyattn::cuda::attention::sm90 {

inline constexpr int kWarpgroupThreads = 128;
inline constexpr int kWarpsPerGroup = 4;
inline constexpr int kSwizzleBytes = 128;                  // one swizzled row: 64 16-bit elements
inline constexpr int kSwizzleElems = kSwizzleBytes / 2;    // columns of a TMA box
inline constexpr int kAtomBytes = 8 * kSwizzleBytes;       // 8 rows: swizzle period, descriptor row-group step
inline constexpr int kTileAlignment = kAtomBytes;
inline constexpr int kBoxRows = kKeyBoxRows;               // rows of one TMA box: half a K/V tile
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

// Named barriers (id 0 is __syncthreads): the epilogue of consumer c syncs its warpgroup on
// kBarrierEpilogue + c; consumer c waits for its turn (Turns, pingpong.cuh) on kBarrierTurn + c.
enum NamedBarrier : int { kBarrierEpilogue = 1, kBarrierTurn = kBarrierEpilogue + kMaxConsumers };
static_assert(kBarrierTurn + kMaxConsumers <= 16, "16 named barriers per CTA");

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
  // ranks the heads by count (head_ranking.cuh), and with two one thread decodes and loads
  // (a ranking warp costs d = 128 about 3%: bench/results/attention-sm90-v19-d128-*). At block 64 or packed by
  // heads, d = 128 CTAs also mix heads, unranked (not measured).
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

}  // namespace proxyattn::cuda::attention::sm90
