// Configuration defaults and validation (ALGORITHM.md, "Parameters").
#pragma once

#include "proxyattn/proxyattn.h"

namespace proxyattn {

// Values of ALGORITHM.md. Settings that change results, not speed.
inline constexpr int kDefaultBlockSize = 128;
inline constexpr int kDefaultStride = 4;
inline constexpr float kDefaultGamma = 0.95f;
inline constexpr int kDefaultMinBudgetTokens = 2048;
inline constexpr int kMaxStride = 16;
inline constexpr int kDefaultAnchorBlocks = PA_ANCHOR_BLOCKS_AUTO;
// Anchors on top of each head's budget: mean recall >= gamma on the measured models
// (docs/accuracy.md, "Anchor and budget rules that keep gamma"); PA_ANCHORS_IN_BUDGET is the
// earlier rule. One budget row (the paper's): more rows gained little there, cost estimation
// time, and a chunk cannot measure the earlier rows of the prompt it ends.
inline constexpr pa_anchor_mode kDefaultAnchorMode = PA_ANCHORS_ON_TOP;
inline constexpr int kDefaultBudgetRows = 1;
// Step 5 along the ranking, at 2.5 times gamma's slack: the smallest slack measured that keeps
// mean recall >= gamma within +10% density in every setting on the measured models
// (docs/accuracy.md, "Anchor and budget rules that keep gamma").
inline constexpr pa_budget_rule kDefaultBudgetRule = PA_BUDGET_RULE_RANKED;
inline constexpr float kDefaultRankedSlack = 2.5f;

pa_config default_config(int head_dim);

// Validates every field; when problem is given, also that g divides num_kv_heads.
pa_status validate_config(const pa_config& config, const pa_problem* problem);

// The config with its automatic fields resolved for this problem (anchor_blocks; see
// PA_ANCHOR_BLOCKS_AUTO). config must be valid for problem.
pa_config resolve_config(const pa_config& config, const pa_problem& problem);

// PA_BUDGET_RULE_RANKED's share of a head's last-row mass, 1 - ranked_slack (1 - gamma),
// at least 0.
double ranked_target(const pa_config& config);

// Blocks of the budget floor: ceil(min_budget_tokens / block_size).
int min_budget_blocks(const pa_config& config);

}  // namespace proxyattn
