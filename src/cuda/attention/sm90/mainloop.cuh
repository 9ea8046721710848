// The mainloop of an sm90 consumer warpgroup (kGroupRows query rows of one head, a pair of
// params.hpp) over one item: S = Q K^T with wgmma (Q and K from shared memory), mask and
// online softmax in fp32 registers (softmax.cuh), O += P V with wgmma (P from registers, V
// from shared memory), then the epilogue (epilogue.cuh).
//
// Intra-warpgroup overlap (FA3): in the iteration of tile j
//   issue S_j = Q K_j^T | rescale O, issue O += P_{j-1} V_{j-1} | wait S_j, release K_j |
//   mask + softmax of S_j (under the P V product) | wait P V, release V_{j-1} | P_j = S_j
// The products of an iteration are issued in the consumer's turn (pingpong.cuh), so the
// consumers' softmaxes fall between each other's products.
//
// Ring protocol (shared_storage.cuh): every consumer waits on every tile's barriers and
// releases every stage, also a tile it skips (kept by another head of the CTA), so the
// ring's phases stay in step. The producer flags each item's last tile (an item whose units
// were all skipped gets one empty stage), and the consumers release Q as soon as that
// tile's Q K^T product has completed, so that the next item's Q loads under the last
// softmax, P V and the epilogue.
//
// consume_item owns the item's registers (O, S, P, the rows' statistics); the helpers take
// them, and every value they share, by reference, so that the compiler optimises the loop
// with all of them as locals of one function (a helper owning the accumulators, or
// recomputing the thread's geometry, changed ptxas's register allocation).
#pragma once

#include <cmath>
#include <cstdint>

#include "attention/params.hpp"
#include "attention/sm90/epilogue.cuh"
#include "attention/sm90/kernel_traits.cuh"
#include "attention/sm90/pingpong.cuh"
#include "attention/sm90/shared_storage.cuh"
#include "attention/sm90/softmax.cuh"
#include "attention/sm90/tma.cuh"
#include "attention/sm90/wgmma.cuh"
#include "common/mma_sm80.cuh"

