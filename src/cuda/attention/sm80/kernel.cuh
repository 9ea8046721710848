// Block-sparse causal attention forward for sm_80 and later (mma.sync), FlashAttention-2
// style: one CTA per work item of params.hpp (kWarps warps x kWarpRows query rows), K/V
// tiles of kTileKeys keys streamed through shared memory in the order of the block index,
// online softmax in fp32 registers, O and LSE written once at the end.
//
// Pipeline of one K/V tile i (single K and V buffers, FA2's overlap):
//   wait K[i]; barrier | copy V[i]    | S = Q K[i]^T, mask, softmax
//   wait V[i]; barrier | copy K[i+1]  | O += P V[i]
// so each copy runs under the other half's tensor-core work.
#pragma once

#include <cmath>
#include <cstdint>

#include "attention/params.hpp"
#include "attention/work_list.cuh"
#include "common/mma_sm80.cuh"
#include "common/online_softmax.cuh"

namespace proxyattn::cuda::attention::sm80 {

// Alignment of the shared-memory tiles, which lane_address() relies on.
inline constexpr int kTileAlignment = 1024;

// Every shape of the kernel, derived from the element type and head_dim.
template <typename Element_, int kHeadDim_>
struct KernelTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kCtaRows = kWarps * kWarpRows;            // query rows of a CTA
  static constexpr int kVectorElems = 16 / int(sizeof(Element));  // elements of one 16-byte copy
  static constexpr int kRowVectors = kHeadDim / kVectorElems;     // 16-byte vectors per row
  static constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;
  static constexpr int kWarpMTiles = kWarpRows / kMmaM;   // m16 tiles per warp
  static constexpr int kKeyNTiles = kTileKeys / kMmaN;    // n8 tiles of S per m16 tile
  static constexpr int kDimNTiles = kHeadDim / kMmaN;     // n8 tiles of O per m16 tile
  static constexpr int kDimKSteps = kHeadDim / kMmaK;     // k16 steps of Q K^T
  static constexpr int kKeyKSteps = kTileKeys / kMmaK;    // k16 steps of P V
  // Two CTAs per SM: caps registers at 65536 / (2 * 128) = 256 per thread, about what the
  // O accumulators (kWarpMTiles * kDimNTiles * 4 = 128 floats at d = 128) and S (64
  // floats) need; shared memory (64 KiB at d = 128) allows it too. At d = 128 ptxas still
  // spills 8 bytes for sm_90 and 12 for sm_80 (loop-invariant scalars).
  static constexpr int kMinCtasPerSm = 2;

  static_assert(sizeof(Element) == 2, "16-bit elements (bf16, fp16)");
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  static_assert(kRowVectors >= 8, "the XOR swizzle permutes 8 vectors of a row");
  static_assert((kTileKeys * kRowVectors) % kThreads == 0, "K/V tile copies split evenly");
  static_assert(kWarpRows % kMmaM == 0 && kTileKeys % (2 * kMmaN) == 0, "ldmatrix.x4 pairs n8 tiles");
  static constexpr int kRowBytes = kHeadDim * 2;
  static_assert((kWarpRows * kRowBytes) % kTileAlignment == 0 && (kTileKeys * kRowBytes) % kTileAlignment == 0,
                "every tile of SharedStorage starts 1024-byte aligned (lane_address)");
};

// Shared memory of one CTA; its sizeof is the launch's dynamic shared memory. Tiles are
// row-major with 16-byte vectors XOR-swizzled by row % 8 (see swizzle()).
template <typename Traits>
struct alignas(kTileAlignment) SharedStorage {
  uint16_t q[Traits::kCtaRows * Traits::kHeadDim];  // (kCtaRows, d): warp w owns rows [32w, 32w+32); O staging at the end
  uint16_t k[kTileKeys * Traits::kHeadDim];         // (kTileKeys, d)
  uint16_t v[kTileKeys * Traits::kHeadDim];         // (kTileKeys, d)
};

