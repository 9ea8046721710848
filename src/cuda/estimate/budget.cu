// Step 5: per-head budgets from R query blocks (budget_rows; R = 1: the last block only).
//   budget_partials: for each row j, Q head i and key block n, the softmax statistics of the
//     rows of j's query block q_j (head i's own Q, its KV head's K, keys up to q_j's block,
//     causal inside it) restricted to block n: (max of log2 logits, sum of 2^(x - max)).
//     Tensor cores, one CTA per (row j, KV head, chunk of 256 keys held in shared memory for
//     the heads that read them; all of them, or a part at short lengths), one warp per 16
//     rows. A chunk's last query block is its own (a sparse chunk holds at least a block of
//     queries), its earlier rows j only where it holds them whole (Geometry::budget_row), and
//     its keys are every position [0, kv_len), read packed or through the block table (the
//     general instantiation; whole prompts keep the plain one).
//   budget_heads: per (sequence, head) and row j, combines the partials into each query
//     row's max and sum, then the mass per key block  a_n = (1/rows) sum_r sum_{k in n} p_r(k)
//     = (1/rows) sum_r S_rn 2^(M_rn - M_r) / L_r, sorts the masses (descending), and takes
//     count_j = smallest k whose prefix reaches gamma * total (core/budget.cpp's rule);
//     count_i = max_j count_j; with PA_BUDGET_RULE_RANKED also at least the fewest entries of
//     the group's anchor-free ranking of the last row (step 4's scores A: sink and diagonal
//     first, then by score, ties to the lower block) whose last-block masses reach
//     ranked_target of the total (core/budget.cpp's ranked_blocks(): a key-value sort of the
//     row, masses in the ranking's order, prefix sums in double);
//     K_i = min(Nkb, max(count_i, Kmin)) (Nkb: key blocks), and picks the head's anchors
//     from the last block's masses: T rounds of a block-wide arg max (core/budget.cpp's
//     anchor_blocks()).
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <climits>

#include "common/check.cuh"
#include "core/config.hpp"
#include "common/device.cuh"
#include "common/heads.hpp"
#include "estimate/device_utils.cuh"
#include "estimate/sort_classes.cuh"  // kDefaultSmemLimit
#include "estimate/stages.cuh"