namespace proxyattn::cuda::attention::sm90 {

// Releases a stage to the producer: one arrival per warp, by lane 0, the only lane that
// reads the stage's TileDesc (read_desc), so its release orders every generic read of the
// stage before the producer's next write (the tiles themselves are read by wgmma, which has
// completed before any release).
__device__ __forceinline__ void release(int lane, uint32_t bar) {
  if (lane == 0) mbarrier_arrive(bar);
}

// Once the item's last Q K^T product has completed, the producer may load the next Q (while
// this consumer finishes the last softmax, P V and the epilogue). q_held: this consumer
// holds a Q tile the producer loaded (cleared).
template <typename Traits>
__device__ __forceinline__ void release_q(SharedStorage<Traits>& smem, int consumer, int lane, bool& q_held) {
  if (q_held) release(lane, smem_address(&smem.q_empty[consumer]));
  q_held = false;
}

// The TileDesc of a stage, read by lane 0 and broadcast (also makes it warp-uniform).
template <typename Traits>
__device__ __forceinline__ TileDesc read_desc(const SharedStorage<Traits>& smem, int lane, int stage) {
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
}

// Issue S = Q K^T of the tile in `stage` (raw scores; the scale goes into the exponent).
// Always the whole tile, also where this head keeps one half (the first consumer's
// diagonal tile): branches between an n64 and an n128 product, or around the P V k-steps
// of the masked half, make ptxas serialise every product of the kernel (C7520, measured
// at compile time).
template <typename Traits>
__device__ __forceinline__ void issue_s(float (&s)[Traits::kScoreRegs], uint64_t q_desc,
                                        SharedStorage<Traits>& smem, int stage) {
  using Element = typename Traits::Element;
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
}

// O = O * correction (skipped when no row of the warp moved its max), then issue O += P V
// of the tile in `stage`.
template <typename Traits>
__device__ __forceinline__ void issue_pv(float (&o)[Traits::kOutRegs], uint32_t (&p)[Traits::kKeySteps][4],
                                         const float (&correction)[2], int stage, SharedStorage<Traits>& smem) {
  using Element = typename Traits::Element;
  if (__any_sync(0xffffffffu, correction[0] != 1.0f || correction[1] != 1.0f)) {
#pragma unroll
    for (int i = 0; i < Traits::kOutRegs; ++i) o[i] *= correction[(i % 4) / 2];
  }
  fence_registers(o);
  fence_registers(p);
  wgmma_fence();
  const uint64_t v_desc = make_descriptor(smem_address(smem.v[stage]), Traits::kKvChunkBytes, kAtomBytes);
#pragma unroll
  for (int k = 0; k < Traits::kKeySteps; ++k)
    wgmma_rs<Element, Traits::kHeadDim>(o, p[k], v_desc + descriptor_offset(k * kMmaK * kSwizzleBytes), 1);
  wgmma_commit();
  fence_registers(o);
  fence_registers(p);
}

// Waits for the P V product issued last.
template <typename Traits>
__device__ __forceinline__ void wait_pv(float (&o)[Traits::kOutRegs], uint32_t (&p)[Traits::kKeySteps][4]) {
  wgmma_wait<0>();
  fence_registers(o);
  fence_registers(p);
}

// P rounded to the input type: n8 tiles 2k and 2k + 1 of S are the A registers of k-step k.
template <typename Traits>
__device__ __forceinline__ void pack_p(uint32_t (&p)[Traits::kKeySteps][4], const float (&s)[Traits::kScoreRegs]) {
  using Element = typename Traits::Element;
#pragma unroll
  for (int k = 0; k < Traits::kKeySteps; ++k)
#pragma unroll
    for (int c = 0; c < 4; ++c) p[k][c] = ElementTraits<Element>::pack(s[8 * k + 2 * c], s[8 * k + 2 * c + 1]);
}

// One item of sequence `span`: this consumer's rows `mine`; has_tiles: the producer streams
// K/V tiles for it (the largest count of the item's consumers is positive). q_phase: parity
// of this consumer's Q loads so far.
template <typename Traits>
__device__ __forceinline__ void consume_item(SharedStorage<Traits>& smem, const Params& params, const SeqSpan& span,
                                             bool has_tiles, const GroupWork& mine, int consumer, const Turns& turns,
                                             Ring<Traits::kStages>& ring, uint32_t& q_phase) {
  const int thread = int(threadIdx.x) % kWarpgroupThreads;
  const int warp = thread / 32, lane = thread % 32;
  const int quad_row = lane / 4, quad_col = lane % 4;
  const TileThread at{thread, warp, lane, quad_row, quad_col, mine.row0 + 16 * warp + quad_row, span.kv_length};

  const uint32_t q_tile = smem_address(smem.q[consumer]);
  const uint64_t q_desc = make_descriptor(q_tile, kUnusedLeadingBytes, kAtomBytes);

  float o[Traits::kOutRegs];         // O accumulators, fp32 (m64nD layout)
  float s[Traits::kScoreRegs];       // scores, then probabilities (m64n128 layout)
  uint32_t p[Traits::kKeySteps][4];  // probabilities in the input type: A registers of P V
  float row_max[2] = {-INFINITY, -INFINITY};  // running max of scaled scores (log2 domain), rows lo/hi
  float row_sum[2] = {0.0f, 0.0f};            // this thread's share of the running denominators
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

  // The tile before the current one, whose P V product is still to be issued.
  bool pending = false, pending_on = false;
  int pending_stage = 0;
  uint32_t pending_phase = 0;
  float pending_correction[2] = {1.0f, 1.0f};

  // Every wgmma group is waited for in the branch that issued it: ptxas's register
  // tracking does not correlate conditions, and would otherwise serialise the products.
  while (has_tiles) {
    const int stage = ring.stage;
    const uint32_t phase = ring.phase;
    // ---- K of tile j landed: which halves does this head keep?
    mbarrier_wait(smem_address(&smem.k_full[stage]), phase);
    const TileDesc desc = read_desc(smem, lane, stage);
    if (desc.flags & kTileEmpty) {  // an item without tiles: release the stage in both rings
      release(lane, smem_address(&smem.k_empty[stage]));
      mbarrier_wait(smem_address(&smem.v_full[stage]), phase);
      release(lane, smem_address(&smem.v_empty[stage]));
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
      issue_s<Traits>(s, q_desc, smem, stage);
      mbarrier_wait(v_full_pending, pending_phase);
      issue_pv<Traits>(o, p, pending_correction, pending_stage, smem);
      turns.pass();
      wgmma_wait<1>();
      fence_registers(s);
      release(lane, k_empty);
      if (last) release_q(smem, consumer, lane, q_held);
      softmax_tile<Traits>(s, desc, half_on, mine, at, params.scale_log2, row_max, row_sum, correction);
      wait_pv<Traits>(o, p);
      release(lane, v_empty_pending);
      pack_p<Traits>(p, s);
    } else if (on) {
      // No previous product (first tile, or the previous one not kept by this head).
      turns.wait();
      issue_s<Traits>(s, q_desc, smem, stage);
      turns.pass();
      if (pending) mbarrier_wait(v_full_pending, pending_phase);
      wgmma_wait<0>();
      fence_registers(s);
      release(lane, k_empty);
      if (last) release_q(smem, consumer, lane, q_held);
      softmax_tile<Traits>(s, desc, half_on, mine, at, params.scale_log2, row_max, row_sum, correction);
      if (pending) release(lane, v_empty_pending);
      pack_p<Traits>(p, s);
    } else {
      // A tile another head of the CTA keeps: release it, finish the previous product.
      release(lane, k_empty);
      if (last) release_q(smem, consumer, lane, q_held);
      if (pending) mbarrier_wait(v_full_pending, pending_phase);
      turns.wait();
      if (pending_on) {
        issue_pv<Traits>(o, p, pending_correction, pending_stage, smem);
        turns.pass();
        wait_pv<Traits>(o, p);
      } else {
        turns.pass();
      }
      if (pending) release(lane, v_empty_pending);
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
  release_q(smem, consumer, lane, q_held);  // an item without tiles

  // ---- the last tile's P V.
  if (pending) {
    mbarrier_wait(smem_address(&smem.v_full[pending_stage]), pending_phase);
    if (pending_on) {
      issue_pv<Traits>(o, p, pending_correction, pending_stage, smem);
      wait_pv<Traits>(o, p);
    }
    release(lane, smem_address(&smem.v_empty[pending_stage]));
  }
  if (!mine.active) return;
  epilogue<Traits>(smem, params, span, mine, consumer, o, row_max, row_sum, at);
}

}  // namespace proxyattn::cuda::attention::sm90
