// The tuning (include/proxyattn/proxyattn_tuning.h): the defaults a plan starts with, each
// bad field refused with a message naming it and nothing written, the plan's tuning set and
// read back, the workspace size following the tuning, and no environment variable read.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "proxyattn/proxyattn_tuning.h"

namespace proxyattn::test {
namespace {

bool same(const pa_tuning& a, const pa_tuning& b) { return std::memcmp(&a, &b, sizeof(pa_tuning)) == 0; }

// A tuning with one field changed.
template <typename Change>
pa_tuning with(Change change) {
  pa_tuning t = pa_tuning_default();
  change(t);
  return t;
}

// Two sequences, sparse at block 64 (the CPU backend runs the plans).
class Tuning : public ::testing::Test {
 protected:
  Batch batch{{300, 77}, 4, 2, 64, PA_DTYPE_FLOAT32};
  pa_problem p = batch.problem();
  pa_config c = sparse_config();
  static pa_config sparse_config() {
    pa_config config = pa_config_default(64);
    config.block_size = 64, config.min_budget_tokens = 128, config.dense_below = 0;
    return config;
  }
};

TEST_F(Tuning, DefaultsAreTheDocumentedOnes) {
  const pa_tuning t = pa_tuning_default();
  EXPECT_EQ(t.attn_kernel, PA_TUNING_KERNEL_AUTO);
  EXPECT_EQ(t.attn_packing, PA_TUNING_PACKING_CHUNKS_OF_HEAD);
  EXPECT_EQ(t.attn_rows_per_chunk, 0);
  EXPECT_EQ(t.attn_persistent, 1);
  EXPECT_EQ(t.attn_consumer_turns, 1);
  EXPECT_EQ(t.attn_rank_heads, 1);
  EXPECT_EQ(t.attn_max_ctas, 0);
  EXPECT_EQ(t.est_block_logits, 1);
}

TEST_F(Tuning, PlanStartsAtTheDefaultsAndKeepsWhatIsSet) {
  Plan plan = Plan::on_host(p, c);
  pa_tuning got{};
  ASSERT_EQ(pa_plan_get_tuning(plan.get(), &got), PA_STATUS_SUCCESS) << pa_last_error();
  EXPECT_TRUE(same(got, pa_tuning_default()));

  const pa_tuning t = with([](pa_tuning& x) {
    x.attn_kernel = PA_TUNING_KERNEL_SM80;
    x.attn_packing = PA_TUNING_PACKING_HEADS_OF_CHUNK;
    x.attn_rows_per_chunk = 3;
    x.attn_persistent = 0;
    x.attn_consumer_turns = 0;
    x.attn_rank_heads = 0;
    x.attn_max_ctas = 5;
    x.est_block_logits = 0;
  });
  ASSERT_EQ(pa_plan_set_tuning(plan.get(), &t), PA_STATUS_SUCCESS) << pa_last_error();
  ASSERT_EQ(pa_plan_get_tuning(plan.get(), &got), PA_STATUS_SUCCESS) << pa_last_error();
  EXPECT_TRUE(same(got, t));

  // A host plan runs whatever its tuning (the CPU backend has no speed settings), and a
  // tuning set after the estimation leaves the plan estimated.
  HostQKV in = random_qkv(p, 5);
  plan.estimate(in.tq(), in.tk());
  ASSERT_EQ(pa_plan_set_tuning(plan.get(), &t), PA_STATUS_SUCCESS) << pa_last_error();
  std::vector<float> o(size_t(p.total_tokens) * p.num_q_heads * p.head_dim);
  pa_tensor ot = pa_tensor_contiguous(o.data(), p.num_q_heads, p.head_dim);
  plan.attend(in.tq(), in.tk(), in.tv(), ot);
}

// Every field with a value out of its range: PA_STATUS_INVALID_CONFIG naming the field, the
// plan's tuning and the outputs of the other calls untouched.
TEST_F(Tuning, BadFieldsAreRefusedByName) {
  struct Bad {
    const char* field;
    pa_tuning tuning;
  };
  const Bad bad[] = {
      {"tuning.attn_kernel = 2", with([](pa_tuning& t) { t.attn_kernel = 2; })},
      {"tuning.attn_kernel = -1", with([](pa_tuning& t) { t.attn_kernel = -1; })},
      {"tuning.attn_packing = 2", with([](pa_tuning& t) { t.attn_packing = 2; })},
      {"tuning.attn_rows_per_chunk = -1", with([](pa_tuning& t) { t.attn_rows_per_chunk = -1; })},
      {"tuning.attn_persistent = 2", with([](pa_tuning& t) { t.attn_persistent = 2; })},
      {"tuning.attn_consumer_turns = -1", with([](pa_tuning& t) { t.attn_consumer_turns = -1; })},
      {"tuning.attn_rank_heads = 7", with([](pa_tuning& t) { t.attn_rank_heads = 7; })},
      {"tuning.attn_max_ctas = -3", with([](pa_tuning& t) { t.attn_max_ctas = -3; })},
      {"tuning.est_block_logits = 2", with([](pa_tuning& t) { t.est_block_logits = 2; })},
  };
  Plan plan = Plan::on_host(p, c);
  HostQKV in = random_qkv(p, 6);
  std::vector<float> o(size_t(p.total_tokens) * p.num_q_heads * p.head_dim, 42.0f);
  pa_tensor ot = pa_tensor_contiguous(o.data(), p.num_q_heads, p.head_dim);
  pa_tensor q = in.tq(), k = in.tk(), v = in.tv();
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.field);
    EXPECT_EQ(pa_plan_set_tuning(plan.get(), &b.tuning), PA_STATUS_INVALID_CONFIG);
    EXPECT_NE(std::string(pa_last_error()).find(b.field), std::string::npos) << pa_last_error();
    pa_tuning got{};
    ASSERT_EQ(pa_plan_get_tuning(plan.get(), &got), PA_STATUS_SUCCESS);
    EXPECT_TRUE(same(got, pa_tuning_default()));

