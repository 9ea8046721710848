// Step 4: token-level proxy scores with 2-D block max pooling, as a small causal
// attention over the sampled proxies on tensor cores, in two passes over the keys:
//   pass 1 (row stats): per sampled query row tq, max and sum of 2^(x - max) over the
//           sampled keys tk <= tq, x = Qp[tq] . Kp[tk] * scale * log2(e);
//   pass 2 (block max): A[j][m][n] = max over tq in block m, tk in block n, tk <= tq, of
//           2^(x - max_tq) / sum_tq.
// Since 2^x is monotone, the max of the probabilities of one row over a key block is the
// probability of the row's largest logit there: pass 2 takes one exponential per (row,
// key block) instead of one per element. No N x N matrix exists anywhere; A (triangular,
// at the order layout's offsets) is reduced with atomicMax on the float bits (probabilities
// are >= 0, so the integer order is the float order), zeroed beforehand by the caller.
// Block logits (b/s = 16 and 32, the default b = 128, s = 4 among them): pass 1 also
// stores each row's largest logit per key block at A's entry ([entry][row in block]), and
// block_max_from_logits_kernel evaluates pass 2's expression on them, so the products are
// computed once (docs/benchmarks.md, "Estimation per stage").
//
// Chunks (ALGORITHM.md, "Chunked prefill"): the rows are the call's sampled query rows from
// the start of its first query block, all against the sequence's sampled keys <= each row;
// rows before query_begin (a partial first block's earlier queries, unknown without a state)
// are masked out and write nothing. Whole prompts are the case first_qblock = 0, rows and keys
// in one layout: the kernel's plain instantiation (kGeneral = false) folds the chunk's terms.
//
// Tiling: a CTA of 4 warps takes 64 consecutive sampled query rows of one sequence (whole
// query blocks when b/s <= 64, half a block when b/s = 128), each warp 16 rows as the MMA
// A operand in registers; keys stream through shared memory 64 at a time, double buffered
// with cp.async, as the B operand via ldmatrix. Causal rows have very different lengths,
// so a CTA takes at most chunk_tiles key tiles (a chunk) of its rows: the units of work are
// even and many. Pass 1 writes (max, sum) per chunk; combine_row_stats_kernel folds a row's
// chunks; pass 2 reads the result.
#include "common/check.cuh"
#include "estimate/device_utils.cuh"
#include "estimate/stages.cuh"

