// Step 5's results given by the caller (pa_given_budgets): checked against a plan and expanded
// into the plan's per-head arrays, the same for both backends.
#pragma once

#include <cstdint>
#include <vector>

#include "core/plan.hpp"
#include "proxyattn/proxyattn.h"

namespace proxyattn {

struct GivenBudgets {
  std::vector<int32_t> budget;       // [num_seqs, Hq] K_i of the whole sequence
  std::vector<int32_t> needed;       // [num_seqs, Hq] count_i
  std::vector<int32_t> anchors;      // [num_seqs, Hq, T]
  std::vector<int32_t> num_kblocks;  // [num_seqs] key blocks of the whole sequence
};

// Checks given (every value in range, no chunk shorter than a block) and fills out;
// out is untouched on failure. The message names the argument and entry.
pa_status expand_given_budgets(const PlanDesc& plan, const pa_given_budgets& given, GivenBudgets* out);

}  // namespace proxyattn