    size_t bytes = 12345;
    EXPECT_EQ(pa_workspace_bytes_tuned(&p, &c, &b.tuning, &bytes), PA_STATUS_INVALID_CONFIG);
    EXPECT_NE(std::string(pa_last_error()).find(b.field), std::string::npos) << pa_last_error();
    EXPECT_EQ(bytes, 12345u);

    EXPECT_EQ(pa_dense_attention_tuned(&p, 0.125f, &b.tuning, &q, &k, &v, &ot, nullptr, nullptr),
              PA_STATUS_INVALID_CONFIG);
    EXPECT_NE(std::string(pa_last_error()).find(b.field), std::string::npos) << pa_last_error();
    for (float y : o) ASSERT_EQ(y, 42.0f);
  }
}

TEST_F(Tuning, NullArgumentsAreRefusedByName) {
  Plan plan = Plan::on_host(p, c);
  const pa_tuning t = pa_tuning_default();
  pa_tuning got{};
  size_t bytes = 0;
  EXPECT_EQ(pa_plan_set_tuning(nullptr, &t), PA_STATUS_NULL_POINTER);
  EXPECT_NE(std::string(pa_last_error()).find("plan"), std::string::npos) << pa_last_error();
  EXPECT_EQ(pa_plan_set_tuning(plan.get(), nullptr), PA_STATUS_NULL_POINTER);
  EXPECT_NE(std::string(pa_last_error()).find("tuning"), std::string::npos) << pa_last_error();
  EXPECT_EQ(pa_plan_get_tuning(plan.get(), nullptr), PA_STATUS_NULL_POINTER);
  EXPECT_NE(std::string(pa_last_error()).find("tuning"), std::string::npos) << pa_last_error();
  EXPECT_EQ(pa_plan_get_tuning(nullptr, &got), PA_STATUS_NULL_POINTER);
  EXPECT_EQ(pa_workspace_bytes_tuned(&p, &c, nullptr, &bytes), PA_STATUS_NULL_POINTER);
  EXPECT_NE(std::string(pa_last_error()).find("tuning"), std::string::npos) << pa_last_error();
}

