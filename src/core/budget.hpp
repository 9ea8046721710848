// Budget math of ALGORITHM.md steps 5 and 6, shared by every backend.
#pragma once

#include <cstdint>

#include "proxyattn/proxyattn.h"

namespace proxyattn {

// count_i: the smallest k >= 1 such that the k largest entries of mass[0:n] sum to at
// least gamma times their total. mass is non-negative; scratch holds n doubles and is
// overwritten. Ties and rounding: the total is summed in the same (sorted) order as the
// prefix, so gamma = 1 stops exactly at the last non-zero block.
int32_t needed_blocks(const double* mass, int32_t n, double gamma, double* scratch);

// K_i = max(count_i, Kmin), never more than the sequence's blocks.
int32_t budget_blocks(int32_t needed, int32_t num_qblocks, int32_t min_blocks);

// Forced blocks of query-block row m: sink (block 0) and diagonal (block m), deduplicated.
int32_t forced_blocks(int32_t m, bool force_sink, bool force_local);

// k_im of ALGORITHM.md step 6: how many entries of order[m] head i keeps in row m,
// raised to the row's forced blocks so that they are always kept.
int32_t row_keep(pa_budget_mode mode, int32_t budget, int32_t needed, int32_t num_qblocks,
                 int32_t min_blocks, int32_t m, int32_t forced);

}  // namespace proxyattn
