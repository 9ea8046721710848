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

std::vector<int32_t> forced(int32_t m, bool sink, bool local, std::vector<int32_t> anchors = {}) {
  std::vector<int32_t> out;
  row_forced(m, sink, local, anchors.data(), int32_t(anchors.size()), out);
  return out;
}

TEST(Budget, ForcedBlocks) {
  using V = std::vector<int32_t>;
  EXPECT_EQ(forced(0, true, true), V{0});  // sink and diagonal coincide
  EXPECT_EQ(forced(0, false, true), V{0});
  EXPECT_EQ(forced(0, false, false), V{});
  EXPECT_EQ(forced(5, true, true), (V{0, 5}));
  EXPECT_EQ(forced(5, true, false), V{0});
  EXPECT_EQ(forced(5, false, false), V{});
  // anchors: ascending with the others, deduplicated, only causal ones (n <= m), -1 ignored
  EXPECT_EQ(forced(5, true, true, {3, 9, -1, 3, 0, 5, 1}), (V{0, 1, 3, 5}));
  EXPECT_EQ(forced(9, false, false, {9, 2}), (V{2, 9}));
}

std::vector<int32_t> anchors(std::vector<double> mass, int32_t count, bool sink, bool local) {
  std::vector<int32_t> out(count);
  anchor_blocks(mass.data(), int32_t(mass.size()), count, sink, local, out.data());
  return out;
}

TEST(Budget, AnchorBlocksTakeTheLargestMassesOutsideTheForcedOnes) {
  using V = std::vector<int32_t>;
  const std::vector<double> mass{0.5, 0.05, 0.2, 0.05, 0.1, 0.1};
  EXPECT_EQ(anchors(mass, 2, true, true), (V{2, 4}));     // ties to the lower block
  EXPECT_EQ(anchors(mass, 3, false, false), (V{0, 2, 4}));
  EXPECT_EQ(anchors(mass, 2, false, true), (V{0, 2}));
  EXPECT_EQ(anchors(mass, 6, true, true), (V{2, 4, 1, 3, -1, -1}));  // 4 candidates
  EXPECT_EQ(anchors({1.0}, 1, true, true), V{-1});
  EXPECT_EQ(anchors(mass, 0, true, true), V{});
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

namespace proxyattn {
namespace {

// eval/budget_rows.py's spread_blocks (Python's round: halves to even).
TEST(BudgetRows, SpreadLikeTheEvaluation) {
  EXPECT_EQ(budget_rows(128, 1), (std::vector<int32_t>{127}));
  EXPECT_EQ(budget_rows(128, 4), (std::vector<int32_t>{31, 63, 95, 127}));
  EXPECT_EQ(budget_rows(6, 4), (std::vector<int32_t>{1, 2, 3, 5}));    // 1.5 -> 2, 4.5 -> 4
  EXPECT_EQ(budget_rows(10, 4), (std::vector<int32_t>{1, 4, 7, 9}));   // 2.5 -> 2, 7.5 -> 8
  EXPECT_EQ(budget_rows(2, 4), (std::vector<int32_t>{0, 1}));          // duplicates removed
  EXPECT_EQ(budget_rows(1, 16), (std::vector<int32_t>{0}));
}

}  // namespace
}  // namespace proxyattn