namespace proxyattn::cuda::est {
namespace {

// Speed settings (results do not depend on them).
constexpr int kWarps = 4;                        // warps per CTA
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kTileRows = kWarps * kMmaM;        // 64 sampled query rows per CTA
constexpr int kTileKeys = 64;                    // sampled keys per shared-memory stage
constexpr int kNTiles = kTileKeys / kMmaN;       // 8 accumulator tiles per warp and stage
constexpr int kStages = 2;                       // double buffering of key tiles
constexpr int kSmemPad = 8;                      // elements after each key row: the 8 rows of
                                                 // an ldmatrix phase start in distinct banks

constexpr int kMinCtasPerSm = 4;                 // 16 warps per SM: registers <= 128

// kRowStatsAndLogits: pass 1 that also stores each (sampled row, key block) largest raw
// logit (Workspace::block_logits), so that a light kernel (block_max_from_logits_kernel)
// replaces pass 2. For b/s = 16 and 32: a 64-key tile then holds whole key blocks.
enum class Pass { kRowStats, kBlockMax, kRowStatsAndLogits };

template <typename T, int D>
struct KeyTiles {
  T k[kStages][kTileKeys][D + kSmemPad];  // sampled proxy keys, [stage][key][d]
};

// kPB: sampled rows per block (b / s) fixed at compile time, or 0 to read geo.per_block.
// The epilogues branch on it per n-tile: a constant folds those branches and the index
// divisions away (the default b = 128, s = 4 and b = 64, s = 4 have their own kernels).
// kGeneral: some sequence's rows start after block 0 (stages.cuh, Launch::general).
template <typename T, int D, Pass P, int kPB, bool kGeneral>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm)
    proxy_scores_kernel(Geometry geo, const T* __restrict__ proxy_q, const T* __restrict__ proxy_k,
                        float2* __restrict__ row_stats, float* __restrict__ scores,
                        float* __restrict__ block_logits) {
  __shared__ __align__(16) KeyTiles<T, D> smem;
  constexpr bool kStats = P != Pass::kBlockMax;
  static_assert(P != Pass::kRowStatsAndLogits || kPB == 16 || kPB == 32,
                "block logits need whole key blocks in a key tile and a quad's 8 rows in one block");
  static_assert(D % kMmaK == 0 && (kTileKeys * D / kVecElems) % kThreads == 0,
                "head_dim must be a multiple of 16 and tiles a whole number of 16-byte chunks");

  // ---- which rows and keys: grid (block, group, chunk * subtiles + subtile) -------------
  const int64_t gb = geo.total_qblocks - 1 - blockIdx.x;  // later (longer) rows first
  const int j = blockIdx.y;
  const int pb = kPB > 0 ? kPB : geo.per_block;
  const int subtiles = pb > kTileRows ? pb / kTileRows : 1;
  const int subtile = blockIdx.z % subtiles, chunk = blockIdx.z / subtiles;
  const int seq = geo.qblock_seq[gb];
  const SeqSpan span = geo.seqs[seq];
  if (geo.dense<kGeneral>(span)) return;
  const int mr = int(gb - span.qblock_begin);  // row of the sequence's rows, from its first
  const int first_qblock = kGeneral ? span.first_qblock : 0;
  const int blocks_per_cta = pb >= kTileRows ? 1 : kTileRows / pb;
  if (mr % blocks_per_cta != 0) return;  // another CTA covers this block
  // Rows and keys inside one sequence fit an int (a sequence has < 2^31 tokens); offsets
  // into the proxies are taken in 64 bits.
  const int ns = int(geo.sampled(span));
  const int row_lo = kGeneral ? geo.query_begin(span) : 0;  // rows [row_lo, ns) are scored
  const int r0 = (first_qblock + mr) * pb + subtile * kTileRows;  // first sampled row
  if (r0 >= ns) return;
  const int last_row = min(r0 + kTileRows, ns) - 1;
  const int num_key_tiles = last_row / kTileKeys + 1;  // keys 0..last_row
  const int kt_begin = chunk * geo.chunk_tiles;            // this CTA's key tiles
  if (kt_begin >= num_key_tiles) return;
  const int kt_end = min(num_key_tiles, kt_begin + geo.chunk_tiles);

  // Rows are sampled indices of the sequence (absolute): padded row row_base + i holds row i,
  // as offsets (the array starts at the first row's block).
  const int64_t row_base = (span.qblock_begin - first_qblock) * pb;  // geo.row_base
  const int64_t q_row0 = int64_t(j) * geo.sampled_rows() + row_base;  // proxy_q [.., D] row of index 0
  const int64_t key_rows = kGeneral ? geo.key_rows() : geo.sampled_rows();
  const int64_t key_row0 = (kGeneral ? geo.key_block0(span, seq) : span.qblock_begin) * pb;
  const T* gk = proxy_k + (int64_t(j) * key_rows + key_row0) * D;  // [ns, D]
  // Row statistics per key chunk: [chunks][sampled_rows] of this group, at this sequence.
  const int64_t stats_row0 = int64_t(j) * geo.chunks * geo.sampled_rows() + row_base;
  const int64_t chunk_stride = geo.sampled_rows();
  auto scored = [&](int row) { return kGeneral ? unsigned(row - row_lo) < unsigned(ns - row_lo) : row < ns; };

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int warp_row0 = r0 + warp * kMmaM;
  const int warp_last = min(warp_row0 + kMmaM - 1, ns - 1);
  const bool warp_active = warp_row0 < ns;
  const int row_a = warp_row0 + lane / 4;  // accumulator rows of this thread
  const int row_b = row_a + 8;
  // A's row of each accumulator row's query block (rows past the sequence write nothing;
  // theirs is the last block's row): pass 2 reduces into it; with block logits, the row's
  // slot in that row's entries ([entry][row in block]).
  int row_qblock[2];
  float* block_scores[2];
  float* row_logits[2] = {nullptr, nullptr};
  {
    const int rows[2] = {row_a, row_b};
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      row_qblock[hi] = min(rows[hi], ns - 1) / pb;
      const int64_t entry0 = order_row(span, j, row_qblock[hi]);
      block_scores[hi] = scores + entry0;
      if constexpr (P == Pass::kRowStatsAndLogits) row_logits[hi] = block_logits + entry0 * pb + rows[hi] % pb;
    }
  }

