// Parameters of the block-sparse attention forward (ALGORITHM.md step 7), shared by the
// dispatcher (host) and the kernels. Plain C++: no CUDA types, so the dispatcher's
// declarations of the per-variant launchers need no CUDA headers.
//
// Work list: work items (query-block row, KV head, slot), each run by one CTA. A CTA of the sm80 kernel
// has kWarps warps, each owning kWarpRows query rows of one Q head (a "pair" = head x row
// chunk); a CTA of the sm90 kernel has sm90::consumers_for(d) consumer warpgroups of
// sm90::kGroupRows rows each (CtaShape below says which). The pairs of a (row, KV head) are
// the GQA heads reading that KV head times the row chunks of the block; a slot is
// CtaShape::pairs_per_cta consecutive pairs. All pairs of a CTA read the same KV head and the
// same `order` row (heads of a KV head share a proxy group), so the CTA streams each kept K/V
// tile through shared memory once for all its warps; each warp (warpgroup) keeps its own
// head's prefix `count` and skips tiles outside it (per-head masks at warp granularity).
// Items are numbered from the launch's last query-block row down (within a sequence, longest
// row first) and handed out in index order as SMs free up: the sm80 kernel's CTAs (one per item) by the hardware, the sm90
// kernel's persistent CTAs by an atomic counter (a static i, i + grid, ... split lets the
// CTAs drift apart in the list and lose the L2 reuse below: measured 37% slower at 128K).
// Either way about a longest-processing-time-first schedule: no SM idles on short rows while
// long ones wait.
// The rows go in chunks of rows_per_chunk; inside a chunk, one KV head after the other, each
// with its rows (longest first) and each row with its slots (item_position below), so the
// order is longest first chunk by chunk, not item by item: the last KV head of the last
// chunk runs the chunk's longest rows at the very end. The dispatcher sizes a chunk so that
// one KV head's items of it about fill the GPU (sm90; the sm80 kernel keeps one row per
// chunk, CtaShape), and a launch has at least kMinChunksPerLaunch chunks (dispatch.cu), which
// keeps that tail short: the CTAs in flight then read one KV head's K and V, which L2 holds,
// rather than every KV head's at once. The CTAs of one (row, KV head) have consecutive indices, so they run
// together and read the shared K/V blocks while they are in L2.
#pragma once

#include <cstdint>

#include "core/problem.hpp"
#include "proxyattn/proxyattn.h"
#include "proxyattn/proxyattn_tuning.h"

namespace proxyattn::cuda::attention {

inline constexpr int kWarps = 4;          // warps per CTA
inline constexpr int kWarpRows = 32;      // query rows per warp: two m16 MMA tiles
inline constexpr int kTileKeys = 64;      // keys per K/V tile in shared memory
inline constexpr int kDenseBlock = 128;   // block edge of pa_dense_attention's work list

// The sm90 kernel (sm90/kernel.cuh): a producer warpgroup feeding consumers_for(head_dim)
// consumer warpgroups, each a pair of kGroupRows query rows (one wgmma m64 tile) of one head.
// Three at d = 64 (FA3's 192-row tile there): a d = 64 tile has as many exponentials as a
// d = 128 one over half the products, and two consumer warps per scheduler left the
// softmax latency-bound (docs/history.md, "Where a d = 64 tile's time goes"); d = 128 needs the
// registers of two.
namespace sm90 {
inline constexpr int kMaxConsumers = 3;
inline constexpr int kGroupRows = 64;
constexpr int consumers_for(int head_dim) { return head_dim <= 64 ? kMaxConsumers : 2; }
inline constexpr int kCtasPerSm = 1;  // persistent: one CTA per SM (its shared memory fills the SM)
inline constexpr int kKeyBoxRows = 64;  // keys of one tensor copy (a page of a paged cache holds whole boxes)
}  // namespace sm90

// Query rows of one pair and pairs per CTA: what the dispatcher needs to size the work list.
struct CtaShape {
  int pair_rows;
  int pairs_per_cta;
  int chunk_ctas_per_sm;  // a chunk of the item order fills this many CTAs per SM; 0: one
                          // row per chunk (row-major order)
};
// The sm80 kernel keeps the row-major order: with chunks (of its 2 x SMs resident CTAs) it
// ran 2.4% slower on average over the benchmark's 25 points on the H100 (mma.sync work is
// its limit, not L2), the sm90 kernel 1.2% faster, up to 15% at 64K-128K
// (bench/results/attention-sm90-chunks-*.json).
inline constexpr CtaShape kSm80Shape{kWarpRows, kWarps, 0};
constexpr CtaShape sm90_shape(int head_dim) {
  return {sm90::kGroupRows, sm90::consumers_for(head_dim), sm90::kCtasPerSm};
}

// SeqSpan entries passed by value in the kernel parameters (48 B each: 3 KiB of the
// classic 4 KiB parameter space); batches of more sequences take several launches.
inline constexpr int kMaxSeqsPerLaunch = 64;

// How the pairs of one (row, KV head) are numbered, so which pairs share a CTA. Both read
// each K/V tile of a (row, KV head) from L2 about once per CTA; kChunksOfHead keeps every
// warp of a CTA busy (one head, one count), kHeadsOfChunk lets warps of short-budget heads
// idle while the CTA runs its longest head. Measured on H100 (bench/results/attention-2026-11-23-*,
// N = 32K, 32/8 heads, budgets spread 0.5x..1.5x): kChunksOfHead 2.98 / 13.8 ms,
// kHeadsOfChunk 3.66 / 17.0 ms at density 0.1 / 0.5, so kChunksOfHead is the default
// (tuning.attn_packing, core/tuning.hpp).
enum class Packing : int32_t {
  kChunksOfHead = 0,  // pair = head * chunks + chunk: a CTA holds the row chunks of one head
                      // (of two heads at block 64), all with the same count; with three
                      // sm90 consumers (d = 64) of two heads (three at block 64), ranked by
                      // count (sm90/head_ranking.cuh: heads_by_count)
  kHeadsOfChunk = 1,  // pair = chunk * heads + head: a CTA holds one row chunk of up to
                      // kWarps heads; diagonal tiles above the chunk are skipped
};

// A strided [tokens, heads, head_dim] view; strides in elements, head_dim contiguous.
struct TensorArg {
  const void* data;
  int64_t token_stride;
  int64_t head_stride;
};
struct OutputArg {
  void* data;
  int64_t token_stride;
  int64_t head_stride;
};

// Positions are absolute in a sequence: its queries are positions [kv_length - length,
// kv_length) (SeqSpan), query block m covers positions [m b, (m + 1) b), so the causal masks
// compare positions and a chunk's partial first block is the whole block with its rows
// before the chunk neither loaded nor stored. Keys and values are packed (row kv_begin + pos)
// or a paged cache (block_table).
struct Params {
  TensorArg q, k, v;      // Q [tokens, Hq, d], K and V [kv rows, Hkv, d]
  OutputArg o;            // O [tokens, Hq, d] (written)
  float* lse;             // [Hq, total_tokens] float32, natural log; may be null
  int64_t total_tokens;   // query tokens
  int64_t total_kv_rows;  // rows of K and V: packed keys, or num_pages * page_size
  const int32_t* block_table;  // [num_seqs, max_pages_per_seq] of a paged cache, or null
  int32_t page_size;
  int32_t page_shift;          // log2(page_size) where it is a power of 2 (the sm90 kernel's pages)
  int32_t max_pages_per_seq;
  int32_t num_q_heads;
  int32_t num_kv_heads;
  int32_t q_heads_per_group;  // Hq / g: proxy group of head h is h / q_heads_per_group
  int32_t block_size;         // b, query and key block edge: 64 or 128
  float scale_log2;           // softmax_scale * log2(e): scores go to exp2
  const int32_t* order;       // block index (core/block_index.hpp); null = dense causal
  const int32_t* count;       // [total_qblocks, Hq]; unused when dense
  Packing packing;

