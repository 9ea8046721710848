#include "core/config.hpp"

#include <algorithm>
#include <cmath>

#include "core/enum_value.hpp"
#include "core/status.hpp"

namespace proxyattn {

pa_config default_config(int head_dim) {
  pa_config c{};
  c.block_size = kDefaultBlockSize;
  c.stride = kDefaultStride;
  c.gamma = kDefaultGamma;
  c.min_budget_tokens = kDefaultMinBudgetTokens;
  c.num_proxy_groups = 1;
  c.force_sink = 1;
  c.force_local = 1;
  c.budget_mode = PA_BUDGET_ABSOLUTE;
  c.dense_below = kDefaultMinBudgetTokens;
  c.softmax_scale = head_dim > 0 ? 1.0f / std::sqrt(static_cast<float>(head_dim)) : 1.0f;
  c.anchor_blocks = kDefaultAnchorBlocks;
  c.anchor_mode = kDefaultAnchorMode;
  c.budget_rows = kDefaultBudgetRows;
  c.budget_rule = kDefaultBudgetRule;
  c.ranked_slack = kDefaultRankedSlack;
  return c;
}

pa_config resolve_config(const pa_config& config, const pa_problem& problem) {
  pa_config c = config;
  if (c.anchor_blocks == PA_ANCHOR_BLOCKS_AUTO) {
    const int heads_per_group = std::max(1, problem.num_q_heads / c.num_proxy_groups);
    c.anchor_blocks = std::clamp(PA_AUTO_GROUP_ANCHORS / heads_per_group, 1, PA_MAX_ANCHOR_BLOCKS);
  }
  return c;
}

int min_budget_blocks(const pa_config& config) {
  // In 64 bits: min_budget_tokens may be any int >= 0 (INT32_MAX: keep every block).
  return static_cast<int>((int64_t(config.min_budget_tokens) + config.block_size - 1) / config.block_size);
}

double ranked_target(const pa_config& config) {
  return std::max(0.0, 1.0 - double(config.ranked_slack) * (1.0 - double(config.gamma)));
}

static bool is_power_of_two(int x) { return x > 0 && (x & (x - 1)) == 0; }

pa_status validate_config(const pa_config& c, const pa_problem* problem) {
  if (c.block_size != 64 && c.block_size != 128)
    return fail(PA_STATUS_UNSUPPORTED, "config.block_size = %d: supported block sizes are 64 and 128",
                c.block_size);
  if (!is_power_of_two(c.stride) || c.stride > kMaxStride)
    return fail(PA_STATUS_UNSUPPORTED, "config.stride = %d: supported strides are 1, 2, 4, 8 and 16",
                c.stride);
  if (!(c.gamma > 0.0f && c.gamma <= 1.0f))  // also rejects NaN
    return fail(PA_STATUS_INVALID_CONFIG, "config.gamma = %g: must lie in (0, 1]",
                static_cast<double>(c.gamma));
  if (c.min_budget_tokens < 0)
    return fail(PA_STATUS_INVALID_CONFIG, "config.min_budget_tokens = %d: must be >= 0",
                c.min_budget_tokens);
  if (c.num_proxy_groups < 1)
    return fail(PA_STATUS_INVALID_CONFIG, "config.num_proxy_groups = %d: must be >= 1",
                c.num_proxy_groups);
  if ((c.force_sink != 0 && c.force_sink != 1) || (c.force_local != 0 && c.force_local != 1))
    return fail(PA_STATUS_INVALID_CONFIG,
                "config.force_sink = %d, config.force_local = %d: each must be 0 or 1",
                c.force_sink, c.force_local);
  const int32_t budget_mode = raw_value(c.budget_mode);  // any int a C caller stored
  if (budget_mode != PA_BUDGET_ABSOLUTE && budget_mode != PA_BUDGET_PROPORTIONAL)
    return fail(PA_STATUS_INVALID_CONFIG, "config.budget_mode = %d: must be PA_BUDGET_ABSOLUTE or "
                "PA_BUDGET_PROPORTIONAL", budget_mode);
  if (c.dense_below < 0)
    return fail(PA_STATUS_INVALID_CONFIG, "config.dense_below = %d: must be >= 0", c.dense_below);
  if (!(c.softmax_scale > 0.0f) || !std::isfinite(c.softmax_scale))
    return fail(PA_STATUS_INVALID_CONFIG, "config.softmax_scale = %g: must be finite and > 0",
                static_cast<double>(c.softmax_scale));
  if (c.anchor_blocks != PA_ANCHOR_BLOCKS_AUTO &&
      (c.anchor_blocks < 0 || c.anchor_blocks > PA_MAX_ANCHOR_BLOCKS))
    return fail(PA_STATUS_INVALID_CONFIG,
                "config.anchor_blocks = %d: must lie in [0, %d] or be PA_ANCHOR_BLOCKS_AUTO (%d)",
                c.anchor_blocks, PA_MAX_ANCHOR_BLOCKS, PA_ANCHOR_BLOCKS_AUTO);
  const int32_t anchor_mode = raw_value(c.anchor_mode);
  if (anchor_mode != PA_ANCHORS_ON_TOP && anchor_mode != PA_ANCHORS_IN_BUDGET)
    return fail(PA_STATUS_INVALID_CONFIG, "config.anchor_mode = %d: must be PA_ANCHORS_ON_TOP or "
                "PA_ANCHORS_IN_BUDGET", anchor_mode);
  if (c.budget_rows < 1 || c.budget_rows > PA_MAX_BUDGET_ROWS)
    return fail(PA_STATUS_INVALID_CONFIG, "config.budget_rows = %d: must lie in [1, %d]", c.budget_rows,
                PA_MAX_BUDGET_ROWS);
  const int32_t budget_rule = raw_value(c.budget_rule);
  if (budget_rule != PA_BUDGET_RULE_PAPER && budget_rule != PA_BUDGET_RULE_RANKED)
    return fail(PA_STATUS_INVALID_CONFIG, "config.budget_rule = %d: must be PA_BUDGET_RULE_PAPER or "
                "PA_BUDGET_RULE_RANKED", budget_rule);
  if (!(c.ranked_slack >= 1.0f) || !std::isfinite(c.ranked_slack))  // also rejects NaN
    return fail(PA_STATUS_INVALID_CONFIG, "config.ranked_slack = %g: must be finite and >= 1",
                static_cast<double>(c.ranked_slack));
  if (problem != nullptr && problem->num_kv_heads > 0 &&
      problem->num_kv_heads % c.num_proxy_groups != 0)
    return fail(PA_STATUS_INVALID_CONFIG,
                "config.num_proxy_groups = %d does not divide problem.num_kv_heads = %d",
                c.num_proxy_groups, problem->num_kv_heads);
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn
