// Budget math (ALGORITHM.md step 5-6) on hand-made distributions with known answers.
#include <gtest/gtest.h>

#include <vector>

#include "core/budget.hpp"

namespace proxyattn {
namespace {

int32_t needed(std::vector<double> mass, double gamma) {
  std::vector<double> scratch(mass.size());
  return needed_blocks(mass.data(), int32_t(mass.size()), gamma, scratch.data());
}

TEST(Budget, NeededBlocksKnownAnswers) {
  EXPECT_EQ(needed({0.5, 0.3, 0.1, 0.1}, 0.8), 2);
  EXPECT_EQ(needed({0.5, 0.3, 0.1, 0.1}, 0.81), 3);
  EXPECT_EQ(needed({0.1, 0.1, 0.3, 0.5}, 0.8), 2);   // order of input does not matter
  EXPECT_EQ(needed({0.5, 0.3, 0.1, 0.1}, 0.5), 1);
  EXPECT_EQ(needed({0.5, 0.3, 0.1, 0.1}, 1.0), 4);
  EXPECT_EQ(needed({0.7, 0.0, 0.3, 0.0}, 1.0), 2);   // gamma = 1 stops at the last non-zero block
  EXPECT_EQ(needed({2.0, 6.0, 2.0}, 0.6), 1);        // unnormalised masses
  EXPECT_EQ(needed({0.25, 0.25, 0.25, 0.25}, 0.95), 4);
  EXPECT_EQ(needed({0.25, 0.25, 0.25, 0.25}, 0.5), 2);
  EXPECT_EQ(needed({0.0, 0.0, 0.0}, 0.9), 3);         // no information: keep all
  EXPECT_EQ(needed({1.0}, 0.95), 1);
  EXPECT_EQ(needed({}, 0.95), 0);
}

TEST(Budget, BudgetBlocksClampsToFloorAndLength) {
  EXPECT_EQ(budget_blocks(3, 100, 16), 16);
  EXPECT_EQ(budget_blocks(40, 100, 16), 40);
  EXPECT_EQ(budget_blocks(3, 10, 16), 10);
  EXPECT_EQ(budget_blocks(3, 10, 0), 3);
}

TEST(Budget, ForcedBlocks) {
  EXPECT_EQ(forced_blocks(0, true, true), 1);  // sink and diagonal coincide
  EXPECT_EQ(forced_blocks(0, false, true), 1);
  EXPECT_EQ(forced_blocks(0, false, false), 0);
  EXPECT_EQ(forced_blocks(5, true, true), 2);
  EXPECT_EQ(forced_blocks(5, true, false), 1);
  EXPECT_EQ(forced_blocks(5, false, false), 0);
}

TEST(Budget, RowKeepAbsolute) {
  // K_i = 5 blocks: rows shorter than 5 keep everything.
  EXPECT_EQ(row_keep(PA_BUDGET_ABSOLUTE, 5, 5, 100, 2, 2, 2), 3);
  EXPECT_EQ(row_keep(PA_BUDGET_ABSOLUTE, 5, 5, 100, 2, 10, 2), 5);
  EXPECT_EQ(row_keep(PA_BUDGET_ABSOLUTE, 1, 1, 100, 0, 10, 2), 2);  // raised to the forced blocks
  EXPECT_EQ(row_keep(PA_BUDGET_ABSOLUTE, 1, 1, 100, 0, 10, 0), 1);
}

TEST(Budget, RowKeepProportional) {
  // r_i = 30 / 100; Kmin = 2: row m keeps min(m+1, max(2, ceil(0.3 (m+1)))).
  EXPECT_EQ(row_keep(PA_BUDGET_PROPORTIONAL, 30, 30, 100, 2, 0, 1), 1);
  EXPECT_EQ(row_keep(PA_BUDGET_PROPORTIONAL, 30, 30, 100, 2, 4, 2), 2);    // ceil(1.5) = 2
  EXPECT_EQ(row_keep(PA_BUDGET_PROPORTIONAL, 30, 30, 100, 2, 9, 2), 3);    // ceil(3.0) = 3 exactly
  EXPECT_EQ(row_keep(PA_BUDGET_PROPORTIONAL, 30, 30, 100, 2, 10, 2), 4);   // ceil(3.3) = 4
  EXPECT_EQ(row_keep(PA_BUDGET_PROPORTIONAL, 30, 30, 100, 2, 99, 2), 30);
  EXPECT_EQ(row_keep(PA_BUDGET_PROPORTIONAL, 30, 30, 100, 40, 99, 2), 40);  // floor wins
}

}  // namespace
}  // namespace proxyattn