// Element offset of (row, col) in a (rows, kHeadDim) tile, col a multiple of 8: 16-byte
// vector c of row r is stored at vector c ^ (r % 8), so the 8 rows an ldmatrix phase (or a
// copy) touches at one column land in 8 different bank groups.
template <int kHeadDim>
__device__ __forceinline__ int swizzle(int row, int col) {
  return row * kHeadDim + (((col >> 3) ^ (row & 7)) << 3);
}

// Inner loops address a tile as (lane base) ^ (step constant) + (row step): with tiles
// 1024-byte aligned, rows of >= 128 bytes and the vector index of a step (2 * k-step) in
// bits the lane part leaves clear, moving 16 columns right flips bit 5 upwards of the byte
// address (XOR of an immediate) and moving whole 8-row groups adds a multiple of 8 rows
// without touching the swizzle. So one register per operand holds the lane's address.
template <int kHeadDim>
__device__ __forceinline__ uint32_t lane_address(const uint16_t* tile, int row, int col) {
  return smem_address(tile) + 2u * uint32_t(swizzle<kHeadDim>(row, col));
}
// Byte XOR that moves a lane address from column c to column c + 16 * step (step < d / 16).
__device__ __forceinline__ constexpr uint32_t column_step(int step) { return uint32_t(step) << 5; }

// What one warp of the CTA computes: kWarpRows query rows of one Q head.
using WarpWork = UnitWork;
__device__ __forceinline__ WarpWork warp_work(const Params& p, const SeqSpan& span, int m, int kv_head,
                                              int slot, int warp) {
  return unit_work<kWarpRows, kWarps>(p, span, m, kv_head, slot, warp);
}

// Copies kTileKeys rows starting at key position key0 of one KV head into a swizzled tile,
// all threads of the CTA together; rows past the sequence end are zero-filled (V rows must
// be finite: their probabilities are 0, and 0 * NaN would poison O). A thread copies one
// 16-byte column vector of every kPassRows-th row. Packed keys (kPaged false): head_base
// points at the sequence's first key, so a tile is one run of consecutive rows. A paged
// cache: a tile lies in one page when pages hold a multiple of kTileKeys tokens, and smaller
// pages take a row lookup each (copy_kv_tile_rows). The packed kernel is compiled apart so
// that its tile loop carries no page lookup (a runtime test there cost it ~5%). A whole
// contiguous tile (all but a sequence's last) takes the unrolled passes: a pointer increment
// and an immediate shared-memory offset each, no bounds test. The other tiles' passes stay a
// rolled loop, because unrolled per-pass offsets would be hoisted out of the tile loop and
// cost ~50 registers the accumulators need.
// Pages of fewer than kTileKeys tokens: each row of the tile looked up in the block table.
template <typename Traits>
__device__ __forceinline__ void copy_kv_tile_rows(uint32_t dst, const typename Traits::Element* head_base,
                                               int64_t token_stride, int key0, int r0, int c,
                                               const Params& params, const SeqSpan& span) {
  constexpr int kPassRows = Traits::kThreads / Traits::kRowVectors;
  const auto* first = head_base + key_token(params, span, key0) * token_stride + c;  // valid for zero-fill
#pragma unroll 1
  for (int r = r0; r < kTileKeys; r += kPassRows) {
    const bool inside = key0 + r < span.kv_length;
    const auto* src = inside ? head_base + key_token(params, span, key0 + r) * token_stride + c : first;
    cp_async_16(dst, src, inside);
    dst += kPassRows * Traits::kRowBytes;
  }
}

