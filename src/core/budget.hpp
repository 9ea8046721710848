// Budget math of ALGORITHM.md steps 5 and 6, shared by every backend.
#pragma once

#include <cstdint>
#include <vector>

#include "core/problem.hpp"
#include "proxyattn/proxyattn.h"

namespace proxyattn {

// count_i: the smallest k >= 1 such that the k largest entries of mass[0:n] sum to at
// least gamma times their total. mass is non-negative; scratch holds n doubles and is
// overwritten. Ties and rounding: the total is summed in the same (sorted) order as the
// prefix, so gamma = 1 stops exactly at the last non-zero block.
int32_t needed_blocks(const double* mass, int32_t n, double gamma, double* scratch);

// PA_BUDGET_RULE_RANKED's count: the fewest leading entries of order[0:n] (a permutation of
// the n blocks: the group's ranking of the last query block) whose masses reach target times
// their total, summed in that order; n when the total is 0 (no mass information) or rounding
// keeps the sum under the target.
int32_t ranked_blocks(const double* mass, const int32_t* order, int32_t n, double target);

// Query block j (1..R) of step 5 with budget_rows = R over num_qblocks blocks: round(nb j /
// R) - 1, at least 0 (eval/budget_rows.py's spread_blocks; j = R gives nb - 1). Halves round
// to even (Python's round), in exact integer arithmetic.
PA_HOST_DEVICE inline int32_t budget_row(int32_t num_qblocks, int32_t rows, int32_t j) {
  const int64_t num = int64_t(num_qblocks) * j, quot = num / rows, rem = num % rows;
  const int64_t rounded = 2 * rem > rows || (2 * rem == rows && quot % 2 == 1) ? quot + 1 : quot;
  return rounded > 0 ? int32_t(rounded - 1) : 0;
}

// The query blocks step 5 measures: budget_row for j = 1..R, ascending, duplicates removed.
std::vector<int32_t> budget_rows(int32_t num_qblocks, int32_t rows);

// K_i = max(count_i, Kmin), never more than the sequence's blocks.
int32_t budget_blocks(int32_t needed, int32_t num_kblocks, int32_t min_blocks);

// Anchors of one head (config.anchor_blocks = count): the `count` blocks of largest mass in
// the last query block's row (step 5's a_i over num_kblocks blocks), by mass descending, ties
// to the lower block, skipping the blocks that row forces anyway (the sink when force_sink,
// the last block when force_local); out[count], -1 where fewer candidates exist.
void anchor_blocks(const double* mass, int32_t num_kblocks, int32_t count, bool force_sink,
                   bool force_local, int32_t* out);

// Forced blocks of query-block row m of a group, ascending and unique: the sink (block 0),
// the diagonal (block m) and the group's anchors n <= m (anchors[count], -1 entries ignored).
void row_forced(int32_t m, bool force_sink, bool force_local, const int32_t* anchors,
                int32_t count, std::vector<int32_t>& out);

// k_im of ALGORITHM.md step 6: how many entries of order[m] head i keeps in row m,
// raised to the row's forced blocks so that they are always kept.
int32_t row_keep(pa_budget_mode mode, int32_t budget, int32_t needed, int32_t num_kblocks,
                 int32_t min_blocks, int32_t m, int32_t forced);

// Anchors on top (PA_ANCHORS_ON_TOP): the ranks of row m's anchors (forced, the blocks in
// `forced` that are neither the forced sink nor the forced diagonal) among the blocks n <= m
// that are neither, in score order (descending, ties to the lower block; the anchors ranked
// like any block), ascending in out.
void anchor_ranks(const float* scores, int32_t m, bool force_sink, bool force_local,
                  const std::vector<int32_t>& forced, std::vector<int32_t>& out);

// Head count of a row with anchors on top: base = row_keep with only the sink and the diagonal
// forced (base_forced of them), so K' = base - base_forced ranked blocks; ranked_anchors of the
// row's anchors rank below K' (anchor_ranks); forced = |sink, diagonal, anchors|. The head keeps
// its anchor-free set and the anchors: forced + K' - ranked_anchors entries of the order row.
PA_HOST_DEVICE inline int32_t on_top_keep(int32_t base, int32_t base_forced, int32_t forced,
                                          int32_t ranked_anchors, int32_t m) {
  const int32_t keep = forced + (base - base_forced) - ranked_anchors;
  return keep < m + 1 ? keep : m + 1;
}

// k_im of either anchor mode: row_keep(..., forced) counted in the budget; on top,
// on_top_keep of row_keep(..., base_forced) with ranks [num_ranks] (ascending) of the anchors.
int32_t row_keep_anchored(pa_anchor_mode anchor_mode, pa_budget_mode mode, int32_t budget,
                          int32_t needed, int32_t num_kblocks, int32_t min_blocks, int32_t m,
                          int32_t base_forced, int32_t forced, const int32_t* ranks,
                          int32_t num_ranks);

}  // namespace proxyattn
