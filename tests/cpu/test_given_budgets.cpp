// pa_estimate_kv_given (context parallelism): a chunk of a prompt estimated with step 5's
// results of the whole prompt gets the whole prompt's rows, whatever its own length (below
// dense_below too), for g 1 and 2 and both budget modes; every refused input leaves the plan
// untouched and names the argument.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "fixtures.hpp"

namespace proxyattn::test {
namespace {

constexpr int kHq = 4, kHkv = 2, kD = 32, kBlock = 64, kN = 1000;

pa_config small_config(int groups, pa_budget_mode mode) { return given_budgets_config(kD, kBlock, groups, mode); }

// One sequence: queries [begin, end) at the end of keys [0, end) (a whole prompt when begin == 0).
struct Call {
  int begin, end;
  ChunkProblem chunk;
  const pa_problem& problem = chunk.problem;
  std::vector<uint8_t> storage, work;
  pa_plan* plan = nullptr;
  Call(int b, int e, const pa_config& c) : begin(b), end(e), chunk(b, e, kHq, kHkv, kD, PA_DTYPE_FLOAT32) {
    size_t plan_bytes = 0, work_bytes = 0;
    check(pa_plan_bytes(&problem, &c, &plan_bytes));
    check(pa_workspace_bytes(&problem, &c, &work_bytes));
    storage.resize(plan_bytes);
    work.resize(work_bytes);
    check(pa_plan_create(&problem, &c, storage.data(), plan_bytes, &plan));
  }
  ~Call() { pa_plan_free(plan); }
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  pa_status estimate(HostQKV& x, const pa_given_budgets* given) {
    pa_tensor q = pa_tensor_contiguous(x.q.data() + size_t(begin) * kHq * kD * sizeof(float), kHq, kD);
    pa_kv_cache kv{};
    kv.k = x.tk();
    kv.v = x.tv();
    return pa_estimate_kv_given(plan, &q, &kv, given, work.data(), work.size(), nullptr);
  }
  // Rows first .. nkb - 1: per row, the g order rows then the Hq counts.
  std::vector<std::vector<int32_t>> rows(int groups) const {
    return index_rows(plan, begin / kBlock, (end + kBlock - 1) / kBlock, groups, kHq);
  }
};

HostQKV prompt() {
  const ChunkProblem whole(0, kN, kHq, kHkv, kD, PA_DTYPE_FLOAT32);
  return structured_qkv(whole.problem, 7);
}

struct Whole {
  std::vector<std::vector<int32_t>> rows;
  std::vector<int32_t> budget, needed, anchors;
  int32_t num_kblocks = (kN + kBlock - 1) / kBlock;
  pa_given_budgets given() const { return {needed.data(), anchors.data(), &num_kblocks}; }
};

Whole whole_prompt(HostQKV& x, const pa_config& c) {
  Call call(0, kN, c);
  pa_tensor q = x.tq(), k = x.tk();
  check(pa_estimate(call.plan, &q, &k, call.work.data(), call.work.size(), nullptr));
  Whole w;
  w.rows = call.rows(c.num_proxy_groups);
  pa_config resolved{};
  check(pa_plan_get_config(call.plan, &resolved));
  w.budget.resize(kHq);
  w.needed.resize(kHq);
  w.anchors.resize(size_t(kHq) * resolved.anchor_blocks);
  check(pa_plan_get_heads(call.plan, w.budget.data(), w.needed.data(), nullptr));
  check(pa_plan_get_anchors(call.plan, w.anchors.data()));
  return w;
}

class GivenBudgets : public ::testing::TestWithParam<std::tuple<int, pa_budget_mode>> {};

TEST_P(GivenBudgets, ChunksGetTheWholePromptRows) {
  const auto [groups, mode] = GetParam();
  const pa_config c = small_config(groups, mode);
  HostQKV x = prompt();
  const Whole w = whole_prompt(x, c);
  const pa_given_budgets given = w.given();
  // (begin, end): pieces of a zigzag layout and others; kv_len below dense_below; a whole prefix.
  for (auto [begin, end] : {std::pair{0, 320}, {128, 256}, {320, 640}, {640, 1000}, {64, 1000}, {0, 1000}}) {
    SCOPED_TRACE(std::to_string(begin) + ".." + std::to_string(end));
    Call call(begin, end, c);
    ASSERT_EQ(call.estimate(x, &given), PA_STATUS_SUCCESS) << pa_last_error();
    const auto rows = call.rows(groups);
    for (size_t i = 0; i < rows.size(); ++i)
      EXPECT_EQ(rows[i], w.rows[begin / kBlock + i]) << "row " << begin / kBlock + i;
    std::vector<int32_t> budget(kHq), needed(kHq);
    check(pa_plan_get_heads(call.plan, budget.data(), needed.data(), nullptr));
    EXPECT_EQ(budget, w.budget);
    EXPECT_EQ(needed, w.needed);
    EXPECT_EQ(pa_plan_check(call.plan), PA_STATUS_SUCCESS) << pa_last_error();
  }
}

INSTANTIATE_TEST_SUITE_P(GroupsAndModes, GivenBudgets,
                         ::testing::Combine(::testing::Values(1, 2),
                                            ::testing::Values(PA_BUDGET_ABSOLUTE, PA_BUDGET_PROPORTIONAL)));

// A refused call: the status, a message naming `names`, and the plan's storage unchanged.
void expect_refused(Call& call, HostQKV& x, const pa_given_budgets* given, pa_status status, const char* names) {
  const std::vector<uint8_t> before = call.storage;
  EXPECT_EQ(call.estimate(x, given), status);
  EXPECT_NE(std::string(pa_last_error()).find(names), std::string::npos) << pa_last_error();
  EXPECT_EQ(call.storage, before);
}

TEST(GivenBudgetsErrors, RefusedInputsLeaveThePlanUntouched) {
  const pa_config c = small_config(1, PA_BUDGET_ABSOLUTE);
  HostQKV x = prompt();
  Whole w = whole_prompt(x, c);
  Call call(320, 640, c);
  expect_refused(call, x, nullptr, PA_STATUS_NULL_POINTER, "budgets");
  pa_given_budgets g = w.given();
  g.needed = nullptr;
  expect_refused(call, x, &g, PA_STATUS_NULL_POINTER, "budgets->needed");
  g = w.given();
  g.anchors = nullptr;
  expect_refused(call, x, &g, PA_STATUS_NULL_POINTER, "budgets->anchors");
  std::vector<int32_t> bad = w.needed;
  bad[2] = w.num_kblocks + 1;
  g = w.given();
  g.needed = bad.data();
  expect_refused(call, x, &g, PA_STATUS_INVALID_CONFIG, "budgets->needed[0][2]");
  std::vector<int32_t> bad_anchors = w.anchors;
  bad_anchors[0] = -2;
  g = w.given();
  g.anchors = bad_anchors.data();
  expect_refused(call, x, &g, PA_STATUS_INVALID_CONFIG, "budgets->anchors[0][0][0]");
  const int32_t few = 5;  // the call has 10 key blocks
  g = w.given();
  g.num_kblocks = &few;
  expect_refused(call, x, &g, PA_STATUS_INVALID_SHAPE, "budgets->num_kblocks[0]");
  Call short_chunk(640, 660, c);
  g = w.given();
  expect_refused(short_chunk, x, &g, PA_STATUS_INVALID_SHAPE, "fewer than block_size");
}

}  // namespace
}  // namespace proxyattn::test