template <typename Traits, bool kPaged>
__device__ __forceinline__ void copy_kv_tile(uint16_t* tile, const typename Traits::Element* head_base,
                                             int64_t token_stride, int key0, const Params& params,
                                             const SeqSpan& span) {
  constexpr int kPassRows = Traits::kThreads / Traits::kRowVectors;
  constexpr int kPasses = kTileKeys / kPassRows;
  static_assert(kPassRows % 8 == 0, "a pass keeps the swizzle phase (row % 8) of each thread");
  const int length = span.kv_length;
  const int r0 = int(threadIdx.x) / Traits::kRowVectors;
  const int c = (int(threadIdx.x) % Traits::kRowVectors) * Traits::kVectorElems;
  uint32_t dst = smem_address(tile + swizzle<Traits::kHeadDim>(r0, c));
  int64_t row0 = key0;
  if constexpr (kPaged) {
    if (params.page_size % kTileKeys != 0) {
      copy_kv_tile_rows<Traits>(dst, head_base, token_stride, key0, r0, c, params, span);
      return;
    }
    row0 = key_token(params, span, key0);
  }
  const auto* first = head_base + row0 * token_stride + c;  // a valid address for zero-fill
  const auto* src = first + int64_t(r0) * token_stride;
  const int64_t step = kPassRows * token_stride;
  if (key0 + kTileKeys <= length) {
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass) {
      cp_async_16(dst + pass * kPassRows * Traits::kRowBytes, src, true);
      src += step;
    }
    return;
  }
#pragma unroll 1
  for (int r = r0; r < kTileKeys; r += kPassRows) {
    const bool inside = key0 + r < length;
    cp_async_16(dst, inside ? src : first, inside);
    src += step;
    dst += kPassRows * Traits::kRowBytes;
  }
}

// kPaged: K and V in a paged cache (params.block_table), else packed (copy_kv_tile).
template <typename Traits, bool kPaged>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    attention_kernel(const __grid_constant__ Params params) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr float kNegInf = -INFINITY;
  extern __shared__ __align__(kTileAlignment) unsigned char smem_bytes[];
  SharedStorage<Traits>& smem = *reinterpret_cast<SharedStorage<Traits>*>(smem_bytes);
  if (smem_address(smem_bytes) % kTileAlignment != 0) __trap();  // lane_address() needs it

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int quad_row = lane / 4, quad_col = lane % 4;  // g and t of the fragment layouts

  // ---- Work item blockIdx.x (params.hpp: item_position).
  const ItemPosition position = item_position(params, blockIdx.x);
  const int slot = position.slot, kv_head = position.kv_head;
  const int64_t row = position.row;
  const SeqSpan& span = params.seqs[find_seq(params, row)];
  const int m = block_row(span, row);  // query block of the sequence (absolute)
  const int length = span.kv_length;   // keys, and the end of the queries
  const int block = params.block_size;

  // Every thread decodes every warp's work, so that CTA-wide decisions are uniform.
  WarpWork mine;
  int max_count = 0, cta_last_row = -1;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const WarpWork other = warp_work(params, span, m, kv_head, slot, w);
    if (w == warp) mine = other;
    if (other.active) {
      max_count = max(max_count, other.count);
      cta_last_row = max(cta_last_row, other.last_row);
    }
  }
  const int32_t* order_row = item_order_row(params, span, m, kv_head);

  // The KV head's column of K and V: from the sequence's first key when packed; a paged
  // cache's rows are found through key_token (copy_kv_tile).
  const int64_t kv_begin = kPaged ? 0 : span.kv_begin;
  const auto* k_base = static_cast<const Element*>(params.k.data) + int64_t(kv_head) * params.k.head_stride +
                       kv_begin * params.k.token_stride;
  const auto* v_base = static_cast<const Element*>(params.v.data) + int64_t(kv_head) * params.v.head_stride +
                       kv_begin * params.v.token_stride;
  uint16_t* q_warp = smem.q + warp * kWarpRows * D;  // this warp's rows of the Q (and O) tile

  // ---- Q: each warp copies its own rows (zero outside the call's queries).
  if (mine.active) {
    const auto* q_head = static_cast<const Element*>(params.q.data) + int64_t(mine.head) * params.q.head_stride;
    for (int i = lane; i < kWarpRows * Traits::kRowVectors; i += 32) {
      const int r = i / Traits::kRowVectors, c = (i % Traits::kRowVectors) * Traits::kVectorElems;
      const bool inside = own_query(span, mine.row0 + r);
      const int64_t token = inside ? query_token(span, mine.row0 + r) : span.token_begin;
      cp_async_16(smem_address(q_warp + swizzle<D>(r, c)), q_head + token * params.q.token_stride + c, inside);
    }
  }
  cp_async_commit();

  // ---- The tiles: tile i is sub-tile `sub` of the block at rank `rank` of the order row
  // (i = rank * tiles_per_block + sub; the loop steps both, no division). The CTA skips a
  // tile whose block is outside [0, m] (a corrupt index), that starts past the sequence end,
  // or that lies wholly above the causal diagonal of every row of the CTA.
  const int tiles_per_block = block / kTileKeys;
  const int num_tiles = max_count * tiles_per_block;
  auto block_at = [&](int rank) { return order_row == nullptr ? rank : __ldg(order_row + rank); };
  auto tile_key0 = [&](int sub, int n) {  // first key of sub-tile `sub` of block n, or -1 when skipped
    if (n < 0 || n > m) return -1;
    const int key0 = n * block + sub * kTileKeys;
    return key0 >= length || key0 > cta_last_row ? -1 : key0;
  };

  float o[Traits::kWarpMTiles][Traits::kDimNTiles][4];  // O accumulators, fp32
  uint32_t p[Traits::kWarpMTiles][Traits::kKeyKSteps][4];  // probabilities, packed A fragments
  float row_max[Traits::kWarpMTiles][2];  // running max of scaled scores (log2 domain) per row
  float row_sum[Traits::kWarpMTiles][2];  // this thread's share of the running denominator