  // The work list of this launch: rows [row_begin, row_begin + num_rows) of the batch,
  // those of seqs[0 .. num_seqs) (non-empty sequences only, consecutive).
  int64_t row_begin;
  int32_t num_rows;
  int32_t num_seqs;
  int32_t slots_per_row;      // CTAs per (row, KV head)
  int32_t rows_per_chunk;     // rows of a chunk of the item order (>= 1; 1: row-major order)
  uint32_t* item_counter;     // sm90: next work item to hand out, zeroed before the launch;
                              // null: CTA i runs item i only (a launch of one CTA per item)
  int32_t consumer_turns;     // sm90: 1 = the consumers take turns issuing products (ping-pong)
  int32_t rank_heads;         // sm90 with three consumers: 1 = the slots take a row's heads by count
  SeqSpan seqs[kMaxSeqsPerLaunch];
};

static_assert(sizeof(Params) <= 4096, "kernel parameters within the classic 4 KiB limit");

// Where work item `item` of the launch sits: chunk c = item / (R * Hkv * slots) holds rows'
// [c R, c R + rows) (R = rows_per_chunk, rows = R except in a shorter last chunk, row'
// counting from the launch's last row down), and the item's offset inside its chunk is
// (kv_head * rows + row' - c R) * slots + slot.
struct ItemPosition {
  int64_t row;  // query-block row of the batch
  int kv_head;
  int slot;
};
PA_HOST_DEVICE inline ItemPosition item_position(const Params& p, int64_t item) {
  const int64_t chunk_items = int64_t(p.rows_per_chunk) * p.num_kv_heads * p.slots_per_row;
  const int64_t first = item / chunk_items * p.rows_per_chunk;  // row' of the chunk's first row
  const int64_t within = item % chunk_items;
  const int64_t rows = p.rows_per_chunk < p.num_rows - first ? int64_t(p.rows_per_chunk) : p.num_rows - first;
  const int64_t head_items = rows * p.slots_per_row;
  ItemPosition position;
  position.kv_head = int(within / head_items);
  const int64_t rest = within % head_items;
  position.slot = int(rest % p.slots_per_row);
  position.row = p.row_begin + (p.num_rows - 1 - (first + rest / p.slots_per_row));
  return position;
}

// One launcher per compiled variant (sm80/instantiate_*.cu, sm90/instantiate_*.cu): returns
// the launch's status. The work list has num_rows * num_kv_heads * slots_per_row items:
// run_sm80 launches a CTA per item, run_sm90 persistent CTAs (one per SM) unless the
// tuning says otherwise (attn_persistent, attn_max_ctas; run_sm80 ignores it). run_sm90
// needs a device of compute capability 9.0 and total_tokens + kTmaSlack <= INT32_MAX (its
// tensor-copy coordinates are int32).
inline constexpr int64_t kTmaSlack = 256;
template <pa_dtype kDtype, int kHeadDim>
pa_status run_sm80(const Params& params, int64_t items, const pa_tuning& tuning, void* stream);
template <pa_dtype kDtype, int kHeadDim>
pa_status run_sm90(const Params& params, int64_t items, const pa_tuning& tuning, void* stream);

}  // namespace proxyattn::cuda::attention