namespace proxyattn::cuda::est {
namespace {

// ---- budget_partials ------------------------------------------------------------------
constexpr int kMaxBlock = 128;                             // largest block size b
constexpr int kPartialThreadsMax = kMaxBlock / kMmaM * kWarpSize;  // one warp per 16 rows
constexpr int kKeyTile = 64;                               // keys per tensor-core tile
constexpr int kNTiles = kKeyTile / kMmaN;
constexpr int kSmemPad = 8;                                // conflict-free ldmatrix rows
// CTAs per SM asked of ptxas (left free it takes 120-154 registers: 1 CTA): 3 at d = 64 (80
// registers, 24 warps; 4 bytes spilled), 2 at d = 128 (128 registers with its 32 of Q
// fragments, 20 bytes spilled; the kernel before change 6 had 122 and 2 CTAs).
template <int D>
inline constexpr int kPartialCtasPerSm = D == 64 ? 3 : 2;

// First key block of a sequence in the key arrays: whole prompts (not kGeneral) keep the
// rows' layout.
template <bool kGeneral>
__device__ __forceinline__ int64_t key_block0(const Geometry& geo, const SeqSpan& span, int seq) {
  return kGeneral ? geo.key_block0(span, seq) : span.qblock_begin;
}

// Keys of a CTA's chunk, resident in shared memory for all the heads of its KV head (36 KiB
// at d = 64, 68 KiB at d = 128 with the padding). Larger chunks would read each head's Q
// fragments less often but leave fewer CTAs (0.5B at 128K: 1024 CTAs of 256 keys, 2.6
// waves of 3 per SM).
constexpr int kChunkKeys = 256;

template <typename T, int D>
inline constexpr size_t kPartialsSmemBytes = size_t(kChunkKeys) * (D + kSmemPad) * sizeof(T);

// Grid (Hkv * head_parts * ceil(total_kblocks / (kChunkKeys / b)), R), KV heads fastest,
// then the parts of their Q heads; blockIdx.y is the row j. A CTA with no key block at or
// before its sequences' q_j returns at once. Otherwise it copies its chunk of K (kChunkKeys
// keys, whole key blocks) into shared memory once, then computes the statistics of its part
// of the Q heads of that KV head against it, one head after the other, with no further
// synchronisation: the heads of a part read K once instead of once each. One part holds all the heads unless the
// grid would not fill the GPU (launch_partials). b / 16 warps, each 16 rows of q_j.
template <typename T, int D, bool kGeneral>
__global__ void __launch_bounds__(kPartialThreadsMax, kPartialCtasPerSm<D>)
    budget_partials_kernel(Geometry geo, InputView q, KeyView k, int head_parts,
                           float2* __restrict__ partials) {
  extern __shared__ __align__(16) unsigned char partials_smem[];
  using KeyRow = T[D + kSmemPad];
  KeyRow* keys = reinterpret_cast<KeyRow*>(partials_smem);  // [chunk key][d]
  const int kv = int(blockIdx.x % geo.num_kv_heads);
  const int part = int(blockIdx.x / geo.num_kv_heads % head_parts);
  const int64_t chunk = blockIdx.x / geo.num_kv_heads / head_parts;
  const int heads_per_kv = q_heads_per_kv(geo);
  const int heads_per_part = (heads_per_kv + head_parts - 1) / head_parts;
  const int head_begin = part * heads_per_part;
  const int head_end = min(heads_per_kv, head_begin + heads_per_part);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int b = geo.block;
  const int tiles_per_block = b / kKeyTile;
  const int blocks_per_cta = kChunkKeys / b;
  const int j = int(blockIdx.y);
  const int row_a = warp * kMmaM + lane / 4, row_b = row_a + 8;  // rows of q_j
  const int64_t gb_begin = chunk * blocks_per_cta;  // key block of the key arrays
  const int num_blocks = int(min(geo.total_kblocks - gb_begin, int64_t(blocks_per_cta)));
  const int num_tiles = num_blocks * tiles_per_block;
  // q_j of the sequence of key block gb, or -1 where that block needs no statistics of row
  // j (a dense sequence, an unmeasured row, a key after q_j).
  auto row_block = [&](int64_t gb) {
    const int seq = geo.kblock_seq[gb];
    const SeqSpan span = geo.seqs[seq];
    if (geo.dense<kGeneral>(span)) return -1;
    const int qb = geo.budget_row(span, j);
    return gb - key_block0<kGeneral>(geo, span, seq) <= qb ? qb : -1;
  };
  bool any = false;
  for (int i = 0; i < num_blocks; ++i) any |= row_block(gb_begin + i) >= 0;
  if (!any) return;  // uniform over the CTA

  const T* qdata = static_cast<const T*>(q.data);
  const T* kdata = static_cast<const T*>(k.k.data);

  // ---- the chunk's keys of KV head kv (zero past a sequence's end; none for dense
  // sequences), then a barrier: from here every warp only reads shared memory ------------
  {
    constexpr int kChunksPerRow = D / kVecElems;
    for (int c = threadIdx.x; c < num_tiles * kKeyTile * kChunksPerRow; c += blockDim.x) {
      const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * kVecElems;  // r: key of the chunk
      const int64_t gb = gb_begin + r / b;
      if (row_block(gb) < 0) continue;
      const int seq = geo.kblock_seq[gb];
      const SeqSpan span = geo.seqs[seq];
      const int64_t key = (gb - key_block0<kGeneral>(geo, span, seq)) * b + r % b;  // position in the sequence
      const bool valid = key < span.kv_length;
      const int64_t row = kGeneral ? k.row(span, seq, valid ? key : 0) : span.kv_begin + (valid ? key : 0);
      const T* src = kdata + row * k.k.token_stride + int64_t(kv) * k.k.head_stride + col;
      if (k.k.vector_ok) {
        cp_async_16(&keys[r][col], src, valid);
      } else {
#pragma unroll
        for (int e = 0; e < kVecElems; ++e) keys[r][col + e] = valid ? src[e] : Element<T>::from_float(0.0f);
      }
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  }

  for (int hh = head_begin; hh < head_end; ++hh) {
    const int h = kv * heads_per_kv + hh;
    uint32_t qf[D / kMmaK][4];
    int loaded_seq = -1;
    float run_max[2] = {neg_inf(), neg_inf()}, run_sum[2] = {0.0f, 0.0f};
    for (int t = 0; t < num_tiles; ++t) {
      const int64_t gb = gb_begin + t / tiles_per_block;
      const int kt = t % tiles_per_block;
      const int qb = row_block(gb);
      if (qb < 0) continue;
      const int seq = geo.kblock_seq[gb];
      const SeqSpan span = geo.seqs[seq];
      const int64_t q0 = int64_t(qb) * b;  // first position of q_j
      const int rows = int(min(int64_t(b), span.kv_length - q0));
      const int n = int(gb - key_block0<kGeneral>(geo, span, seq));
      const int64_t q_offset = kGeneral ? span.query_offset() : 0;  // Q token of position p: p - q_offset

      // ---- this sequence's rows of q_j, head h, as A fragments -----------------------------
      if (seq != loaded_seq) {
        loaded_seq = seq;
#pragma unroll
        for (int ks = 0; ks < D / kMmaK; ++ks) {
          const int col = ks * kMmaK + (lane % 4) * 2;
          auto pair = [&](int row, int c) -> uint32_t {
            if (row >= rows) return 0u;
            const T* src = qdata + (span.token_begin + q0 - q_offset + row) * q.token_stride +
                           int64_t(h) * q.head_stride + c;
            return load_pair(src, q.vector_ok);
          };
          qf[ks][0] = pair(row_a, col);
          qf[ks][1] = pair(row_b, col);
          qf[ks][2] = pair(row_a, col + 8);
          qf[ks][3] = pair(row_b, col + 8);
        }
      }
      if (kt == 0) {  // a new key block: fresh statistics
        run_max[0] = run_max[1] = neg_inf();
        run_sum[0] = run_sum[1] = 0.0f;
      }

      // ---- S[16 x 64] = Q_warp K_tile^T ----------------------------------------------------
      float acc[kNTiles][4];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
      const KeyRow* tile = keys + t * kKeyTile;
#pragma unroll
      for (int ks = 0; ks < D / kMmaK; ++ks)
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
          uint32_t bf[4];
          const int key = np * 2 * kMmaN + (lane & 7) + ((lane >> 4) << 3);
          const int col = ks * kMmaK + ((lane >> 3) & 1) * 8;
          ldmatrix_x4(bf, &tile[key][col]);
          mma_16x8x16<T>(acc[2 * np], qf[ks], bf[0], bf[1]);
          mma_16x8x16<T>(acc[2 * np + 1], qf[ks], bf[2], bf[3]);
        }

      // ---- causal mask inside q_j's block (also covers keys past the end); the dot
      // products stay unscaled (the max is scaled after, the exponentials fuse the scale) --
      const float scale = geo.scale_log2;
      if (n == qb) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key_in_block = kt * kKeyTile + nt * kMmaN + (lane % 4) * 2 + (e & 1);
            const int row = e < 2 ? row_a : row_b;
            if (key_in_block > row) acc[nt][e] = neg_inf();
          }
      }

      // ---- fold into the block's running statistics (common/online_softmax.cuh; fast_exp2's
      // flushed terms cannot change a sum that holds this tile's or the running max's 2^0 = 1,
      // so the bits are the CPU's) ------------------------------------------------------------
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) online_softmax_row<MaxRule::kExact>(acc, hi, scale, run_max[hi], run_sum[hi]);

