// Step 6: one sort per (group, query-block row), shared by the group's heads.
//   order[j][m] = forced blocks first (sink 0, the group's anchors n <= m, diagonal m:
//                 ascending), then the other blocks n <= m by A[j][m][n] descending, ties
//                 to the lower n;
//   count[m][h] = row_keep(...) for each head h of group j (core/budget.cpp's rule); with
//                 anchors on top (PA_ANCHORS_ON_TOP) on_top_keep of row_keep with only the sink
//                 and the diagonal forced and the anchors ranked below the head's K'.
// One CTA sorts a row with a stable radix sort of 32-bit keys (ascending) whose order is
// the wanted one: forced blocks 0, a score s >= 0 maps to ~bits(s) (larger s, smaller key),
// padding to ~0 after every real entry; stability keeps equal keys in block order.
// Dense sequences sort all-equal keys: forced first, then ascending, as the CPU writes.
// The anchors are marked in a shared bitmap of the row before the keys are made. On top, a
// first sort with only the sink and the diagonal forced (the anchor-free ranking) marks in a
// second bitmap the ranks (among the blocks neither forced) that hold an anchor; each head's
// count of anchors below its K' is then a popcount of that bitmap's prefix. (Two sorts of the
// row where it has anchors: a rank per anchor by counting would need a list of the row's
// anchors; the sort is a small share of the estimation.)
#include <cub/block/block_radix_sort.cuh>

#include "common/check.cuh"
#include "core/budget.hpp"
#include "core/config.hpp"
#include "estimate/device_utils.cuh"
#include "estimate/sort_classes.cuh"
#include "estimate/stages.cuh"

namespace proxyattn::cuda::est {
namespace {

struct SelectParams {
  int32_t row_lo, row_hi;  // rows of this launch: row_lo < m + 1 <= row_hi
  int32_t min_blocks;      // ceil(min_budget_tokens / b)
  int32_t force_sink, force_local;
  int32_t anchor_blocks;   // T per head
  pa_budget_mode mode;
  pa_anchor_mode anchor_mode;
};

constexpr uint32_t kForcedKey = 0u;
constexpr uint32_t kLastKey = ~0u;  // padding, and every unranked block of a dense row

// Device copy of core/budget.cpp's row_keep(), same arithmetic.
__device__ int32_t row_keep(pa_budget_mode mode, int32_t budget, int32_t needed, int32_t num_kblocks,
                            int32_t min_blocks, int32_t m, int32_t forced) {
  const int64_t row_blocks = m + 1;
  int64_t keep = budget;
  if (mode == PA_BUDGET_PROPORTIONAL) {
    const int64_t share = (int64_t(needed) * row_blocks + num_kblocks - 1) / num_kblocks;
    keep = max(int64_t(min_blocks), share);
  }
  keep = max(max(keep, int64_t(forced)), int64_t(1));
  return int32_t(min(keep, row_blocks));
}

template <int Threads, int Items>
using RowSort = cub::BlockRadixSort<uint32_t, Threads, Items, int32_t>;

constexpr int kWordBits = 32;

template <int Threads, int Items>
struct SelectSmem {
  typename RowSort<Threads, Items>::TempStorage sort;
  uint32_t anchored[Threads * Items / kWordBits];  // bit n: block n is a group anchor
  uint32_t ranked[Threads * Items / kWordBits];    // on top, bit r: the anchor-free ranking's
                                                   // r-th block outside sink and diagonal is
                                                   // an anchor
  int32_t forced;                                  // forced blocks of the row
};

// Grid (total_qblocks, g); rows outside (row_lo, row_hi] leave at once.
template <int Threads, int Items>
__global__ void __launch_bounds__(Threads)
    select_kernel(Geometry geo, const float* __restrict__ scores, const int32_t* __restrict__ budget,
                  const int32_t* __restrict__ needed, const int32_t* __restrict__ anchors,
                  SelectParams params, int32_t* __restrict__ order, int32_t* __restrict__ count) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& smem = *reinterpret_cast<SelectSmem<Threads, Items>*>(smem_raw);
  const int64_t gb = blockIdx.x;
  const int j = blockIdx.y;
  const int seq = geo.qblock_seq[gb];
  const SeqSpan span = geo.seqs[seq];
  const int m = span.first_qblock + int(gb - span.qblock_begin);  // absolute row
  const int len = m + 1;
  if (len <= params.row_lo || len > params.row_hi) return;
  const bool dense = geo.dense(span);
  const bool sink = params.force_sink != 0, local = params.force_local != 0;
  const int64_t row = order_row(span, j, m);
  const int heads = geo.num_q_heads / geo.groups;