  // ---- the warp's 16 query rows as MMA A fragments, [D / 16][4] --------------------------
  uint32_t qf[D / kMmaK][4];
#pragma unroll
  for (int ks = 0; ks < D / kMmaK; ++ks) {
    const int col = ks * kMmaK + (lane % 4) * 2;
    auto pair = [&](int row, int c) -> uint32_t {
      return row < ns ? *reinterpret_cast<const uint32_t*>(proxy_q + (q_row0 + row) * D + c) : 0u;
    };
    qf[ks][0] = pair(row_a, col);
    qf[ks][1] = pair(row_b, col);
    qf[ks][2] = pair(row_a, col + 8);
    qf[ks][3] = pair(row_b, col + 8);
  }

  // ---- per-row state ----------------------------------------------------------------------
  // Pass 1: running max (log2 units) and this thread's partial sum over this chunk's keys.
  float run_max[2] = {neg_inf(), neg_inf()}, run_sum[2] = {0.0f, 0.0f};
  // Pass 2: the row's max and 1 / sum over all keys (combine_row_stats_kernel folded the
  // chunks into plane 0; rows not scored give probability 0).
  float row_max[2] = {0.0f, 0.0f}, row_inv[2] = {0.0f, 0.0f};
  if (P == Pass::kBlockMax) {
    const int rows[2] = {row_a, row_b};
#pragma unroll
    for (int hi = 0; hi < 2; ++hi)
      if (scored(rows[hi])) {
        const float2 s = row_stats[stats_row0 + rows[hi]];  // chunk plane 0: the combined statistics
        row_max[hi] = s.x;
        row_inv[hi] = 1.0f / s.y;  // the CPU multiplies by the reciprocal too
      }
  }