      // ---- last tile of the block: its partial statistics for each valid row -------------
      if (kt == tiles_per_block - 1) {
        float2* out = partials + ((int64_t(j) * geo.num_q_heads + h) * geo.total_kblocks + gb) * b;
        const int rows_of[2] = {row_a, row_b};
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          const float sum = quad_sum(run_sum[hi]);
          if (lane % 4 == 0 && rows_of[hi] < rows) out[rows_of[hi]] = make_float2(run_max[hi], sum);
        }
      }
    }
  }
}

template <typename T, int D>
pa_status launch_partials(const Launch& l, const InputView& q, const KeyView& k,
                          const Workspace& ws) {
  static_assert(kChunkKeys % kMaxBlock == 0, "a chunk holds whole key blocks");
  const int64_t blocks_per_cta = kChunkKeys / l.geo.block;
  const int64_t chunks = (l.geo.total_kblocks + blocks_per_cta - 1) / blocks_per_cta;
  // Short sequences give few chunks: the Q heads of a KV head are then split into as many
  // parts as still fit the grid in one wave of the GPU, since one CTA running all of them
  // in turn was the kernel's whole time (Qwen2.5-Coder-0.5B at 4K-16K: 0.039 ms whatever N,
  // 2026-11-24). Past one wave the parts' repeated K copies and the last wave's tail cost
  // more than they gain (a first rule rounding up: 10-20% slower at 8K-16K, Qwen2.5-7B).
  int sms = 0;
  PA_TRY(current_sm_count(&sms));
  const int heads_per_kv = q_heads_per_kv(l.geo);
  const int64_t ctas = int64_t(l.geo.num_kv_heads) * chunks;
  const int64_t wave = int64_t(sms) * kPartialCtasPerSm<D>;
  const int64_t rows = l.geo.budget_rows;
  const int wanted_parts = int(std::min<int64_t>(heads_per_kv, std::max<int64_t>(1, wave / (ctas * rows))));
  const int heads_per_part = (heads_per_kv + wanted_parts - 1) / wanted_parts;
  const int head_parts = (heads_per_kv + heads_per_part - 1) / heads_per_part;  // none left empty
  const dim3 grid(unsigned(ctas * head_parts), unsigned(rows));
  const int threads = l.geo.block / kMmaM * kWarpSize;
  auto kernel = l.general ? budget_partials_kernel<T, D, true> : budget_partials_kernel<T, D, false>;
  constexpr size_t bytes = kPartialsSmemBytes<T, D>;
  if (bytes > kDefaultSmemLimit)
    PA_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  kernel<<<grid, threads, bytes, l.stream>>>(l.geo, q, k, head_parts, ws.budget_partials);
  PA_CUDA_CHECK_LAUNCH("budget_partials_kernel");
  return PA_STATUS_SUCCESS;
}

