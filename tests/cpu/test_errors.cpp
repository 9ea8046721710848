// Every bad input gets its own status and a message naming the argument, and touches no
// output.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "fixtures.hpp"

namespace proxyattn::test {
namespace {

class Errors : public ::testing::Test {
 protected:
  Batch batch{{300}, 4, 2, 64, PA_DTYPE_FLOAT32};
  pa_problem p = batch.problem();
  pa_config c = pa_config_default(64);
  void SetUp() override {
    c.block_size = 64;
    c.min_budget_tokens = 128;
    c.dense_below = 0;
  }
};

// Expects `status` from `call` and a message containing `needle`.
#define EXPECT_FAILS(call, status, needle)                                   \
  do {                                                                       \
    EXPECT_EQ((call), (status));                                             \
    EXPECT_NE(std::string(pa_last_error()).find(needle), std::string::npos) \
        << "message: " << pa_last_error();                                   \
  } while (0)

TEST_F(Errors, ProblemShapes) {
  size_t bytes = 0;
  EXPECT_FAILS(pa_plan_bytes(nullptr, &c, &bytes), PA_STATUS_NULL_POINTER, "problem");
  pa_problem bad = p;
  bad.num_q_heads = 6;
  bad.num_kv_heads = 4;
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SHAPE, "num_q_heads = 6");
  bad = p;
  bad.num_kv_heads = 0;
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SHAPE, "num_kv_heads");
  bad = p;
  bad.head_dim = 0;
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SHAPE, "head_dim");
  bad.head_dim = 1000;
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SHAPE, "head_dim");
  bad = p;
  bad.dtype = static_cast<pa_dtype>(7);
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SHAPE, "dtype");
  bad = p;
  bad.num_seqs = 0;
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SHAPE, "num_seqs");
  EXPECT_FAILS(pa_plan_bytes(&p, &c, nullptr), PA_STATUS_NULL_POINTER, "bytes");
}

TEST_F(Errors, LengthsThatOverflow32BitOffsets) {
  pa_problem bad = p;
  bad.cu_seqlens = nullptr;
  bad.total_tokens = int64_t(std::numeric_limits<int32_t>::max()) + 1;
  size_t bytes = 0;
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_OVERFLOW, "total_tokens");
  bad.total_tokens = -1;
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SHAPE, "total_tokens");
}

TEST_F(Errors, SeqlensNotIncreasing) {
  size_t bytes = 0;
  std::vector<int32_t> cu = {0, 200, 100, 300};
  pa_problem bad = p;
  bad.num_seqs = 3;
  bad.cu_seqlens = cu.data();
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SEQLENS, "decreases at 2");
  cu = {5, 100, 200, 300};
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SEQLENS, "cu_seqlens[0]");
  cu = {0, 100, 200, 299};
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_INVALID_SEQLENS, "total_tokens");
  bad.cu_seqlens = nullptr;
  EXPECT_FAILS(pa_plan_bytes(&bad, &c, &bytes), PA_STATUS_NULL_POINTER, "cu_seqlens");
}

TEST_F(Errors, Config) {
  size_t bytes = 0;
  for (float gamma : {0.0f, -0.5f, 1.01f, std::nanf("")}) {
    pa_config bad = c;
    bad.gamma = gamma;
    EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "gamma");
  }
  pa_config bad = c;
  bad.num_proxy_groups = 3;
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "num_proxy_groups = 3");
  bad.num_proxy_groups = 0;
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "num_proxy_groups");
  bad = c;
  bad.block_size = 96;
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_UNSUPPORTED, "block_size = 96");
  for (int stride : {0, 3, 32}) {
    bad = c;
    bad.stride = stride;
    EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_UNSUPPORTED, "stride");
  }
  bad = c;
  bad.min_budget_tokens = -1;
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "min_budget_tokens");
  bad = c;
  bad.dense_below = -1;
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "dense_below");
  bad = c;
  bad.softmax_scale = 0.0f;
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "softmax_scale");
  bad = c;
  bad.force_sink = 2;
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "force_sink");
  bad = c;
  bad.budget_mode = static_cast<pa_budget_mode>(5);
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "budget_mode");
  for (int anchors : {-2, PA_MAX_ANCHOR_BLOCKS + 1}) {
    bad = c;
    bad.anchor_blocks = anchors;
    EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "anchor_blocks");
  }
  EXPECT_FAILS(pa_plan_bytes(&p, nullptr, &bytes), PA_STATUS_NULL_POINTER, "config");
  EXPECT_EQ(pa_config_validate(&c, &p), PA_STATUS_SUCCESS);
}

