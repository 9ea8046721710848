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

int32_t budget_blocks(int32_t needed, int32_t num_qblocks, int32_t min_blocks) {
  return std::min(num_qblocks, std::max(needed, min_blocks));
}

int32_t forced_blocks(int32_t m, bool force_sink, bool force_local) {
  if (m == 0) return (force_sink || force_local) ? 1 : 0;
  return (force_sink ? 1 : 0) + (force_local ? 1 : 0);
}

int32_t row_keep(pa_budget_mode mode, int32_t budget, int32_t needed, int32_t num_qblocks,
                 int32_t min_blocks, int32_t m, int32_t forced) {
  const int64_t row_blocks = m + 1;
  int64_t keep = budget;
  if (mode == PA_BUDGET_PROPORTIONAL) {
    // ceil(r_i * (m + 1)) with r_i = needed / num_qblocks, in exact integer arithmetic.
    const int64_t share = (static_cast<int64_t>(needed) * row_blocks + num_qblocks - 1) / num_qblocks;
    keep = std::max<int64_t>(min_blocks, share);
  }
  keep = std::max<int64_t>(std::max<int64_t>(keep, forced), 1);
  return static_cast<int32_t>(std::min(keep, row_blocks));
}

}  // namespace proxyattn