// The dense attention with a tuning is the dense attention (the CPU has no speed settings).
TEST_F(Tuning, DenseAttentionTunedOnTheHost) {
  HostQKV in = random_qkv(p, 7);
  pa_tensor q = in.tq(), k = in.tk(), v = in.tv();
  const size_t n = size_t(p.total_tokens) * p.num_q_heads * p.head_dim;
  std::vector<float> a(n), b(n);
  pa_tensor ta = pa_tensor_contiguous(a.data(), p.num_q_heads, p.head_dim);
  pa_tensor tb = pa_tensor_contiguous(b.data(), p.num_q_heads, p.head_dim);
  const pa_tuning t = with([](pa_tuning& x) { x.attn_kernel = PA_TUNING_KERNEL_SM80; });
  ASSERT_EQ(pa_dense_attention(&p, 0.125f, &q, &k, &v, &ta, nullptr, nullptr), PA_STATUS_SUCCESS);
  ASSERT_EQ(pa_dense_attention_tuned(&p, 0.125f, &t, &q, &k, &v, &tb, nullptr, nullptr), PA_STATUS_SUCCESS)
      << pa_last_error();
  EXPECT_EQ(a, b);
}

// The workspace follows the tuning: the defaults' is pa_workspace_bytes; without block
// logits the GPU estimation needs less (at 128K tokens, b / s = 32: one float per sampled row
// and causal block pair), never more; in a build without CUDA only the CPU's counts.
TEST(TuningWorkspace, FollowsTheTuning) {
  Batch batch({131072}, 4, 2, 64, PA_DTYPE_BFLOAT16);
  const pa_config c = pa_config_default(64);
  const pa_tuning defaults = pa_tuning_default();
  const pa_tuning two_pass = with([](pa_tuning& t) { t.est_block_logits = 0; });
  const pa_tuning other = with([](pa_tuning& t) {
    t.attn_kernel = PA_TUNING_KERNEL_SM80;
    t.attn_rows_per_chunk = 1;
    t.attn_max_ctas = 3;
  });
  size_t plain = 0, tuned_default = 0, without_logits = 0, tuned_other = 0;
  ASSERT_EQ(pa_workspace_bytes(&batch.problem(), &c, &plain), PA_STATUS_SUCCESS) << pa_last_error();
  ASSERT_EQ(pa_workspace_bytes_tuned(&batch.problem(), &c, &defaults, &tuned_default), PA_STATUS_SUCCESS);
  ASSERT_EQ(pa_workspace_bytes_tuned(&batch.problem(), &c, &two_pass, &without_logits), PA_STATUS_SUCCESS);
  ASSERT_EQ(pa_workspace_bytes_tuned(&batch.problem(), &c, &other, &tuned_other), PA_STATUS_SUCCESS);
  EXPECT_EQ(plain, tuned_default);
  EXPECT_EQ(tuned_other, plain);  // the attention's settings need no workspace
  const int64_t blocks = 131072 / 128, sampled_per_block = 128 / 4;
  const size_t logits = size_t(blocks * (blocks + 1) / 2 * sampled_per_block) * sizeof(float);
#if PROXYATTN_TEST_CUDA_BUILD
  EXPECT_EQ(plain - without_logits, logits);
#else
  (void)logits;
  EXPECT_EQ(without_logits, plain);
#endif
}

// The variables that once chose the kernels' settings (PROXYATTN_*) change nothing now.
TEST(TuningWorkspace, EnvironmentIsNotRead) {
  Batch batch({131072}, 4, 2, 64, PA_DTYPE_BFLOAT16);
  const pa_config c = pa_config_default(64);
  size_t before = 0, after = 0;
  ASSERT_EQ(pa_workspace_bytes(&batch.problem(), &c, &before), PA_STATUS_SUCCESS);
  setenv("PROXYATTN_EST_BLOCK_LOGITS", "0", 1);
  const pa_status status = pa_workspace_bytes(&batch.problem(), &c, &after);
  unsetenv("PROXYATTN_EST_BLOCK_LOGITS");
  ASSERT_EQ(status, PA_STATUS_SUCCESS);
  EXPECT_EQ(before, after);
}

}  // namespace
}  // namespace proxyattn::test
