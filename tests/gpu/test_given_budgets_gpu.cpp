// pa_estimate_kv_given on the GPU (context parallelism): chunks of a bf16 prompt estimated with
// the whole prompt's step 5 (from the GPU's own whole-prompt estimation) get the whole prompt's
// rows, for g 1 and 2 and both budget modes; a refused call leaves the device plan untouched.
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fixtures.hpp"
#include "gpu_util.hpp"

namespace proxyattn::test {
namespace {

constexpr int kHq = 4, kHkv = 2, kD = 64, kBlock = 64, kN = 2000;
constexpr size_t kElem = 2;  // bf16

pa_config small_config(int groups, pa_budget_mode mode) { return given_budgets_config(kD, kBlock, groups, mode); }

void check_cuda(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
}

struct DevicePrompt {
  DeviceBuffer q, k;
};

// One sequence on the device: queries [begin, end) at the end of keys [0, end).
struct DeviceCall {
  int begin, end;
  ChunkProblem chunk;
  const pa_problem& problem = chunk.problem;
  std::unique_ptr<DeviceBuffer> storage, work;
  pa_plan* plan = nullptr;
  DeviceCall(int b, int e, const pa_config& c) : begin(b), end(e), chunk(b, e, kHq, kHkv, kD, PA_DTYPE_BFLOAT16) {
    size_t plan_bytes = 0, work_bytes = 0;
    check(pa_plan_bytes(&problem, &c, &plan_bytes));
    check(pa_workspace_bytes(&problem, &c, &work_bytes));
    storage = std::make_unique<DeviceBuffer>(plan_bytes);
    work = std::make_unique<DeviceBuffer>(work_bytes);
    check(pa_plan_create(&problem, &c, storage->get(), plan_bytes, &plan));
  }
  ~DeviceCall() { pa_plan_free(plan); }
  pa_status estimate(DevicePrompt& x, const pa_given_budgets* given) {
    pa_tensor q = pa_tensor_contiguous(x.q.as<char>() + size_t(begin) * kHq * kD * kElem, kHq, kD);
    pa_kv_cache kv{};
    kv.k = pa_tensor_contiguous(x.k.get(), kHkv, kD);
    kv.v = kv.k;
    const pa_status s = pa_estimate_kv_given(plan, &q, &kv, given, work->get(), work->bytes(), nullptr);
    cudaDeviceSynchronize();
    return s;
  }
  std::vector<std::vector<int32_t>> rows(int groups) const {
    return index_rows(plan, begin / kBlock, (end + kBlock - 1) / kBlock, groups, kHq);
  }
};

DevicePrompt device_prompt() {
  const ChunkProblem whole(0, kN, kHq, kHkv, kD, PA_DTYPE_BFLOAT16);
  const HostQKV x = structured_qkv(whole.problem, 11);
  DevicePrompt d{DeviceBuffer(x.q.size()), DeviceBuffer(x.k.size())};
  check_cuda(d.q.upload(x.q.data()));
  check_cuda(d.k.upload(x.k.data()));
  return d;
}

class GivenBudgetsGpu : public ::testing::TestWithParam<std::tuple<int, pa_budget_mode>> {};

TEST_P(GivenBudgetsGpu, ChunksGetTheWholePromptRows) {
  PA_REQUIRE_GPU();
  const auto [groups, mode] = GetParam();
  const pa_config c = small_config(groups, mode);
  DevicePrompt x = device_prompt();
  DeviceCall whole(0, kN, c);
  pa_tensor q = pa_tensor_contiguous(x.q.get(), kHq, kD), k = pa_tensor_contiguous(x.k.get(), kHkv, kD);
  ASSERT_EQ(pa_estimate(whole.plan, &q, &k, whole.work->get(), whole.work->bytes(), nullptr), PA_STATUS_SUCCESS)
      << pa_last_error();
  const auto want = whole.rows(groups);
  pa_config resolved{};
  check(pa_plan_get_config(whole.plan, &resolved));
  std::vector<int32_t> budget(kHq), needed(kHq), anchors(size_t(kHq) * resolved.anchor_blocks);
  check(pa_plan_get_heads(whole.plan, budget.data(), needed.data(), nullptr));
  check(pa_plan_get_anchors(whole.plan, anchors.data()));
  const int32_t nkb = (kN + kBlock - 1) / kBlock;
  const pa_given_budgets given{needed.data(), anchors.data(), &nkb};
  for (auto [begin, end] : {std::pair{0, 448}, {128, 320}, {448, 960}, {960, 2000}, {64, 2000}}) {
    SCOPED_TRACE(std::to_string(begin) + ".." + std::to_string(end));
    DeviceCall call(begin, end, c);
    ASSERT_EQ(call.estimate(x, &given), PA_STATUS_SUCCESS) << pa_last_error();
    const auto rows = call.rows(groups);
    for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i], want[begin / kBlock + i]) << "row " << i;
    std::vector<int32_t> got_budget(kHq), got_needed(kHq);
    check(pa_plan_get_heads(call.plan, got_budget.data(), got_needed.data(), nullptr));
    EXPECT_EQ(got_budget, budget);
    EXPECT_EQ(got_needed, needed);
    EXPECT_EQ(pa_plan_check(call.plan), PA_STATUS_SUCCESS) << pa_last_error();
  }
  // A refused call writes nothing: the plan keeps the last call's rows.
  DeviceCall call(448, 960, c);
  ASSERT_EQ(call.estimate(x, &given), PA_STATUS_SUCCESS);
  const auto before = call.rows(groups);
  std::vector<int32_t> bad = needed;
  bad[1] = 0;
  const pa_given_budgets refused{bad.data(), anchors.data(), &nkb};
  EXPECT_EQ(call.estimate(x, &refused), PA_STATUS_INVALID_CONFIG);
  EXPECT_NE(std::string(pa_last_error()).find("budgets->needed[0][1]"), std::string::npos) << pa_last_error();
  EXPECT_EQ(call.rows(groups), before);
}

INSTANTIATE_TEST_SUITE_P(GroupsAndModes, GivenBudgetsGpu,
                         ::testing::Combine(::testing::Values(1, 2),
                                            ::testing::Values(PA_BUDGET_ABSOLUTE, PA_BUDGET_PROPORTIONAL)));

}  // namespace
}  // namespace proxyattn::test