  // Key tile kt into `stage`: this thread copies the 16-byte chunks of column load_col in
  // rows load_row + i * kLoadRowStep; rows past the sequence are zero-filled (only in the
  // sequence's last tile). The offsets are fixed per thread: a tile costs a handful of
  // instructions per chunk instead of the index arithmetic of a generic copy loop.
  constexpr int kChunksPerRow = D / kVecElems;
  constexpr int kLoadRowStep = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0 && kTileKeys % kLoadRowStep == 0, "whole rows per pass");
  const int load_row = threadIdx.x / kChunksPerRow, load_col = (threadIdx.x % kChunksPerRow) * kVecElems;
  auto load_key_tile = [&](int kt, int stage) {
    const int key0 = kt * kTileKeys + load_row;
    const T* src = gk + int64_t(key0) * D + load_col;
    T* dst = &smem.k[stage][load_row][load_col];
    const bool whole = (kt + 1) * kTileKeys <= ns;
#pragma unroll
    for (int i = 0; i < kTileKeys / kLoadRowStep; ++i) {
      const bool valid = whole || key0 + i * kLoadRowStep < ns;
      cp_async_16(dst + i * kLoadRowStep * (D + kSmemPad), valid ? src + i * kLoadRowStep * D : gk, valid);
    }
    cp_async_commit();
  };

  // ---- stream the key tiles -------------------------------------------------------------
  load_key_tile(kt_begin, 0);
  for (int kt = kt_begin; kt < kt_end; ++kt) {
    const int stage = (kt - kt_begin) % kStages;
    if (kt + 1 < kt_end) {
      load_key_tile(kt + 1, (kt + 1 - kt_begin) % kStages);  // released at the end of kt-1
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // tile kt visible to every warp

    const int k0 = kt * kTileKeys;
    if (warp_active && k0 <= warp_last) {
      // S[16 x 64] = Q_warp K_tile^T on tensor cores.
      float acc[kNTiles][4];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < D / kMmaK; ++ks)
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
          uint32_t b[4];  // b0, b1 of n-tiles 2np and 2np + 1
          const int key = np * 2 * kMmaN + (lane & 7) + ((lane >> 4) << 3);
          const int col = ks * kMmaK + ((lane >> 3) & 1) * 8;
          ldmatrix_x4(b, &smem.k[stage][key][col]);
          mma_16x8x16<T>(acc[2 * np], qf[ks], b[0], b[1]);
          mma_16x8x16<T>(acc[2 * np + 1], qf[ks], b[2], b[3]);
        }

      // Mask keys after the query (and rows not scored), only in tiles that reach the
      // warp's diagonal or warps with such rows. The dot products stay unscaled: maxima are
      // taken first and scaled after (x -> x * scale is monotone, so the max is the same
      // number), and the exponentials fuse the scale into one FMA.
      const float scale = geo.scale_log2;
      const bool needs_mask =
          k0 + kTileKeys - 1 > warp_row0 || warp_row0 + kMmaM - 1 >= ns || (kGeneral && warp_row0 < row_lo);
      if (needs_mask) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = k0 + nt * kMmaN + (lane % 4) * 2 + (e & 1);
            const int row = e < 2 ? row_a : row_b;
            if (!(key <= row && scored(row))) acc[nt][e] = neg_inf();
          }
      }

      if (kStats) {
        // Online softmax statistics, branch-free (rows with no key yet stay at -inf, 0;
        // common/online_softmax.cuh). fast_exp2, not the CPU's flush rule: terms below
        // 2^-125.5 cannot change a row sum that holds its maximum's 2^0 = 1 (the quad's
        // partial sums meet at the end, the chunks in combine_row_stats_kernel, which applies
        // the rule), so the sums keep the same bits without the per-element threshold test.
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) online_softmax_row<MaxRule::kExact>(acc, hi, scale, run_max[hi], run_sum[hi]);
        if constexpr (P == Pass::kRowStatsAndLogits) {
          // Largest raw logit of each (row, key block of this tile): kPB / 8 n-tiles a
          // block, then across the quad's columns; the quad's first lane stores it. Key
          // blocks after the row's own block (masked, -inf) are not entries of A.
          constexpr int kSegTiles = kPB / kMmaN, kSegs = kNTiles / kSegTiles;
#pragma unroll
          for (int hi = 0; hi < 2; ++hi) {
            const int row = hi == 0 ? row_a : row_b;
#pragma unroll
            for (int sg = 0; sg < kSegs; ++sg) {
              float v = neg_inf();
#pragma unroll
              for (int nt = sg * kSegTiles; nt < (sg + 1) * kSegTiles; ++nt)
                v = fmaxf(v, fmaxf(acc[nt][2 * hi], acc[nt][2 * hi + 1]));
              v = quad_max(v);
              const int kblock = k0 / kPB + sg;
              if (lane % 4 == 0 && scored(row) && kblock <= row_qblock[hi])
                row_logits[hi][int64_t(kblock) * kPB] = v;
            }
          }
        }
      } else {
        // Largest logit of each (row, key segment); a segment is the part of one key block
        // inside this tile: min(b/s, 64) keys = seg_tiles n-tiles, or half an n-tile at b/s = 4.
        const int seg_tiles = pb >= kMmaN ? min(pb, kTileKeys) / kMmaN : 1;
        float v[2][kNTiles];
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          v[0][nt] = fmaxf(acc[nt][0], acc[nt][1]);
          v[1][nt] = fmaxf(acc[nt][2], acc[nt][3]);
        }
        // Fold the n-tiles of a segment into its first n-tile.
#pragma unroll
        for (int step = 1; step < kNTiles; step *= 2)
          if (step < seg_tiles)
#pragma unroll
            for (int nt = 0; nt < kNTiles; nt += 2 * step)
