#include "core/given_budgets.hpp"

#include <algorithm>

#include "core/budget.hpp"
#include "core/config.hpp"
#include "core/status.hpp"

namespace proxyattn {

pa_status expand_given_budgets(const PlanDesc& plan, const pa_given_budgets& given, GivenBudgets* out) {
  const pa_problem& p = plan.problem;
  const int hq = p.num_q_heads, t = plan.config.anchor_blocks;
  if (given.needed == nullptr) return fail(PA_STATUS_NULL_POINTER, "budgets->needed is NULL");
  if (given.num_kblocks == nullptr) return fail(PA_STATUS_NULL_POINTER, "budgets->num_kblocks is NULL");
  if (given.anchors == nullptr && t > 0)
    return fail(PA_STATUS_NULL_POINTER, "budgets->anchors is NULL but the plan has anchor_blocks = %d", t);
  GivenBudgets g;
  g.num_kblocks.assign(given.num_kblocks, given.num_kblocks + p.num_seqs);
  g.needed.assign(given.needed, given.needed + size_t(p.num_seqs) * hq);
  if (t > 0) g.anchors.assign(given.anchors, given.anchors + size_t(p.num_seqs) * hq * t);
  g.budget.resize(g.needed.size());
  const int min_blocks = min_budget_blocks(plan.config);
  for (int s = 0; s < p.num_seqs; ++s) {
    const SeqSpan& span = plan.batch.seqs[s];
    const int32_t nkb = g.num_kblocks[s];
    if (span.num_qblocks > 0 && span.short_chunk(plan.config.block_size))
      return fail(PA_STATUS_INVALID_SHAPE,
                  "sequence %d: a chunk of %d queries, fewer than block_size = %d, runs dense: its "
                  "budgets cannot be given (pa_estimate_kv)", s, span.length, plan.config.block_size);
    if (nkb < span.num_kblocks())
      return fail(PA_STATUS_INVALID_SHAPE,
                  "budgets->num_kblocks[%d] = %d: fewer than the call's %d key blocks (kv_len = %d)", s,
                  nkb, span.num_kblocks(), span.kv_length);
    for (int h = 0; h < hq; ++h) {
      const size_t at = size_t(s) * hq + h;
      const int32_t needed = g.needed[at];
      if (needed < 1 || needed > nkb)
        return fail(PA_STATUS_INVALID_CONFIG, "budgets->needed[%d][%d] = %d: outside [1, num_kblocks[%d] = %d]",
                    s, h, needed, s, nkb);
      g.budget[at] = budget_blocks(needed, nkb, min_blocks);
      for (int a = 0; a < t; ++a) {
        const int32_t n = g.anchors[at * t + a];
        if (n < -1 || n >= nkb)
          return fail(PA_STATUS_INVALID_CONFIG,
                      "budgets->anchors[%d][%d][%d] = %d: neither -1 nor in [0, num_kblocks[%d] = %d)", s, h, a,
                      n, s, nkb);
      }
    }
  }
  *out = std::move(g);
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn
