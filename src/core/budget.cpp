#include "core/budget.hpp"

#include <algorithm>
#include <functional>

namespace proxyattn {

int32_t needed_blocks(const double* mass, int32_t n, double gamma, double* scratch) {
  if (n <= 0) return 0;
  std::copy(mass, mass + n, scratch);
  std::sort(scratch, scratch + n, std::greater<double>());
  double total = 0.0;
  for (int32_t i = 0; i < n; ++i) total += scratch[i];
  if (!(total > 0.0)) return n;  // no mass information at all: keep everything
  const double target = gamma * total;
  double prefix = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    prefix += scratch[i];
    if (prefix >= target) return i + 1;
  }
  return n;
}

int32_t ranked_blocks(const double* mass, const int32_t* order, int32_t n, double target) {
  double total = 0.0;
  for (int32_t i = 0; i < n; ++i) total += mass[order[i]];
  if (!(total > 0.0)) return n;
  double prefix = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    prefix += mass[order[i]];
    if (prefix >= target * total) return i + 1;
  }
  return n;
}

std::vector<int32_t> budget_rows(int32_t num_qblocks, int32_t rows) {
  std::vector<int32_t> out;
  for (int32_t j = 1; j <= rows; ++j) {
    const int32_t qb = budget_row(num_qblocks, rows, j);
    if (out.empty() || out.back() != qb) out.push_back(qb);
  }
  return out;
}

int32_t budget_blocks(int32_t needed, int32_t num_kblocks, int32_t min_blocks) {
  return std::min(num_kblocks, std::max(needed, min_blocks));
}

void anchor_blocks(const double* mass, int32_t num_kblocks, int32_t count, bool force_sink,
                   bool force_local, int32_t* out) {
  std::fill(out, out + count, -1);
  for (int32_t a = 0; a < count; ++a) {
    int32_t best = -1;
    for (int32_t n = 0; n < num_kblocks; ++n) {
      const bool forced = (force_sink && n == 0) || (force_local && n == num_kblocks - 1);
      if (forced || std::find(out, out + a, n) != out + a) continue;
      if (best < 0 || mass[n] > mass[best]) best = n;
    }
    out[a] = best;
  }
}

void row_forced(int32_t m, bool force_sink, bool force_local, const int32_t* anchors,
                int32_t count, std::vector<int32_t>& out) {
  out.clear();
  if (force_sink) out.push_back(0);
  if (force_local) out.push_back(m);
  for (int32_t a = 0; a < count; ++a)
    if (anchors[a] >= 0 && anchors[a] <= m) out.push_back(anchors[a]);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

int32_t row_keep(pa_budget_mode mode, int32_t budget, int32_t needed, int32_t num_kblocks,
                 int32_t min_blocks, int32_t m, int32_t forced) {
  const int64_t row_blocks = m + 1;
  int64_t keep = budget;
  if (mode == PA_BUDGET_PROPORTIONAL) {
    // ceil(r_i * (m + 1)) with r_i = needed / num_kblocks, in exact integer arithmetic.
    const int64_t share = (static_cast<int64_t>(needed) * row_blocks + num_kblocks - 1) / num_kblocks;
    keep = std::max<int64_t>(min_blocks, share);
  }
  keep = std::max<int64_t>(std::max<int64_t>(keep, forced), 1);
  return static_cast<int32_t>(std::min(keep, row_blocks));
}

void anchor_ranks(const float* scores, int32_t m, bool force_sink, bool force_local,
                  const std::vector<int32_t>& forced, std::vector<int32_t>& out) {
  out.clear();
  auto base = [&](int32_t n) { return (force_sink && n == 0) || (force_local && n == m); };
  for (int32_t a : forced) {
    if (base(a)) continue;
    int32_t rank = 0;
    for (int32_t n = 0; n <= m; ++n)
      if (n != a && !base(n) && (scores[n] > scores[a] || (scores[n] == scores[a] && n < a))) ++rank;
    out.push_back(rank);
  }
  std::sort(out.begin(), out.end());
}

int32_t row_keep_anchored(pa_anchor_mode anchor_mode, pa_budget_mode mode, int32_t budget,
                          int32_t needed, int32_t num_kblocks, int32_t min_blocks, int32_t m,
                          int32_t base_forced, int32_t forced, const int32_t* ranks,
                          int32_t num_ranks) {
  if (anchor_mode == PA_ANCHORS_IN_BUDGET || num_ranks == 0)
    return row_keep(mode, budget, needed, num_kblocks, min_blocks, m, forced);
  const int32_t base = row_keep(mode, budget, needed, num_kblocks, min_blocks, m, base_forced);
  const int32_t ranked = int32_t(std::lower_bound(ranks, ranks + num_ranks, base - base_forced) - ranks);
  return on_top_keep(base, base_forced, forced, ranked, m);
}

}  // namespace proxyattn
