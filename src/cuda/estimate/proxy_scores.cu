// Step 4: token-level proxy scores with 2-D block max pooling, as a small causal
// attention over the sampled proxies on tensor cores, in one pass over the keys:
//   row pass: per sampled query row tq, the max and sum of 2^(x - max) over the sampled keys
//             tk <= tq (x = Qp[tq] . Kp[tk] * scale * log2(e)), and per (row, key block) the
//             largest raw dot product ("block logit") into a buffer;
//   block max: A[j][m][n] = max over tq in block m of 2^(logit(tq, n) * scale - max_tq) / sum_tq.
// Since 2^x is monotone, the max of the probabilities of one row over a key block is the
// probability of the row's largest logit there: one exponential per (row, key block), and
// the keys are multiplied once (an earlier version ran the products twice, the second time
// for the maxima, once the row statistics were known). No N x N matrix exists anywhere: the
// block logits take b/s floats per order entry of one group, and the query blocks are taken
// in slabs (host side, estimate.cu) so that the buffer stays bounded. A (triangular, at the
// order layout's offsets) is written once per entry by the block-max kernel.
//
// Tiling: a CTA of 4 warps takes 64 consecutive sampled query rows of one sequence (whole
// query blocks when b/s <= 64, half a block when b/s = 128), each warp 16 rows as the MMA
// A operand in registers; keys stream through shared memory 64 at a time, double buffered
// with cp.async, as the B operand via ldmatrix. Causal rows have very different lengths,
// so a CTA takes at most chunk_tiles key tiles (a chunk) of its rows: the units of work are
// even and many. The row pass writes (max, sum) per chunk; combine_row_stats_kernel folds a
// row's chunks; the block-max kernel reads the result. A block logit covers one "unit" of
// its block: the whole block when b/s <= 64, one 64-key tile of it at b/s = 128 (two units),
// so every unit lies in one key tile and is written by exactly one CTA.
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

template <typename T, int D>
struct KeyTiles {
  T k[kStages][kTileKeys][D + kSmemPad];  // sampled proxy keys, [stage][key][d]
};

// Block-logit units per key block: one per 64-key tile of the block (at least one).
__host__ __device__ inline int logit_units(int per_block) { return per_block > kTileKeys ? per_block / kTileKeys : 1; }