#pragma unroll
              for (int hi = 0; hi < 2; ++hi) v[hi][nt] = fmaxf(v[hi][nt], v[hi][nt + step]);
        // Only the first n-tile of each segment carries on (a uniform branch).
        // Across the quad's columns: lanes q^1 share a 4-column group, q^2 an 8-column one.
        // Then the normalised probability of each row's largest logit, and the max over the
        // rows of one query block: rows lane/4 differ in lane bits 2..4; rows a and b (8
        // apart) share a block when b/s >= 16.
        const bool merge_ab = pb >= 2 * kMmaN;
        float p[2][kNTiles];
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          if ((nt & (seg_tiles - 1)) != 0) continue;  // seg_tiles: a power of two
#pragma unroll
          for (int hi = 0; hi < 2; ++hi) {
            v[hi][nt] = max_xor(v[hi][nt], 1);
            if (pb >= kMmaN) v[hi][nt] = max_xor(v[hi][nt], 2);
            p[hi][nt] = exp2_flushed(v[hi][nt] * scale - row_max[hi]) * row_inv[hi];
          }
          if (merge_ab) p[0][nt] = fmaxf(p[0][nt], p[1][nt]);
#pragma unroll
          for (int hi = 0; hi < 2; ++hi) {
            if (hi == 1 && merge_ab) continue;
            p[hi][nt] = max_xor(p[hi][nt], 4);
            p[hi][nt] = max_xor(p[hi][nt], 8);
            if (pb >= kMmaN) p[hi][nt] = max_xor(p[hi][nt], 16);
          }
        }
        // One lane per reduced group writes: the lane whose reduced bits are all zero.
        const int reduced_cols = pb >= kMmaN ? 3 : 1;
        const int reduced_rows = (min(pb, kMmaN) - 1) << 2;
        if ((lane & (reduced_cols | reduced_rows)) == 0) {
          const int kblock0 = int((k0 + (lane % 4) * 2) / pb);  // key block of n-tile 0
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) {
            if ((nt & (seg_tiles - 1)) != 0) continue;
            // n-tile nt starts nt * 8 keys later: a whole number of blocks when b/s >= 8,
            // else inside the 8 keys (b/s = 4: two blocks per n-tile, the quad's halves).
            const int kblock = pb >= kMmaN ? kblock0 + nt * kMmaN / pb : kblock0 + nt * (kMmaN / pb);
#pragma unroll
            for (int hi = 0; hi < 2; ++hi) {
              if (hi == 1 && merge_ab) continue;
              const float prob = p[hi][nt];
              if (!(prob > 0.0f)) continue;  // A starts at 0
              atomicMax(reinterpret_cast<int*>(block_scores[hi] + kblock), __float_as_int(prob));
            }
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  if (kStats && warp_active) {
    const int rows[2] = {row_a, row_b};
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const float sum = quad_sum(run_sum[hi]);
      if (lane % 4 == 0 && scored(rows[hi]))
        row_stats[stats_row0 + chunk * chunk_stride + rows[hi]] = make_float2(run_max[hi], sum);
    }
  }
}

constexpr int kCombineThreads = 256;
constexpr int kCombineBatch = 4;  // chunk statistics loaded ahead