  // ---- the group's anchors n <= m into the bitmap ------------------------------------------
  for (int w = threadIdx.x; w <= m / kWordBits; w += Threads) smem.anchored[w] = smem.ranked[w] = 0;
  if (threadIdx.x == 0) smem.forced = 0;
  __syncthreads();
  const int anchor_count = heads * params.anchor_blocks;
  const int32_t* mine = group_anchors(anchors, seq, j, geo.num_q_heads, geo.groups, params.anchor_blocks);
  for (int a = threadIdx.x; a < anchor_count; a += Threads) {
    const int32_t n = mine[a];
    if (n >= 0 && n <= m) atomicOr(&smem.anchored[n / kWordBits], 1u << (n % kWordBits));
  }
  __syncthreads();

  // ---- on top: the anchors' ranks in the anchor-free ranking -------------------------------
  // Blocks forced without anchors: the sink and the diagonal (one block in row 0).
  auto base_forced_block = [&](int n) { return (sink && n == 0) || (local && n == m); };
  const int base_forced = min(len, int(sink) + int(local));
  const bool on_top = params.anchor_mode == PA_ANCHORS_ON_TOP && !dense && anchor_count > 0;
  uint32_t keys[Items];
  int32_t blocks[Items];
  if (on_top) {
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      const int n = threadIdx.x * Items + i;
      blocks[i] = n;
      keys[i] = n >= len ? kLastKey : base_forced_block(n) ? kForcedKey : ~__float_as_uint(scores[row + n]);
    }
    RowSort<Threads, Items>(smem.sort).SortBlockedToStriped(keys, blocks);
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      const int rank = i * Threads + threadIdx.x, n = blocks[i];
      if (rank < len && rank >= base_forced && !base_forced_block(n) &&
          ((smem.anchored[n / kWordBits] >> (n % kWordBits)) & 1u)) {
        const int r = rank - base_forced;
        atomicOr(&smem.ranked[r / kWordBits], 1u << (r % kWordBits));
      }
    }
    __syncthreads();  // the sort's storage is used again, and the ranks are complete
  }

  // ---- keys in blocked order (thread t holds ranks t * Items + i) -------------------------
  int forced_here = 0;
#pragma unroll
  for (int i = 0; i < Items; ++i) {
    const int n = threadIdx.x * Items + i;
    blocks[i] = n;
    if (n >= len) {
      keys[i] = kLastKey;
    } else if ((sink && n == 0) || (local && n == m) ||
               (smem.anchored[n / kWordBits] >> (n % kWordBits)) & 1u) {
      keys[i] = kForcedKey;
      ++forced_here;
    } else {
      keys[i] = dense ? kLastKey : ~__float_as_uint(scores[row + n]);
    }
  }
  if (forced_here > 0) atomicAdd(&smem.forced, forced_here);
  RowSort<Threads, Items>(smem.sort).SortBlockedToStriped(keys, blocks);
  __syncthreads();  // smem.forced complete

  // ---- the order row (striped: coalesced stores) ---------------------------------------------