// ---- budget_heads ---------------------------------------------------------------------
constexpr int kHeadsThreads = 512;  // one CTA per (sequence, head): wide for latency hiding
constexpr int kLoadBatch = 8;  // partials loaded ahead per row (latency hiding: few CTAs)
constexpr int kMassBatch = 4;  // key blocks per warp step

struct MinOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};

struct MaxOp {
  __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const {
    return a > b ? a : b;
  }
};

struct HeadsParams {
  double gamma;
  double ranked_target;   // PA_BUDGET_RULE_RANKED's share of the last row's mass; < 0: the paper's rule
  int32_t min_blocks;     // ceil(min_budget_tokens / b)
  int32_t anchor_blocks;  // T
  int32_t force_sink, force_local;
};

// Arg max key of block n: the mass's bits (monotone for mass >= 0) above the complement
// of n, so that the largest key is the largest mass, ties to the lower block; 0 = none.
__device__ inline unsigned long long anchor_key(float mass, int n) {
  return (static_cast<unsigned long long>(__float_as_uint(fmaxf(mass, 0.0f))) << 32) |
         (0xFFFFFFFFu - static_cast<unsigned>(n));
}

// The ranked rule's keys: forced blocks first, a score s >= 0 as ~bits(s) (larger first),
// padding last (select.cu's keys without anchors); stability keeps ties in block order.
constexpr uint32_t kRankForcedKey = 0u;
constexpr uint32_t kRankLastKey = ~0u;

template <int Threads, int Items>
struct HeadsSmem {
  using Sort = cub::BlockRadixSort<float, Threads, Items>;
  using RankSort = cub::BlockRadixSort<uint32_t, Threads, Items, float>;  // ranking key, mass
  using Scan = cub::BlockScan<double, Threads>;
  using Reduce = cub::BlockReduce<int, Threads>;
  using ArgMax = cub::BlockReduce<unsigned long long, Threads>;
  union {
    typename Sort::TempStorage sort;
    typename RankSort::TempStorage rank_sort;
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
    typename ArgMax::TempStorage arg_max;
  } tmp;
  int32_t anchors[PA_MAX_ANCHOR_BLOCKS];  // chosen so far
  float2 row_part[Threads / kMaxBlock][kMaxBlock];  // per thread group and row: (max, sum)
  float row_max[kMaxBlock];  // per last-block row: max of log2 logits over all keys
  float row_inv[kMaxBlock];  // 1 / sum of 2^(x - max)
  float mass[Threads * Items];
};

// Grid (num_seqs, Hq); dynamic shared memory sizeof(HeadsSmem).
template <int Threads, int Items>
__global__ void __launch_bounds__(Threads)
    budget_heads_kernel(Geometry geo, const float2* __restrict__ partials, const float* __restrict__ scores,
                        HeadsParams params, int32_t* __restrict__ budget, int32_t* __restrict__ needed,
                        int32_t* __restrict__ anchors) {
  using Smem = HeadsSmem<Threads, Items>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem& smem = *reinterpret_cast<Smem*>(smem_raw);
  const int seq = blockIdx.x, h = blockIdx.y;
  const SeqSpan span = geo.seqs[seq];
  const int nkb = span.num_kblocks();  // the blocks of the last row
  const int64_t out = int64_t(seq) * geo.num_q_heads + h;
  int32_t* head_anchors = anchors + out * params.anchor_blocks;
  if (span.num_qblocks == 0 || geo.dense(span)) {  // empty: nothing; dense: every block, no anchors
    if (threadIdx.x == 0) budget[out] = needed[out] = span.num_qblocks == 0 ? 0 : nkb;
    for (int a = threadIdx.x; a < params.anchor_blocks; a += Threads) head_anchors[a] = -1;
    return;
  }
  const int b = geo.block;
  int count = 0;  // thread 0: count_i, the largest count_j so far
  // Rows j ascending: the last (j = R - 1, the last block) ends with its masses in smem.mass
  // for the anchors.
  for (int j = 0; j < geo.budget_rows; ++j) {
    const int qb = geo.budget_row(span, j);
    if (qb < 0) continue;
    const int nb = qb + 1;  // key blocks of row j
    const int rows = int(min(int64_t(b), span.kv_length - int64_t(qb) * b));
    const float2* part = partials + ((int64_t(j) * geo.num_q_heads + h) * geo.total_kblocks +
                                     geo.key_block0(span, seq)) * b;  // [n][b]
    __syncthreads();  // the shared arrays of the previous row are read

    // ---- each query row's max and sum over the key blocks: kRowGroups threads per row, each
    // over every kRowGroups-th block with kLoadBatch loads in flight, then combined ---------
    constexpr int kRowGroups = Threads / kMaxBlock;
    auto fold = [](float& mx, float& sum, float2 s) {
      const float new_max = fmaxf(mx, s.x);
      sum = sum * exp2f(mx - new_max) + s.y * exp2f(s.x - new_max);
      mx = new_max;
    };
    {
      const int r = threadIdx.x % kMaxBlock, group = threadIdx.x / kMaxBlock;
      if (r < rows) {
        float mx = neg_inf(), sum = 0.0f;
        int n = group;
        for (; n + (kLoadBatch - 1) * kRowGroups < nb; n += kLoadBatch * kRowGroups) {
          float2 s[kLoadBatch];
#pragma unroll
          for (int u = 0; u < kLoadBatch; ++u) s[u] = part[int64_t(n + u * kRowGroups) * b + r];
#pragma unroll
          for (int u = 0; u < kLoadBatch; ++u) fold(mx, sum, s[u]);
        }
        for (; n < nb; n += kRowGroups) fold(mx, sum, part[int64_t(n) * b + r]);
        smem.row_part[group][r] = make_float2(mx, sum);
      }
    }
    __syncthreads();
    if (threadIdx.x < rows) {
      float mx = neg_inf(), sum = 0.0f;
#pragma unroll
      for (int group = 0; group < kRowGroups; ++group) fold(mx, sum, smem.row_part[group][threadIdx.x]);
      smem.row_max[threadIdx.x] = mx;
      smem.row_inv[threadIdx.x] = 1.0f / sum;
    }
    __syncthreads();

    // ---- mass per key block: a warp takes kMassBatch blocks, lanes run over rows ----------
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    constexpr int kWarps = Threads / kWarpSize;
    for (int n0 = warp * kMassBatch; n0 < nb; n0 += kWarps * kMassBatch) {
      float t[kMassBatch];
#pragma unroll
      for (int u = 0; u < kMassBatch; ++u) t[u] = 0.0f;
      for (int r = lane; r < rows; r += kWarpSize) {
        const float mr = smem.row_max[r], inv = smem.row_inv[r];
        float2 s[kMassBatch];
#pragma unroll
        for (int u = 0; u < kMassBatch; ++u)
          s[u] = n0 + u < nb ? part[int64_t(n0 + u) * b + r] : make_float2(neg_inf(), 0.0f);
#pragma unroll
        for (int u = 0; u < kMassBatch; ++u) t[u] += s[u].y * exp2f(s[u].x - mr) * inv;
      }
#pragma unroll
      for (int u = 0; u < kMassBatch; ++u) {
#pragma unroll
        for (int mask = kWarpSize / 2; mask > 0; mask /= 2) t[u] = sum_xor(t[u], mask);
        if (lane == 0 && n0 + u < nb) smem.mass[n0 + u] = t[u] / float(rows);
      }
    }
    __syncthreads();

    // ---- sort descending (pads -1 go last), prefix sums in double ------------------------
    float keys[Items];
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      const int idx = threadIdx.x * Items + i;
      keys[i] = idx < nb ? smem.mass[idx] : -1.0f;
    }
    typename Smem::Sort(smem.tmp.sort).SortDescending(keys);  // blocked: rank t * Items + i
    __syncthreads();
    double local = 0.0;
#pragma unroll
    for (int i = 0; i < Items; ++i) local += keys[i] > 0.0f ? double(keys[i]) : 0.0;
    double before = 0.0, total = 0.0;
    typename Smem::Scan(smem.tmp.scan).ExclusiveSum(local, before, total);
    __syncthreads();
    const double target = params.gamma * total;
    int first = INT_MAX;  // smallest count whose prefix reaches the target
    double prefix = before;
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      const int rank = threadIdx.x * Items + i;
      if (rank < nb) {
        prefix += keys[i] > 0.0f ? double(keys[i]) : 0.0;
        if (first == INT_MAX && prefix >= target) first = rank + 1;
      }
    }
    const int found = typename Smem::Reduce(smem.tmp.reduce).Reduce(first, MinOp());
    // No mass at all, or rounding kept the prefix under the target: keep every block.
    if (threadIdx.x == 0) count = max(count, total > 0.0 && found != INT_MAX ? min(found, nb) : nb);
  }

  // ---- the ranked rule: the last block's masses along the group's anchor-free ranking ------
  if (params.ranked_target >= 0.0) {
    const int m = nkb - 1;
    const float* row = scores + order_row(span, h / (geo.num_q_heads / geo.groups), m);
    uint32_t keys[Items];
    float mass[Items];
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      const int n = threadIdx.x * Items + i;
      const bool forced = (params.force_sink && n == 0) || (params.force_local && n == m);
      keys[i] = n >= nkb ? kRankLastKey : forced ? kRankForcedKey : ~__float_as_uint(row[n]);
      mass[i] = n < nkb ? smem.mass[n] : 0.0f;
    }
    __syncthreads();  // tmp is reused
    typename Smem::RankSort(smem.tmp.rank_sort).Sort(keys, mass);  // blocked: rank t * Items + i
    __syncthreads();
    double local = 0.0;