#pragma unroll
  for (int mi = 0; mi < Traits::kWarpMTiles; ++mi) {
#pragma unroll
    for (int di = 0; di < Traits::kDimNTiles; ++di)
#pragma unroll
      for (int c = 0; c < 4; ++c) o[mi][di][c] = 0.0f;
    row_max[mi][0] = row_max[mi][1] = kNegInf;
    row_sum[mi][0] = row_sum[mi][1] = 0.0f;
  }

  // K of the first tile; a tile's K is copied during the tile before it.
  int block_n = num_tiles > 0 ? block_at(0) : 0;  // the block of the current tile
  int key0 = num_tiles > 0 ? tile_key0(0, block_n) : -1;
  if (key0 >= 0) copy_kv_tile<Traits, kPaged>(smem.k, k_base, params.k.token_stride, key0, params, span);
  cp_async_commit();

  // ldmatrix lane addresses (fragment layouts in common/mma_sm80.cuh): Q rows lane % 16,
  // column 8 (lane / 16); K keys 8 (lane / 16) + lane % 8, dims 8 ((lane / 8) % 2); V
  // (transposed) keys 8 ((lane / 8) % 2) + lane % 8, dims 8 (lane / 16).
  const uint32_t q_lane = lane_address<D>(q_warp, lane % 16, (lane / 16) * 8);
  const uint32_t k_lane = lane_address<D>(smem.k, (lane / 16) * 8 + lane % 8, ((lane / 8) % 2) * 8);
  const uint32_t v_lane = lane_address<D>(smem.v, ((lane / 8) % 2) * 8 + lane % 8, (lane / 16) * 8);
  constexpr uint32_t kRows16 = 16 * Traits::kRowBytes;  // bytes of 16 rows
  for (int tile = 0, rank = 0, sub = 0; tile < num_tiles; ++tile) {
    // The next tile's place, and its block (read now, so that the load's latency hides
    // under this tile's work; only when the next tile starts a block).
    const bool next_exists = tile + 1 < num_tiles;
    const bool next_new_block = sub + 1 == tiles_per_block;
    const int next_rank = next_new_block ? rank + 1 : rank;
    const int next_sub = next_new_block ? 0 : sub + 1;
    const int next_block = !next_exists ? 0 : next_new_block ? block_at(next_rank) : block_n;
    if (key0 < 0) {
      // A skipped tile (uniform over the CTA): nothing of it is in shared memory, and the
      // K buffer is free (the last computed tile did not copy into it), so just copy the
      // next tile's K.
      key0 = next_exists ? tile_key0(next_sub, next_block) : -1;
      if (key0 >= 0) copy_kv_tile<Traits, kPaged>(smem.k, k_base, params.k.token_stride, key0, params, span);
      cp_async_commit();
      rank = next_rank, sub = next_sub, block_n = next_block;
      continue;
    }

    // K[tile] (and Q) landed; every warp is done with V of the previous tile.
    cp_async_wait_all();
    __syncthreads();
    copy_kv_tile<Traits, kPaged>(smem.v, v_base, params.v.token_stride, key0, params, span);
    cp_async_commit();

    // This warp computes the tile when it lies in its head's prefix and not wholly above
    // the diagonal of its rows.
    const bool warp_on = mine.active && rank < mine.count && key0 <= mine.last_row;
    if (warp_on) {
      // S = Q K^T (raw scores; the scale goes into the exponent).
      float s[Traits::kWarpMTiles][Traits::kKeyNTiles][4];  // scores, then probabilities
#pragma unroll
      for (int mi = 0; mi < Traits::kWarpMTiles; ++mi)
#pragma unroll
        for (int ni = 0; ni < Traits::kKeyNTiles; ++ni)
#pragma unroll
          for (int c = 0; c < 4; ++c) s[mi][ni][c] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < Traits::kDimKSteps; ++ks) {
        uint32_t a[Traits::kWarpMTiles][4];
#pragma unroll
        for (int mi = 0; mi < Traits::kWarpMTiles; ++mi)
          ldmatrix_x4(a[mi], (q_lane ^ column_step(ks)) + mi * kRows16);
#pragma unroll
        for (int np = 0; np < Traits::kKeyNTiles / 2; ++np) {
          uint32_t bk[4];  // keys 16 np.., dims 16 ks..: (b0 b1) of n8 tiles 2np and 2np + 1
          ldmatrix_x4(bk, (k_lane ^ column_step(ks)) + np * kRows16);
#pragma unroll
          for (int mi = 0; mi < Traits::kWarpMTiles; ++mi) {
            mma_16x8x16<Element>(s[mi][2 * np], a[mi], bk[0], bk[1]);
            mma_16x8x16<Element>(s[mi][2 * np + 1], a[mi], bk[2], bk[3]);
          }
        }
      }

      // Causal mask inside the diagonal block and keys past the sequence end.
      if (key0 + kTileKeys - 1 > mine.row0 || key0 + kTileKeys > length) {
#pragma unroll
        for (int mi = 0; mi < Traits::kWarpMTiles; ++mi)
#pragma unroll
          for (int ni = 0; ni < Traits::kKeyNTiles; ++ni)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              const int q_pos = mine.row0 + mi * 16 + quad_row + (c / 2) * 8;
              const int k_pos = key0 + ni * 8 + quad_col * 2 + (c % 2);
              if (k_pos > q_pos || k_pos >= length) s[mi][ni][c] = kNegInf;
            }
      }

      // Online softmax per row (common/online_softmax.cuh): the max moves only by more than
      // kRescaleBound, S becomes P = exp2(S * scale_log2 - max), and O is rescaled only when
      // a row of the warp moved its max.
      float correction[Traits::kWarpMTiles][2];
      bool moved = false;