#pragma unroll
  for (int i = 0; i < Items; ++i) {
    const int rank = i * Threads + threadIdx.x;
    if (rank < len) order[row + rank] = blocks[i];
  }

  // ---- each head of the group keeps its prefix ---------------------------------------------
  const int forced = smem.forced;
  const bool anchors_here = on_top && forced > base_forced;
  for (int t = threadIdx.x; t < heads; t += Threads) {
    const int h = j * heads + t;
    const int64_t at = int64_t(seq) * geo.num_q_heads + h;
    const int32_t nkb = geo.budget_kblocks != nullptr ? geo.budget_kblocks[seq] : span.num_kblocks();
    int32_t keep;
    if (dense) {
      keep = len;
    } else if (!anchors_here) {
      keep = row_keep(params.mode, budget[at], needed[at], nkb, params.min_blocks, m, forced);
    } else {
      const int32_t base = row_keep(params.mode, budget[at], needed[at], nkb, params.min_blocks, m, base_forced);
      const int32_t k = base - base_forced;  // the head's ranked blocks without anchors
      int32_t below = 0;                     // anchors among them
      for (int w = 0; w < k / kWordBits; ++w) below += __popc(smem.ranked[w]);
      if (k % kWordBits != 0) below += __popc(smem.ranked[k / kWordBits] & ((1u << (k % kWordBits)) - 1u));
      keep = on_top_keep(base, base_forced, forced, below, m);
    }
    count[count_row(span, m) * geo.num_q_heads + h] = keep;
  }
}

template <int Threads, int Items>
pa_status launch_class(const Launch& l, const Workspace& ws, SelectParams params,
                       const int32_t* budget, const int32_t* needed, const int32_t* anchors,
                       int32_t* order, int32_t* count) {
  auto kernel = select_kernel<Threads, Items>;
  const size_t bytes = sizeof(SelectSmem<Threads, Items>);
  if (bytes > kDefaultSmemLimit)
    PA_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  const dim3 grid(unsigned(l.geo.total_qblocks), unsigned(l.geo.groups));
  kernel<<<grid, Threads, bytes, l.stream>>>(l.geo, ws.scores, budget, needed, anchors, params, order,
                                             count);
  PA_CUDA_CHECK_LAUNCH("select_kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace

pa_status launch_select(const Launch& l, const Workspace& ws, const int32_t* budget,
                        const int32_t* needed, const int32_t* anchors, int32_t* order,
                        int32_t* count) {
  SelectParams p{};
  p.min_blocks = min_budget_blocks(l.config);
  p.force_sink = l.config.force_sink;
  p.force_local = l.config.force_local;
  p.anchor_blocks = l.config.anchor_blocks;
  p.mode = l.config.budget_mode;
  p.anchor_mode = l.config.anchor_mode;
  // One launch per size class that holds some row of the batch (rows up to max_row_blocks).
  constexpr SortClass c0 = kSortClasses[0], c1 = kSortClasses[1], c2 = kSortClasses[2],
                      c3 = kSortClasses[3];
  static_assert(c3.capacity() == kMaxSortedBlocks, "the largest class sorts the longest row");
  p.row_lo = 0;
  p.row_hi = c0.capacity();
  PA_TRY((launch_class<c0.threads, c0.items>(l, ws, p, budget, needed, anchors, order, count)));
  if (l.max_row_blocks <= p.row_hi) return PA_STATUS_SUCCESS;
  p.row_lo = p.row_hi;
  p.row_hi = c1.capacity();
  PA_TRY((launch_class<c1.threads, c1.items>(l, ws, p, budget, needed, anchors, order, count)));
  if (l.max_row_blocks <= p.row_hi) return PA_STATUS_SUCCESS;
  p.row_lo = p.row_hi;
  p.row_hi = c2.capacity();
  PA_TRY((launch_class<c2.threads, c2.items>(l, ws, p, budget, needed, anchors, order, count)));
  if (l.max_row_blocks <= p.row_hi) return PA_STATUS_SUCCESS;
  p.row_lo = p.row_hi;
  p.row_hi = c3.capacity();
  return launch_class<c3.threads, c3.items>(l, ws, p, budget, needed, anchors, order, count);
}

}  // namespace proxyattn::cuda::est
