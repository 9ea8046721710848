// The CPU backend: ALGORITHM.md steps 2-7 on host memory, multithreaded.
#pragma once

#include <cstddef>

#include "core/given_budgets.hpp"
#include "core/plan.hpp"

namespace proxyattn::cpu {

// Bytes of host workspace pa_estimate needs for this plan.
size_t estimate_workspace_bytes(const PlanDesc& plan);

// Fills the plan's block index (host memory) from Q and the keys of kv, and writes the
// call's positions into kv's estimation state when it has one. given: step 5's results from the
// caller (every sequence then runs sparse), or null.
pa_status estimate(const PlanDesc& plan, const pa_tensor& q, const pa_kv_cache& kv, void* workspace,
                   const GivenBudgets* given = nullptr);

// Block-sparse attention over the plan's index. lse may be null.
pa_status attend(const PlanDesc& plan, const pa_tensor& q, const pa_kv_cache& kv, const pa_tensor& o,
                 float* lse);

// Exact causal attention (packed keys; queries at the end of their keys when chunked).
pa_status dense_attention(const pa_problem& problem, float scale, const pa_tensor& q,
                          const pa_tensor& k, const pa_tensor& v, const pa_tensor& o, float* lse);

}  // namespace proxyattn::cpu