#pragma unroll
      for (int mi = 0; mi < Traits::kWarpMTiles; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const RowRescale rescale = online_softmax_row<MaxRule::kLazy>(s[mi], half, params.scale_log2,
                                                                        row_max[mi][half], row_sum[mi][half]);
          correction[mi][half] = rescale.correction;
          moved |= rescale.moved;
        }
      if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
        for (int mi = 0; mi < Traits::kWarpMTiles; ++mi)
#pragma unroll
          for (int di = 0; di < Traits::kDimNTiles; ++di)
#pragma unroll
            for (int c = 0; c < 4; ++c) o[mi][di][c] *= correction[mi][c / 2];
      }
      // P rounded to the input type, packed as the A fragments of P V: the accumulator
      // layout of n8 tiles 2ks and 2ks + 1 is the A layout of k16 step ks. Packing here
      // halves the registers that stay live across the barrier below.
#pragma unroll
      for (int mi = 0; mi < Traits::kWarpMTiles; ++mi)
#pragma unroll
        for (int ks = 0; ks < Traits::kKeyKSteps; ++ks) {
          p[mi][ks][0] = ElementTraits<Element>::pack(s[mi][2 * ks][0], s[mi][2 * ks][1]);
          p[mi][ks][1] = ElementTraits<Element>::pack(s[mi][2 * ks][2], s[mi][2 * ks][3]);
          p[mi][ks][2] = ElementTraits<Element>::pack(s[mi][2 * ks + 1][0], s[mi][2 * ks + 1][1]);
          p[mi][ks][3] = ElementTraits<Element>::pack(s[mi][2 * ks + 1][2], s[mi][2 * ks + 1][3]);
        }
    }

    const int next_key0 = next_exists ? tile_key0(next_sub, next_block) : -1;

    // V[tile] landed; every warp is done with K[tile].
    cp_async_wait_all();
    __syncthreads();
    if (next_key0 >= 0) copy_kv_tile<Traits, kPaged>(smem.k, k_base, params.k.token_stride, next_key0, params, span);
    cp_async_commit();

    if (warp_on) {
      // O += P V.
#pragma unroll
      for (int ks = 0; ks < Traits::kKeyKSteps; ++ks) {
#pragma unroll
        for (int dp = 0; dp < Traits::kDimNTiles / 2; ++dp) {
          uint32_t bv[4];  // keys 16 ks.., dims 16 dp..: (b0 b1) of n8 tiles 2dp and 2dp + 1
          ldmatrix_x4_trans(bv, (v_lane ^ column_step(dp)) + ks * kRows16);
#pragma unroll
          for (int mi = 0; mi < Traits::kWarpMTiles; ++mi) {
            mma_16x8x16<Element>(o[mi][2 * dp], p[mi][ks], bv[0], bv[1]);
            mma_16x8x16<Element>(o[mi][2 * dp + 1], p[mi][ks], bv[2], bv[3]);
          }
        }
      }
    }
    key0 = next_key0;
    rank = next_rank, sub = next_sub, block_n = next_block;
  }
  // Q copies may still be in flight when no tile ran; the O staging reuses their rows.
  cp_async_wait_all();
  __syncthreads();
  if (!mine.active) return;

  // ---- Epilogue: O = acc / l into this warp's rows of the Q tile, then 16-byte stores of
  // the valid rows; LSE = ln(l) + max. A row that saw no key gets O = 0, LSE = -inf.
  Element* o_head = static_cast<Element*>(params.o.data) + int64_t(mine.head) * params.o.head_stride;
  // This lane's pair (row quad_row, columns 2 quad_col..) of n8 tile 0; tile di is vector di.
  const uint32_t o_lane = lane_address<D>(q_warp, quad_row, 0) + quad_col * 4;
