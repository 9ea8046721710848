// The pieces of PA_BUDGET_RULE_RANKED the fp64 references share (tests/reference.cpp, the
// GPU estimation test): written from ALGORITHM.md and docs/design.md, not from the library.
#pragma once

#include <algorithm>
#include <vector>

#include "proxyattn/proxyattn.h"

namespace proxyattn::test {

// How many blocks of query-block row m are forced (sink, diagonal): its ranking's first entries.
inline int forced_blocks(int m, const pa_config& c) { return std::min(m + 1, c.force_sink + c.force_local); }

// Query-block row m's anchor-free ranking from its scores a[0..m]: the forced sink and
// diagonal first, then the other blocks by score descending (ties to the lower block).
inline std::vector<int> anchor_free_ranking(const double* a, int m, const pa_config& c) {
  std::vector<int> ranking;
  if (c.force_sink) ranking.push_back(0);
  if (c.force_local && (m > 0 || !c.force_sink)) ranking.push_back(m);
  const size_t forced = ranking.size();
  for (int n = 0; n <= m; ++n)
    if (std::find(ranking.begin(), ranking.begin() + forced, n) == ranking.begin() + forced) ranking.push_back(n);
  std::stable_sort(ranking.begin() + forced, ranking.end(), [&](int x, int y) { return a[x] > a[y]; });
  return ranking;
}

// The share of a head's last-row mass the ranked count reaches: 1 - s (1 - gamma), at least 0.
inline double ranked_share(const pa_config& c) {
  return std::max(0.0, 1.0 - double(c.ranked_slack) * (1.0 - double(c.gamma)));
}

}  // namespace proxyattn::test
