// Comparison of a library block index with the fp64 reference, allowing only documented
// near-ties: a kept block may differ from the reference's only when the two blocks' proxy
// scores are within a relative `tie_tolerance`, and a needed count only by one block when
// the reference prefix mass at the boundary is within `gamma_tolerance` of gamma.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ranked_rule.hpp"
#include "reference.hpp"

namespace proxyattn::test {

struct IndexDiff {
  int rows = 0;         // (head, row) pairs compared
  int tie_rows = 0;     // rows that differ only by near-ties
  int needed_ties = 0;  // heads whose needed count differs at a gamma near-tie
};

inline bool near_gamma_boundary(std::vector<double> mass, int count, double gamma, double tol) {
  std::sort(mass.begin(), mass.end(), std::greater<double>());
  double total = 0, prefix = 0;
  for (double m : mass) total += m;
  for (int i = 0; i < count; ++i) prefix += mass[i];
  const double before = prefix - mass[count - 1];
  return std::abs(prefix / total - gamma) < tol || std::abs(before / total - gamma) < tol;
}

// PA_BUDGET_RULE_RANKED: the prefix of the count's (or one fewer) entries of the ranking
// within tol of the target share of the total.
inline bool near_ranked_boundary(const std::vector<double>& mass, const std::vector<int>& ranking,
                                 int count, double share, double tol) {
  double total = 0, prefix = 0;
  for (double m : mass) total += m;
  for (int i = 0; i < count; ++i) prefix += mass[ranking[i]];
  const double before = prefix - mass[ranking[count - 1]];
  return std::abs(prefix / total - share) < tol || std::abs(before / total - share) < tol;
}

// lib_kept [Hq][Nqb] ascending sets; lib_needed [Hq].
inline IndexDiff compare_index(const std::vector<std::vector<std::vector<int>>>& lib_kept,
                               const int32_t* lib_needed, const RefIndex& ref, const Inputs& in,
                               const pa_config& c, double tie_tolerance, double gamma_tolerance) {
  IndexDiff diff;
  const int nqb = int(ref.kept.empty() ? 0 : ref.kept[0].size());
  std::vector<std::vector<double>> mass;
  for (int h = 0; h < in.hq; ++h) {
    if (lib_needed[h] == ref.needed[h]) continue;
    if (mass.empty()) mass = last_block_mass(in, c);
    EXPECT_EQ(std::abs(lib_needed[h] - ref.needed[h]), 1) << "head " << h;
    const int count = std::max(lib_needed[h], ref.needed[h]);  // the boundary lies below it
    bool tie = near_gamma_boundary(mass[h], count, c.gamma, gamma_tolerance);
    if (!ref.last_ranking.empty()) {
      const std::vector<int>& ranking = ref.last_ranking[h / (in.hq / c.num_proxy_groups)];
      tie = tie || near_ranked_boundary(mass[h], ranking, count, ranked_share(c), gamma_tolerance);
    }
    EXPECT_TRUE(tie) << "head " << h << ": needed " << lib_needed[h] << " vs reference " << ref.needed[h];
    ++diff.needed_ties;
  }
  if (diff.needed_ties > 0) return diff;  // budgets differ: rows are not comparable
  for (int h = 0; h < in.hq; ++h) {
    const int j = h / (in.hq / c.num_proxy_groups);
    for (int m = 0; m < nqb; ++m) {
      ++diff.rows;
      const std::vector<int>& a = lib_kept[h][m];
      const std::vector<int>& b = ref.kept[h][m];
      if (a == b) continue;
      EXPECT_EQ(a.size(), b.size()) << "head " << h << " row " << m;
      if (a.size() != b.size()) return diff;
      std::vector<int> only_lib, only_ref;
      std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(only_lib));
      std::set_difference(b.begin(), b.end(), a.begin(), a.end(), std::back_inserter(only_ref));
      auto score = [&](int n) { return ref.scores[(size_t(j) * nqb + m) * nqb + n]; };
      for (int x : only_lib)
        for (int y : only_ref)
          EXPECT_LE(std::abs(score(x) - score(y)), tie_tolerance * std::max(score(x), score(y)))
              << "head " << h << " row " << m << ": kept block " << x << " (score " << score(x)
              << ") instead of " << y << " (score " << score(y) << ")";
      ++diff.tie_rows;
    }
  }
  return diff;
}

}  // namespace proxyattn::test