// Between the passes: folds each sampled row's per-chunk (max, sum) into chunk plane 0.
// Grid (ceil(sampled_rows / 256), g), one thread per padded sampled row.
__global__ void __launch_bounds__(kCombineThreads)
    combine_row_stats_kernel(Geometry geo, float2* __restrict__ row_stats) {
  const int64_t gr = int64_t(blockIdx.x) * kCombineThreads + threadIdx.x;  // padded row
  if (gr >= geo.sampled_rows()) return;
  const int j = blockIdx.y;
  const int pb = geo.per_block;
  const SeqSpan span = geo.seqs[geo.qblock_seq[gr / pb]];
  if (geo.dense(span)) return;
  const int64_t ns = geo.sampled(span);
  const int64_t i = gr - geo.row_base(span);  // sampled index in the sequence
  if (i >= ns || i < geo.query_begin(span)) return;
  // The chunks of this row's CTA (rows r0 .. r0 + 63, r0 - first row a multiple of 64).
  const int64_t first = int64_t(span.first_qblock) * pb;
  const int64_t r0 = first + (i - first) / kTileRows * kTileRows;
  const int num_key_tiles = int((min(r0 + kTileRows, ns) - 1) / kTileKeys) + 1;
  const int num_chunks = (num_key_tiles + geo.chunk_tiles - 1) / geo.chunk_tiles;
  float2* s = row_stats + int64_t(j) * geo.chunks * geo.sampled_rows() + gr;
  const int64_t stride = geo.sampled_rows();
  float mx = neg_inf(), sum = 0.0f;
  for (int c0 = 0; c0 < num_chunks; c0 += kCombineBatch) {
    float2 part[kCombineBatch];
#pragma unroll
    for (int u = 0; u < kCombineBatch; ++u)
      part[u] = c0 + u < num_chunks ? s[(c0 + u) * stride] : make_float2(neg_inf(), 0.0f);
#pragma unroll
    for (int u = 0; u < kCombineBatch; ++u) {
      const float new_max = fmaxf(mx, part[u].x);
      const float shift = new_max == neg_inf() ? 0.0f : new_max;
      sum = sum * exp2_flushed(mx - shift) + part[u].y * exp2_flushed(part[u].x - shift);
      mx = new_max;
    }
  }
  s[0] = make_float2(mx, sum);
}

constexpr int kFinishThreads = 256;

// After the row pass with block logits, in place of pass 2: A[j][m][n] = max over the
// sampled rows r of block m of 2^(x_rn * scale - max_r) / sum_r, x_rn the row's largest
// raw logit in key block n: the same expression, on the same numbers, as pass 2.
// Grid (total_qblocks, g), later rows first; threads take (entry, row) pairs, kPB
// consecutive lanes the rows of one entry, reduced by shuffles.
template <int kPB>
__global__ void __launch_bounds__(kFinishThreads)
    block_max_from_logits_kernel(Geometry geo, const float* __restrict__ block_logits,
                                 const float2* __restrict__ row_stats, float* __restrict__ scores) {
  static_assert(kPB <= kWarpSize && kFinishThreads % kPB == 0, "an entry's rows inside one warp");
  const int64_t gb = geo.total_qblocks - 1 - blockIdx.x;
  const int j = blockIdx.y;
  const SeqSpan span = geo.seqs[geo.qblock_seq[gb]];
  if (geo.dense(span)) return;
  const int m = span.first_qblock + int(gb - span.qblock_begin);  // absolute row
  const int r = threadIdx.x % kPB;
  const bool valid = m * kPB + r < geo.sampled(span) && m * kPB + r >= geo.query_begin(span);
  float row_max = 0.0f, row_inv = 0.0f;  // invalid rows give probability 0
  if (valid) {
    const float2 st = row_stats[int64_t(j) * geo.chunks * geo.sampled_rows() + gb * kPB + r];
    row_max = st.x;
    row_inv = 1.0f / st.y;
  }
  const int64_t entry0 = order_row(span, j, m);
  const float* x = block_logits + entry0 * kPB + r;
  for (int n0 = 0; n0 <= m; n0 += kFinishThreads / kPB) {  // uniform over the CTA
    const int n = n0 + int(threadIdx.x) / kPB;
    const bool in = n <= m;
    float p = in && valid ? exp2_flushed(x[int64_t(n) * kPB] * geo.scale_log2 - row_max) * row_inv : 0.0f;
#pragma unroll
    for (int offset = 1; offset < kPB; offset *= 2) p = max_xor(p, offset);
    if (in && r == 0) scores[entry0 + n] = p > 0.0f ? p : 0.0f;  // as pass 2: NaN leaves 0
  }
}