#pragma unroll
    for (int i = 0; i < Items; ++i) local += double(mass[i]);
    double before = 0.0, total = 0.0;
    typename Smem::Scan(smem.tmp.scan).ExclusiveSum(local, before, total);
    __syncthreads();
    const double target = params.ranked_target * total;
    int first = INT_MAX;
    double prefix = before;
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      const int rank = threadIdx.x * Items + i;
      prefix += double(mass[i]);
      if (first == INT_MAX && rank < nkb && prefix >= target) first = rank + 1;
    }
    const int found = typename Smem::Reduce(smem.tmp.reduce).Reduce(first, MinOp());
    if (threadIdx.x == 0) count = max(count, total > 0.0 && found != INT_MAX ? min(found, nkb) : nkb);
  }
  if (threadIdx.x == 0) {
    needed[out] = count;
    budget[out] = min(nkb, max(count, params.min_blocks));
  }

  // ---- anchors: T arg max rounds over the masses, skipping the blocks the last row forces
  // and the ones already chosen ----------------------------------------------------------
  for (int a = 0; a < params.anchor_blocks; ++a) {
    __syncthreads();  // tmp is reused; smem.anchors[0, a) are visible
    unsigned long long best = 0;
    for (int n = threadIdx.x; n < nkb; n += Threads) {
      bool skip = (params.force_sink && n == 0) || (params.force_local && n == nkb - 1);
      for (int c = 0; c < a; ++c) skip |= smem.anchors[c] == n;
      if (!skip) best = max(best, anchor_key(smem.mass[n], n));
    }
    best = typename Smem::ArgMax(smem.tmp.arg_max).Reduce(best, MaxOp());
    if (threadIdx.x == 0) {
      const int32_t n = best == 0 ? -1 : int32_t(0xFFFFFFFFu - unsigned(best & 0xFFFFFFFFull));
      smem.anchors[a] = n;
      head_anchors[a] = n;
    }
  }
}