#pragma unroll
  for (int mi = 0; mi < Traits::kWarpMTiles; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float l = quad_sum(row_sum[mi][half]);
      const float inv = row_inverse(l);
      const int r = mi * 16 + quad_row + half * 8;
#pragma unroll
      for (int di = 0; di < Traits::kDimNTiles; ++di) {
        const uint32_t pair = ElementTraits<Element>::pack(o[mi][di][2 * half] * inv, o[mi][di][2 * half + 1] * inv);
        st_shared_32((o_lane ^ (uint32_t(di) << 4)) + (mi * 16 + half * 8) * Traits::kRowBytes, pair);
      }
      if (params.lse != nullptr && quad_col == 0 && own_query(span, mine.row0 + r))
        params.lse[int64_t(mine.head) * params.total_tokens + query_token(span, mine.row0 + r)] =
            row_lse(row_max[mi][half], l);
    }
  __syncwarp();
  for (int i = lane; i < kWarpRows * Traits::kRowVectors; i += 32) {
    const int r = i / Traits::kRowVectors, c = (i % Traits::kRowVectors) * Traits::kVectorElems;
    if (!own_query(span, mine.row0 + r)) continue;
    Element* dst = o_head + query_token(span, mine.row0 + r) * params.o.token_stride + c;
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(q_warp + swizzle<D>(r, c));
  }
}

}  // namespace proxyattn::cuda::attention::sm80