template <typename T, int D, Pass P, int kPB>
pa_status launch(const Launch& l, const Workspace& ws, const char* name) {
  const int pb = l.geo.per_block;
  const int subtiles = pb > kTileRows ? pb / kTileRows : 1;
  const dim3 grid(unsigned(l.geo.total_qblocks), unsigned(l.geo.groups),
                  unsigned(subtiles * l.geo.chunks));
  auto kernel = l.general ? proxy_scores_kernel<T, D, P, kPB, true> : proxy_scores_kernel<T, D, P, kPB, false>;
  // Room for kMinCtasPerSm CTAs' key tiles in the SM's shared memory / L1 split.
  PA_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                   cudaSharedmemCarveoutMaxShared));
  kernel<<<grid, kThreads, 0, l.stream>>>(l.geo, static_cast<const T*>(ws.proxy_q),
                                          static_cast<const T*>(ws.proxy_k), ws.row_stats, ws.scores,
                                          ws.block_logits);
  PA_CUDA_CHECK_LAUNCH(name);
  return PA_STATUS_SUCCESS;
}

// Sampled rows per block with a kernel of their own: b = 128 and b = 64 at the default s = 4.
constexpr int kDefaultPerBlock = 32, kSmallBlockPerBlock = 16;

template <Pass P, int kPB>
pa_status dispatch_type(const Launch& l, const Workspace& ws, const char* name) {
  const bool bf16 = l.dtype == PA_DTYPE_BFLOAT16;
  if (l.head_dim == 64)
    return bf16 ? launch<__nv_bfloat16, 64, P, kPB>(l, ws, name) : launch<__half, 64, P, kPB>(l, ws, name);
  return bf16 ? launch<__nv_bfloat16, 128, P, kPB>(l, ws, name) : launch<__half, 128, P, kPB>(l, ws, name);
}

template <Pass P>
pa_status dispatch(const Launch& l, const Workspace& ws, const char* name) {
  switch (l.geo.per_block) {
    case kDefaultPerBlock: return dispatch_type<P, kDefaultPerBlock>(l, ws, name);
    case kSmallBlockPerBlock: return dispatch_type<P, kSmallBlockPerBlock>(l, ws, name);
    default: return dispatch_type<P, 0>(l, ws, name);
  }
}

}  // namespace

bool block_logits_supported(int32_t per_block) {
  return per_block == kDefaultPerBlock || per_block == kSmallBlockPerBlock;
}

pa_status launch_proxy_row_stats(const Launch& l, const Workspace& ws) {
  if (ws.block_logits != nullptr) {
    constexpr Pass kLogits = Pass::kRowStatsAndLogits;
    const char* name = "proxy_scores_kernel (row stats, block logits)";
    if (l.geo.per_block == kDefaultPerBlock) return dispatch_type<kLogits, kDefaultPerBlock>(l, ws, name);
    if (l.geo.per_block == kSmallBlockPerBlock) return dispatch_type<kLogits, kSmallBlockPerBlock>(l, ws, name);
    return fail(PA_STATUS_INTERNAL, "proxy scores: block logits with b/s = %d (only %d and %d)",
                l.geo.per_block, kDefaultPerBlock, kSmallBlockPerBlock);
  }
  return dispatch<Pass::kRowStats>(l, ws, "proxy_scores_kernel (row stats)");
}

pa_status launch_proxy_block_max(const Launch& l, const Workspace& ws) {
  const dim3 grid(unsigned((l.geo.sampled_rows() + kCombineThreads - 1) / kCombineThreads),
                  unsigned(l.geo.groups));
  combine_row_stats_kernel<<<grid, kCombineThreads, 0, l.stream>>>(l.geo, ws.row_stats);
  PA_CUDA_CHECK_LAUNCH("combine_row_stats_kernel");
  if (ws.block_logits == nullptr) return dispatch<Pass::kBlockMax>(l, ws, "proxy_scores_kernel (block max)");
  const dim3 finish(unsigned(l.geo.total_qblocks), unsigned(l.geo.groups));
  if (l.geo.per_block == kDefaultPerBlock)
    block_max_from_logits_kernel<kDefaultPerBlock><<<finish, kFinishThreads, 0, l.stream>>>(
        l.geo, ws.block_logits, ws.row_stats, ws.scores);
  else
    block_max_from_logits_kernel<kSmallBlockPerBlock><<<finish, kFinishThreads, 0, l.stream>>>(
        l.geo, ws.block_logits, ws.row_stats, ws.scores);
  PA_CUDA_CHECK_LAUNCH("block_max_from_logits_kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cuda::est