// Offset of query block m's block logits in the one-group layout: each of its b/s sampled
// rows holds (m + 1) * units entries ([row][key block][unit]), after the blocks before it
// (order_begin / g: the one-group order entries of the sequences before this one).
__host__ __device__ inline int64_t logits_offset(const SeqSpan& span, int groups, int per_block, int m) {
  return (span.order_begin / groups + int64_t(m) * (m + 1) / 2) * per_block * logit_units(per_block);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm)
    proxy_rows_kernel(Geometry geo, Slab slab, const T* __restrict__ proxy_q, const T* __restrict__ proxy_k,
                      float2* __restrict__ row_stats, float* __restrict__ block_logits) {
  __shared__ __align__(16) KeyTiles<T, D> smem;
  static_assert(D % kMmaK == 0 && (kTileKeys * D / kVecElems) % kThreads == 0,
                "head_dim must be a multiple of 16 and tiles a whole number of 16-byte chunks");

  // ---- which rows and keys: grid (block of the slab, 1, chunk * subtiles + subtile) ------
  const int64_t gb = slab.qblock_end - 1 - blockIdx.x;  // later (longer) rows first
  const int j = slab.group;
  const int subtiles = geo.per_block > kTileRows ? geo.per_block / kTileRows : 1;
  const int subtile = blockIdx.z % subtiles, chunk = blockIdx.z / subtiles;
  const SeqSpan span = geo.seqs[geo.qblock_seq[gb]];
  if (geo.dense(span)) return;
  const int pb = geo.per_block;
  const int m = int(gb - span.qblock_begin);
  const int blocks_per_cta = pb >= kTileRows ? 1 : kTileRows / pb;
  if (m % blocks_per_cta != 0) return;  // another CTA covers this block
  const int64_t ns = geo.sampled(span);
  const int64_t r0 = int64_t(m) * pb + int64_t(subtile) * kTileRows;  // first sampled row
  if (r0 >= ns) return;
  const int64_t last_row = min(r0 + kTileRows, ns) - 1;
  const int num_key_tiles = int(last_row / kTileKeys) + 1;  // keys 0..last_row
  const int kt_begin = chunk * geo.chunk_tiles;            // this CTA's key tiles
  if (kt_begin >= num_key_tiles) return;
  const int kt_end = min(num_key_tiles, kt_begin + geo.chunk_tiles);

  const int64_t row_base = span.qblock_begin * pb;  // padded row of sampled index 0
  const int64_t group_row0 = int64_t(j) * geo.sampled_rows() + row_base;
  const T* gq = proxy_q + group_row0 * D;  // [ns, D] of this sequence and group
  const T* gk = proxy_k + group_row0 * D;
  // Row statistics per key chunk: [chunks][sampled_rows] of this group, at this sequence.
  float2* stats = row_stats + int64_t(j) * geo.chunks * geo.sampled_rows() + row_base;
  const int64_t chunk_stride = geo.sampled_rows();

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t warp_row0 = r0 + int64_t(warp) * kMmaM;
  const int64_t warp_last = min(warp_row0 + kMmaM - 1, ns - 1);
  const bool warp_active = warp_row0 < ns;
  const int64_t row_a = warp_row0 + lane / 4;  // accumulator rows of this thread
  const int64_t row_b = row_a + 8;

  // ---- the warp's 16 query rows as MMA A fragments, [D / 16][4] --------------------------
  uint32_t qf[D / kMmaK][4];
#pragma unroll
  for (int ks = 0; ks < D / kMmaK; ++ks) {
    const int col = ks * kMmaK + (lane % 4) * 2;
    auto pair = [&](int64_t row, int c) -> uint32_t {
      return row < ns ? *reinterpret_cast<const uint32_t*>(gq + row * D + c) : 0u;
    };
    qf[ks][0] = pair(row_a, col);
    qf[ks][1] = pair(row_b, col);
    qf[ks][2] = pair(row_a, col + 8);
    qf[ks][3] = pair(row_b, col + 8);
  }

  // ---- per-row state ----------------------------------------------------------------------
  // Running max (log2 units) and this thread's partial sum over this chunk's keys.
  float run_max[2] = {neg_inf(), neg_inf()}, run_sum[2] = {0.0f, 0.0f};
  // Block logits of this group, at the slab's first entry.
  const int units = logit_units(pb);
  float* logits = block_logits - slab.entry_begin;

  auto load_key_tile = [&](int kt, int stage) {
    constexpr int kChunksPerRow = D / kVecElems;
    for (int c = threadIdx.x; c < kTileKeys * kChunksPerRow; c += kThreads) {
      const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * kVecElems;
      const int64_t key = int64_t(kt) * kTileKeys + r;
      const bool valid = key < ns;
      cp_async_16(&smem.k[stage][r][col], valid ? gk + key * D + col : gk, valid);
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

    const int64_t k0 = int64_t(kt) * kTileKeys;
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

      // Mask keys after the query (and rows past the sequence), only in tiles that reach
      // the warp's diagonal.
      const float scale = geo.scale_log2;
      const bool needs_mask = k0 + kTileKeys - 1 > warp_row0 || warp_row0 + kMmaM - 1 >= ns;
      if (needs_mask) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t key = k0 + nt * kMmaN + (lane % 4) * 2 + (e & 1);
            const int64_t row = e < 2 ? row_a : row_b;
            if (!(key <= row && row < ns)) acc[nt][e] = neg_inf();
          }
      }

      // Largest raw dot product of each (row, key segment); a segment is the part of one
      // key block inside this tile: min(b/s, 64) keys = seg_tiles n-tiles, or half an
      // n-tile at b/s = 4. Fold the n-tiles of a segment into its first n-tile, then across
      // the quad's columns: lanes q^1 share a 4-column group, q^2 an 8-column one.
      const int seg_tiles = pb >= kMmaN ? min(pb, kTileKeys) / kMmaN : 1;
      const int64_t rows[2] = {row_a, row_b};
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {  // accumulator rows a (lane / 4) and b (+ 8)
        float v[kNTiles];
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) v[nt] = fmaxf(acc[nt][2 * hi], acc[nt][2 * hi + 1]);
#pragma unroll
        for (int step = 1; step < kNTiles; step *= 2)
          if (step < seg_tiles)
#pragma unroll
            for (int nt = 0; nt < kNTiles; nt += 2 * step) v[nt] = fmaxf(v[nt], v[nt + step]);
        // The row's tile max (over its segments) for the online statistics.
        float tile_max = neg_inf();
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          if (nt % seg_tiles != 0) continue;  // only a segment's first n-tile carries on
          v[nt] = max_xor(v[nt], 1);
          if (pb >= kMmaN) v[nt] = max_xor(v[nt], 2);
          tile_max = fmaxf(tile_max, v[nt]);
        }
        if (pb < kMmaN) tile_max = max_xor(tile_max, 2);  // the two half-n-tile segments of a quad
        // Block logits: one lane per reduced group stores each segment of a valid row
        // that has a causal key in it (masked entries are -inf and never read).
        const int64_t row = rows[hi];
        const bool stores = (lane & (pb >= kMmaN ? 3 : 1)) == 0 && row < ns;
        if (stores) {
          const int m_row = int(row / pb);
          const int64_t row_entries = logits_offset(span, geo.groups, pb, m_row) +
                                      (row - int64_t(m_row) * pb) * int64_t(m_row + 1) * units;
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) {
            if (nt % seg_tiles != 0) continue;
            const int64_t key = k0 + nt * kMmaN + (lane % 4) * 2;  // the segment's first key
            if (key > row) continue;
            const int64_t kblock = key / pb;
            logits[row_entries + kblock * units + (key % pb) / kTileKeys] = v[nt];
          }
        }
        // Online softmax statistics, branch-free (rows with no key yet stay at -inf, 0).
        // The dot products stay unscaled until here: the max is taken first and scaled
        // after (x -> x * scale is monotone), and the exponentials fuse the scale into one FMA.
        tile_max *= scale;  // -inf stays -inf (scale > 0)
        const float new_max = fmaxf(run_max[hi], tile_max);
        const float shift = new_max == neg_inf() ? 0.0f : new_max;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
          sum += exp2_flushed(fmaf(acc[nt][2 * hi], scale, -shift)) +
                 exp2_flushed(fmaf(acc[nt][2 * hi + 1], scale, -shift));
        run_sum[hi] = run_sum[hi] * exp2_flushed(run_max[hi] - shift) + sum;
        run_max[hi] = new_max;
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  if (warp_active) {
    const int64_t rows[2] = {row_a, row_b};
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const float sum = quad_sum(run_sum[hi]);
      if (lane % 4 == 0 && rows[hi] < ns)
        stats[chunk * chunk_stride + rows[hi]] = make_float2(run_max[hi], sum);
    }
  }
}