// PA_ANCHOR_BLOCKS_AUTO resolves to PA_AUTO_GROUP_ANCHORS / (Q heads per group) in
// [1, PA_MAX_ANCHOR_BLOCKS]; an explicit value stays.
TEST(Config, AutoAnchorBlocks) {
  struct Case {
    int hq, hkv, g, given, resolved;
  };
  for (const Case& k : {Case{32, 8, 1, PA_ANCHOR_BLOCKS_AUTO, 1}, Case{32, 8, 8, PA_ANCHOR_BLOCKS_AUTO, 8},
                        Case{14, 2, 2, PA_ANCHOR_BLOCKS_AUTO, 4}, Case{14, 2, 1, PA_ANCHOR_BLOCKS_AUTO, 2},
                        Case{64, 8, 1, PA_ANCHOR_BLOCKS_AUTO, 1}, Case{4, 4, 4, PA_ANCHOR_BLOCKS_AUTO, 8},
                        Case{32, 8, 1, 3, 3}, Case{32, 8, 1, 0, 0}}) {
    const std::vector<int32_t> cu{0, 300};
    pa_problem prob{};
    prob.num_seqs = 1, prob.total_tokens = 300, prob.cu_seqlens = cu.data();
    prob.num_q_heads = k.hq, prob.num_kv_heads = k.hkv, prob.head_dim = 64;
    prob.dtype = PA_DTYPE_FLOAT32;
    pa_config c = pa_config_default(64);
    EXPECT_EQ(c.anchor_blocks, PA_ANCHOR_BLOCKS_AUTO);
    c.num_proxy_groups = k.g;
    c.anchor_blocks = k.given;
    size_t bytes = 0;
    ASSERT_EQ(pa_plan_bytes(&prob, &c, &bytes), PA_STATUS_SUCCESS) << pa_last_error();
    std::vector<uint8_t> storage(bytes);
    pa_plan* plan = nullptr;
    ASSERT_EQ(pa_plan_create(&prob, &c, storage.data(), bytes, &plan), PA_STATUS_SUCCESS);
    pa_config effective{};
    EXPECT_EQ(pa_plan_get_config(plan, &effective), PA_STATUS_SUCCESS);
    EXPECT_EQ(effective.anchor_blocks, k.resolved) << k.hq << " heads, g " << k.g;
    pa_plan_free(plan);
  }
}

TEST_F(Errors, StorageAndWorkspace) {
  size_t bytes = 0, ws = 0;
  ASSERT_EQ(pa_plan_bytes(&p, &c, &bytes), PA_STATUS_SUCCESS);
  ASSERT_EQ(pa_workspace_bytes(&p, &c, &ws), PA_STATUS_SUCCESS);
  std::vector<uint8_t> storage(bytes);
  pa_plan* plan = nullptr;
  EXPECT_FAILS(pa_plan_create(&p, &c, storage.data(), bytes - 1, &plan), PA_STATUS_BUFFER_TOO_SMALL,
               "storage_bytes");
  EXPECT_FAILS(pa_plan_create(&p, &c, nullptr, bytes, &plan), PA_STATUS_NULL_POINTER, "storage");
  EXPECT_FAILS(pa_plan_create(&p, &c, storage.data(), bytes, nullptr), PA_STATUS_NULL_POINTER, "plan");
  EXPECT_EQ(plan, nullptr);

  ASSERT_EQ(pa_plan_create(&p, &c, storage.data(), bytes, &plan), PA_STATUS_SUCCESS);
  HostQKV x = random_qkv(p, 1);
  pa_tensor q = x.tq(), k = x.tk();
  std::vector<uint8_t> workspace(ws);
  EXPECT_FAILS(pa_estimate(plan, &q, &k, workspace.data(), ws - 1, nullptr), PA_STATUS_BUFFER_TOO_SMALL,
               "workspace_bytes");
  EXPECT_FAILS(pa_estimate(plan, &q, &k, nullptr, ws, nullptr), PA_STATUS_NULL_POINTER, "workspace");
  pa_plan_stats stats;
  EXPECT_FAILS(pa_plan_get_stats(plan, &stats), PA_STATUS_PLAN_MISMATCH, "not been estimated");
  pa_plan_free(plan);
}