template <int Threads, int Items>
pa_status launch_heads(const Launch& l, const Workspace& ws, int32_t* budget, int32_t* needed,
                       int32_t* anchors) {
  using Smem = HeadsSmem<Threads, Items>;
  auto kernel = budget_heads_kernel<Threads, Items>;
  const size_t bytes = sizeof(Smem);
  if (bytes > kDefaultSmemLimit)
    PA_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  const double ranked = l.config.budget_rule == PA_BUDGET_RULE_RANKED ? ranked_target(l.config) : -1.0;
  const HeadsParams params{double(l.config.gamma), ranked,
                           min_budget_blocks(l.config),
                           l.config.anchor_blocks, l.config.force_sink, l.config.force_local};
  const dim3 grid(unsigned(l.geo.num_seqs), unsigned(l.geo.num_q_heads));
  kernel<<<grid, Threads, bytes, l.stream>>>(l.geo, ws.budget_partials, ws.scores, params, budget,
                                             needed, anchors);
  PA_CUDA_CHECK_LAUNCH("budget_heads_kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace

pa_status launch_budget_partials(const Launch& l, const InputView& q, const KeyView& k,
                                 const Workspace& ws) {
  const bool bf16 = l.dtype == PA_DTYPE_BFLOAT16;
  if (l.head_dim == 64)
    return bf16 ? launch_partials<__nv_bfloat16, 64>(l, q, k, ws)
                : launch_partials<__half, 64>(l, q, k, ws);
  return bf16 ? launch_partials<__nv_bfloat16, 128>(l, q, k, ws)
              : launch_partials<__half, 128>(l, q, k, ws);
}

pa_status launch_budget_heads(const Launch& l, const Workspace& ws, int32_t* budget,
                              int32_t* needed, int32_t* anchors) {
  // Capacities 1024, 4096, 16384 blocks (kMaxSortedBlocks).
  const int32_t n = l.max_sparse_kblocks;
  switch (n <= 2 * kHeadsThreads ? 0 : n <= 8 * kHeadsThreads ? 1 : 2) {
    case 0: return launch_heads<kHeadsThreads, 2>(l, ws, budget, needed, anchors);
    case 1: return launch_heads<kHeadsThreads, 8>(l, ws, budget, needed, anchors);
    default: return launch_heads<kHeadsThreads, 32>(l, ws, budget, needed, anchors);
  }
}

}  // namespace proxyattn::cuda::est