constexpr int kCombineThreads = 256;
constexpr int kCombineBatch = 4;  // chunk statistics loaded ahead

// After the row pass: folds each sampled row of the slab's query blocks from its per-chunk
// (max, sum) into chunk plane 0. Grid (ceil(slab rows / 256)), one thread per padded row.
__global__ void __launch_bounds__(kCombineThreads)
    combine_row_stats_kernel(Geometry geo, Slab slab, float2* __restrict__ row_stats) {
  const int pb = geo.per_block;
  const int64_t gr = slab.qblock_begin * pb + int64_t(blockIdx.x) * kCombineThreads + threadIdx.x;  // padded row
  if (gr >= slab.qblock_end * pb) return;
  const int j = slab.group;
  const SeqSpan span = geo.seqs[geo.qblock_seq[gr / pb]];
  if (geo.dense(span)) return;
  const int64_t ns = geo.sampled(span);
  const int64_t i = gr - span.qblock_begin * pb;  // sampled index in the sequence
  if (i >= ns) return;
  // The chunks of this row's CTA (rows r0 .. r0 + 63, r0 a multiple of 64).
  const int64_t r0 = i / kTileRows * kTileRows;
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

constexpr int kBlockMaxThreads = 256;
constexpr int kMaxPerBlock = 128;  // b/s at most (config: b <= 128, s >= 1)

// A[j][m][n] for every query block m of the slab and key block n <= m: the largest
// probability 2^(logit * scale - max) / sum over the block's sampled rows and the units of
// key block n that hold a causal key of the row. Grid (slab blocks), one CTA per query
// block, threads over n; every entry of A is written once (0 when every probability
// underflows, as the CPU's flush rule gives).
__global__ void __launch_bounds__(kBlockMaxThreads)
    block_max_kernel(Geometry geo, Slab slab, const float2* __restrict__ row_stats,
                     const float* __restrict__ block_logits, float* __restrict__ scores) {
  __shared__ float row_max[kMaxPerBlock], row_inv[kMaxPerBlock];
  const int64_t gb = slab.qblock_begin + blockIdx.x;
  const int j = slab.group;
  const int pb = geo.per_block;
  const SeqSpan span = geo.seqs[geo.qblock_seq[gb]];
  if (geo.dense(span)) return;
  const int m = int(gb - span.qblock_begin);
  const int64_t ns = geo.sampled(span);
  const int rows = int(min(int64_t(pb), ns - int64_t(m) * pb));  // valid sampled rows of block m
  const float2* stats = row_stats + int64_t(j) * geo.chunks * geo.sampled_rows() + gb * pb;
  for (int r = threadIdx.x; r < rows; r += kBlockMaxThreads) {
    const float2 st = stats[r];  // chunk plane 0: the combined statistics
    row_max[r] = st.x;
    row_inv[r] = 1.0f / st.y;  // the CPU multiplies by the reciprocal too
  }
  __syncthreads();
  const int units = logit_units(pb);
  const float* logits = block_logits - slab.entry_begin + logits_offset(span, geo.groups, pb, m);
  const int64_t row_stride = int64_t(m + 1) * units;
  const float scale = geo.scale_log2;
  float* out = scores + order_row_offset(span, j, m);
  for (int n = threadIdx.x; n <= m; n += kBlockMaxThreads) {
    float a = 0.0f;
    for (int r = 0; r < rows; ++r) {
      const int64_t i = int64_t(m) * pb + r;  // sampled index of the row
      for (int u = 0; u < units; ++u) {
        if (int64_t(n) * pb + int64_t(u) * kTileKeys > i) break;  // no causal key in this unit
        const float v = logits[r * row_stride + int64_t(n) * units + u];
        a = fmaxf(a, exp2_flushed(v * scale - row_max[r]) * row_inv[r]);
      }
    }
    out[n] = a;
  }
}

template <typename T, int D>
pa_status launch_rows(const Launch& l, const Workspace& ws, const Slab& slab) {
  const int pb = l.geo.per_block;
  const int subtiles = pb > kTileRows ? pb / kTileRows : 1;
  const dim3 grid(unsigned(slab.qblock_end - slab.qblock_begin), 1u, unsigned(subtiles * l.geo.chunks));
  // Room for kMinCtasPerSm CTAs' key tiles in the SM's shared memory / L1 split.
  PA_CUDA_TRY(cudaFuncSetAttribute(proxy_rows_kernel<T, D>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                   cudaSharedmemCarveoutMaxShared));
  proxy_rows_kernel<T, D><<<grid, kThreads, 0, l.stream>>>(l.geo, slab, static_cast<const T*>(ws.proxy_q),
                                                          static_cast<const T*>(ws.proxy_k), ws.row_stats,
                                                          ws.block_logits);
  PA_CUDA_CHECK_LAUNCH("proxy_rows_kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace

int64_t block_logit_entries(const SeqSpan& span, int groups, int per_block, int m_begin, int m_end) {
  return logits_offset(span, groups, per_block, m_end) - logits_offset(span, groups, per_block, m_begin);
}

int32_t proxy_rows_blocks_per_cta(int per_block) { return per_block >= kTileRows ? 1 : kTileRows / per_block; }

pa_status launch_proxy_scores(const Launch& l, const Workspace& ws, const Slab& slab) {
  if (slab.qblock_end <= slab.qblock_begin) return PA_STATUS_SUCCESS;
  const bool bf16 = l.dtype == PA_DTYPE_BFLOAT16;
  const pa_status rows = l.head_dim == 64
                             ? (bf16 ? launch_rows<__nv_bfloat16, 64>(l, ws, slab) : launch_rows<__half, 64>(l, ws, slab))
                             : (bf16 ? launch_rows<__nv_bfloat16, 128>(l, ws, slab)
                                     : launch_rows<__half, 128>(l, ws, slab));
  PA_TRY(rows);
  const int64_t slab_blocks = slab.qblock_end - slab.qblock_begin;
  const int64_t slab_rows = slab_blocks * l.geo.per_block;
  combine_row_stats_kernel<<<unsigned((slab_rows + kCombineThreads - 1) / kCombineThreads), kCombineThreads, 0,
                             l.stream>>>(l.geo, slab, ws.row_stats);
  PA_CUDA_CHECK_LAUNCH("combine_row_stats_kernel");
  block_max_kernel<<<unsigned(slab_blocks), kBlockMaxThreads, 0, l.stream>>>(l.geo, slab, ws.row_stats,
                                                                            ws.block_logits, ws.scores);
  PA_CUDA_CHECK_LAUNCH("block_max_kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cuda::est