TEST_F(Errors, TensorsAndOutputsUntouched) {
  Plan plan = Plan::on_host(p, c);
  HostQKV x = random_qkv(p, 2);
  pa_tensor q = x.tq(), k = x.tk(), v = x.tv();
  const size_t o_bytes = x.q.size();
  std::vector<uint8_t> o_buf(o_bytes, 0xab);
  std::vector<float> lse(size_t(p.num_q_heads) * p.total_tokens, 7.0f);
  pa_tensor o = pa_tensor_contiguous(o_buf.data(), p.num_q_heads, p.head_dim);

  // Attend before any estimate.
  EXPECT_FAILS(pa_attend(plan.get(), &q, &k, &v, &o, lse.data(), nullptr), PA_STATUS_PLAN_MISMATCH,
               "pa_estimate");
  plan.estimate(q, k);
  std::vector<int32_t> count_before;
  {
    int64_t rows = 0;
    ASSERT_EQ(pa_plan_get_layout(plan.get(), &rows, nullptr), PA_STATUS_SUCCESS);
    count_before.resize(rows * p.num_q_heads);
    ASSERT_EQ(pa_plan_get_index(plan.get(), nullptr, count_before.data()), PA_STATUS_SUCCESS);
  }

  EXPECT_FAILS(pa_attend(plan.get(), nullptr, &k, &v, &o, lse.data(), nullptr), PA_STATUS_NULL_POINTER, "q is NULL");
  EXPECT_FAILS(pa_attend(plan.get(), &q, nullptr, &v, &o, lse.data(), nullptr), PA_STATUS_NULL_POINTER, "k is NULL");
  EXPECT_FAILS(pa_attend(plan.get(), &q, &k, nullptr, &o, lse.data(), nullptr), PA_STATUS_NULL_POINTER, "v is NULL");
  EXPECT_FAILS(pa_attend(plan.get(), &q, &k, &v, nullptr, lse.data(), nullptr), PA_STATUS_NULL_POINTER, "o is NULL");
  EXPECT_FAILS(pa_attend(nullptr, &q, &k, &v, &o, lse.data(), nullptr), PA_STATUS_NULL_POINTER, "plan is NULL");
  pa_tensor bad = v;
  bad.head_stride = p.head_dim - 1;
  EXPECT_FAILS(pa_attend(plan.get(), &q, &k, &bad, &o, lse.data(), nullptr), PA_STATUS_INVALID_SHAPE,
               "v.head_stride");
  bad = q;
  bad.token_stride = p.head_dim;  // 4 heads cannot fit in one head's width
  EXPECT_FAILS(pa_attend(plan.get(), &bad, &k, &v, &o, lse.data(), nullptr), PA_STATUS_INVALID_SHAPE,
               "q.token_stride");
  bad = k;
  bad.data = nullptr;
  EXPECT_FAILS(pa_attend(plan.get(), &q, &bad, &v, &o, lse.data(), nullptr), PA_STATUS_NULL_POINTER,
               "k.data");
  bad = o;
  bad.head_stride = 1;
  EXPECT_FAILS(pa_forward(plan.get(), &q, &k, &v, &bad, lse.data(), nullptr, 0, nullptr),
               PA_STATUS_INVALID_SHAPE, "o.head_stride");
  EXPECT_FAILS(pa_dense_attention(&p, -1.0f, &q, &k, &v, &o, lse.data(), nullptr), PA_STATUS_INVALID_CONFIG,
               "softmax_scale");

  // Nothing written: outputs keep their poison, the plan its index.
  for (uint8_t byte : o_buf) ASSERT_EQ(byte, 0xab);
  for (float l : lse) ASSERT_EQ(l, 7.0f);
  std::vector<int32_t> count_after(count_before.size());
  ASSERT_EQ(pa_plan_get_index(plan.get(), nullptr, count_after.data()), PA_STATUS_SUCCESS);
  EXPECT_EQ(count_before, count_after);
}

TEST_F(Errors, InspectionAndRuntime) {
  Plan plan = Plan::on_host(p, c);
  HostQKV x = random_qkv(p, 3);
  plan.estimate(x.tq(), x.tk());
  std::vector<int32_t> nb(64), idx(64 * 64);
  EXPECT_FAILS(pa_plan_to_flex(plan.get(), 1, nb.data(), idx.data()), PA_STATUS_INVALID_SHAPE, "seq = 1");
  EXPECT_FAILS(pa_plan_to_flex(plan.get(), 0, nullptr, idx.data()), PA_STATUS_NULL_POINTER, "kv_num_blocks");
  EXPECT_FAILS(pa_plan_get_stats(plan.get(), nullptr), PA_STATUS_NULL_POINTER, "stats");
  EXPECT_FAILS(pa_set_num_threads(-1), PA_STATUS_INVALID_CONFIG, "num_threads");
  float f = 1.0f;
  EXPECT_FAILS(pa_to_float32(PA_DTYPE_BFLOAT16, nullptr, 1, &f), PA_STATUS_NULL_POINTER, "src");
  EXPECT_FAILS(pa_synth_generate(&p, nullptr, x.q.data(), x.k.data(), x.v.data()), PA_STATUS_NULL_POINTER,
               "params");
  // Every status has a name, and a success clears the message.
  for (int s = 0; s <= PA_STATUS_MEMORY_SPACE; ++s)
    EXPECT_EQ(std::string(pa_status_string(pa_status(s))).rfind("PA_STATUS_", 0), 0u);
  EXPECT_EQ(pa_set_num_threads(0), PA_STATUS_SUCCESS);
  EXPECT_STREQ(pa_last_error(), "");
}

}  // namespace
}  // namespace proxyattn::test
