// Every bad input gets its own status and a message naming the argument, and touches no
// output.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "c_callers.h"
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

// Stores any int in an enum field, as a C caller can (a C++ assignment of an int outside the
// enum's values would itself be undefined).
template <typename E>
void set_raw(E& field, int32_t value) {
  static_assert(sizeof(E) == sizeof(int32_t));
  std::memcpy(&field, &value, sizeof value);
}

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
  set_raw(bad.dtype, 7);
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
  set_raw(bad.budget_mode, 5);
  EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "budget_mode");
  for (int anchors : {-2, PA_MAX_ANCHOR_BLOCKS + 1}) {
    bad = c;
    bad.anchor_blocks = anchors;
    EXPECT_FAILS(pa_plan_bytes(&p, &bad, &bytes), PA_STATUS_INVALID_CONFIG, "anchor_blocks");
  }
  EXPECT_FAILS(pa_plan_bytes(&p, nullptr, &bytes), PA_STATUS_NULL_POINTER, "config");
  EXPECT_EQ(pa_config_validate(&c, &p), PA_STATUS_SUCCESS);
}

// Issue 26: the checks loaded problem.dtype, config.budget_mode, a proxy state's dtype and the
// dtype and status arguments as C++ enums before rejecting them; an int outside the enum's
// values is undefined behaviour there (UBSan with -fno-sanitize-recover stopped these tests). A
// C caller may store any int: each is read as that int and refused by name (or named
// PA_STATUS_UNKNOWN), from C through c_callers.c. `make sanitize` runs this under UBSan.
TEST_F(Errors, EnumsHoldingAnyIntFromC) {
  for (int32_t dtype : {3, 4, 7, -1, INT32_MIN, INT32_MAX}) {
    size_t bytes = 12345;
    EXPECT_FAILS(c_plan_bytes_with_dtype(&p, dtype, &c, &bytes), PA_STATUS_INVALID_SHAPE,
                 "problem.dtype = " + std::to_string(dtype) + ":");
    EXPECT_EQ(bytes, 12345u);
    float f[2] = {1.0f, 2.0f};
    uint16_t h[2] = {0, 0};
    EXPECT_FAILS(c_to_float32(dtype, h, 2, f), PA_STATUS_INVALID_SHAPE, "dtype = " + std::to_string(dtype) + ":");
    EXPECT_EQ(f[0], 1.0f);
    EXPECT_FAILS(c_from_float32(dtype, f, 2, h), PA_STATUS_INVALID_SHAPE, "dtype = " + std::to_string(dtype) + ":");
    EXPECT_EQ(h[0], 0);
  }
  for (int32_t mode : {2, 3, 5, -1, INT32_MIN}) {
    size_t bytes = 12345;
    EXPECT_FAILS(c_plan_bytes_with_budget_mode(&p, &c, mode, &bytes), PA_STATUS_INVALID_CONFIG,
                 "config.budget_mode = " + std::to_string(mode) + ":");
    EXPECT_EQ(bytes, 12345u);
    pa_config bad = c;
    set_raw(bad.budget_mode, mode);
    EXPECT_FAILS(pa_config_validate(&bad, nullptr), PA_STATUS_INVALID_CONFIG, "budget_mode");
  }
  for (int32_t status : {13, 15, 16, 99, -1, INT32_MIN})
    EXPECT_STREQ(c_status_string(status), "PA_STATUS_UNKNOWN");
  EXPECT_STREQ(c_status_string(PA_STATUS_MEMORY_SPACE), "PA_STATUS_MEMORY_SPACE");
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

// Found by the fuzzer (fuzz_capi, docs/fuzzing.md): the overlap check multiplied a head stride
// of int64's range by the heads (3 x INT64_MAX, UBSan: signed integer overflow), and a token
// stride that fit int64 in elements but not in bytes passed every check, leaving the backends
// to compute wrapped offsets. A view's last byte must now be reachable in int64.
TEST_F(Errors, StridesWhoseOffsetsOverflow) {
  HostQKV x = random_qkv(p, 5);
  pa_tensor q = x.tq(), k = x.tk(), v = x.tv();
  std::vector<uint8_t> o_buf(x.q.size(), 0xab);
  pa_tensor o = pa_tensor_contiguous(o_buf.data(), p.num_q_heads, p.head_dim);
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  pa_tensor bad = q;
  bad.token_stride = kMax, bad.head_stride = kMax;
  EXPECT_FAILS(pa_dense_attention(&p, 0.125f, &bad, &k, &v, &o, nullptr, nullptr), PA_STATUS_OVERFLOW,
               "q.token_stride = 9223372036854775807, q.head_stride = 9223372036854775807");
  bad = k;
  bad.token_stride = kMax / p.total_tokens;  // fits int64 in elements, not in 4-byte elements
  EXPECT_FAILS(pa_dense_attention(&p, 0.125f, &q, &bad, &v, &o, nullptr, nullptr), PA_STATUS_OVERFLOW,
               "k.token_stride");
  bad = v;
  bad.head_stride = kMax / 4, bad.token_stride = kMax / 4;  // heads ahead of tokens, both near the limit
  EXPECT_FAILS(pa_dense_attention(&p, 0.125f, &q, &k, &bad, &o, nullptr, nullptr), PA_STATUS_OVERFLOW,
               "v.token_stride");
  for (uint8_t byte : o_buf) ASSERT_EQ(byte, 0xab);
}

// Found by the fuzzer (docs/fuzzing.md): min_budget_blocks computed min_budget_tokens +
// block_size - 1 in int, which overflows for a floor near INT32_MAX (UBSan), and the wrapped,
// negative floor let budgets fall below it. Any floor >= 0 is valid: INT32_MAX keeps every block.
TEST_F(Errors, LargestBudgetFloorKeepsEveryBlock) {
  for (int32_t floor : {std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::max() - 62}) {
    pa_config big = c;
    big.min_budget_tokens = floor;
    Plan plan = Plan::on_host(p, big);
    HostQKV x = random_qkv(p, 6);
    plan.estimate(x.tq(), x.tk());
    pa_plan_stats stats{};
    ASSERT_EQ(pa_plan_get_stats(plan.get(), &stats), PA_STATUS_SUCCESS) << pa_last_error();
    EXPECT_EQ(stats.kept_pairs, stats.causal_pairs) << "min_budget_tokens = " << floor;
  }
}

// The library cannot see a buffer's extent: misaligned views and outputs sharing memory with
// an input are refused (INVALID_SHAPE, naming the tensors), and nothing is written.
TEST_F(Errors, MisalignedAndOverlappingViews) {
  Plan plan = Plan::on_host(p, c);
  HostQKV x = random_qkv(p, 4);
  pa_tensor q = x.tq(), k = x.tk(), v = x.tv();
  plan.estimate(q, k);
  std::vector<uint8_t> o_buf(x.q.size() + 8, 0xab);
  std::vector<float> lse(size_t(p.num_q_heads) * p.total_tokens + 1, 7.0f);
  pa_tensor o = pa_tensor_contiguous(o_buf.data(), p.num_q_heads, p.head_dim);

  std::vector<uint8_t> shifted(x.q.size() + 1);
  std::memcpy(shifted.data() + 1, x.q.data(), x.q.size());
  pa_tensor bad = pa_tensor_contiguous(shifted.data() + 1, p.num_q_heads, p.head_dim);
  EXPECT_FAILS(pa_attend(plan.get(), &bad, &k, &v, &o, lse.data(), nullptr), PA_STATUS_INVALID_SHAPE,
               "q.data");
  EXPECT_FAILS(pa_estimate(plan.get(), &bad, &k, nullptr, 0, nullptr), PA_STATUS_INVALID_SHAPE,
               "not aligned to its 4-byte float32 elements");
  bad = pa_tensor_contiguous(o_buf.data() + 2, p.num_q_heads, p.head_dim);
  EXPECT_FAILS(pa_dense_attention(&p, 0.125f, &q, &k, &v, &bad, lse.data(), nullptr), PA_STATUS_INVALID_SHAPE,
               "o.data");
  float* lse_shifted = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(lse.data()) + 2);
  EXPECT_FAILS(pa_attend(plan.get(), &q, &k, &v, &o, lse_shifted, nullptr), PA_STATUS_INVALID_SHAPE, "lse");

  // In place (O = Q), O over the last token of V, LSE over K or over O.
  EXPECT_FAILS(pa_attend(plan.get(), &q, &k, &v, &q, lse.data(), nullptr), PA_STATUS_INVALID_SHAPE,
               "o (");
  EXPECT_NE(std::string(pa_last_error()).find("overlaps q"), std::string::npos) << pa_last_error();
  std::vector<uint8_t> v_then_o(x.v.size() + x.q.size());  // V, and O from V's last float on
  std::memcpy(v_then_o.data(), x.v.data(), x.v.size());
  const pa_tensor v_in = pa_tensor_contiguous(v_then_o.data(), p.num_kv_heads, p.head_dim);
  pa_tensor over_v = pa_tensor_contiguous(v_then_o.data() + x.v.size() - 4, p.num_q_heads, p.head_dim);
  EXPECT_FAILS(pa_forward(plan.get(), &q, &k, &v_in, &over_v, lse.data(), nullptr, 0, nullptr),
               PA_STATUS_INVALID_SHAPE, "overlaps v");
  EXPECT_FAILS(pa_dense_attention(&p, 0.125f, &q, &k, &v, &o, reinterpret_cast<float*>(x.k.data()), nullptr),
               PA_STATUS_INVALID_SHAPE, "lse");
  EXPECT_NE(std::string(pa_last_error()).find("overlaps k"), std::string::npos) << pa_last_error();
  EXPECT_FAILS(pa_attend(plan.get(), &q, &k, &v, &o, reinterpret_cast<float*>(o_buf.data() + 4), nullptr),
               PA_STATUS_INVALID_SHAPE, "overlaps o");
  for (uint8_t byte : o_buf) ASSERT_EQ(byte, 0xab);
  for (float l : lse) ASSERT_EQ(l, 7.0f);

  // Adjacent, not overlapping: accepted (LSE right after O's last element).
  std::vector<uint8_t> both(x.q.size() + lse.size() * sizeof(float));
  pa_tensor o_exact = pa_tensor_contiguous(both.data(), p.num_q_heads, p.head_dim);
  EXPECT_EQ(pa_attend(plan.get(), &q, &k, &v, &o_exact, reinterpret_cast<float*>(both.data() + x.q.size()), nullptr),
            PA_STATUS_SUCCESS) << pa_last_error();
}

// The C++ facade checks what it knows: a buffer's size against the batch's cu_seqlens (the
// segmentation fault of issue 26 came from cu_seqlens past the tensors' tokens), lengths
// that do not make int32 offsets, and the problem given to Plan::heads.
TEST(Facade, ViewsCheckedAgainstCuSeqlens) {
  const Batch batch = Batch::from_cu_seqlens({0, 200, 4000}, 4, 2, 64, PA_DTYPE_FLOAT32);
  std::vector<float> q(size_t(512) * 4 * 64), k(size_t(512) * 2 * 64);
  try {
    batch.q_view(q);
    FAIL() << "a 512-token q accepted for cu_seqlens ending at 4000";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), PA_STATUS_INVALID_SEQLENS);
    const std::string m = e.what();
    EXPECT_NE(m.find("cu_seqlens[2] = 4000 differs from the token count of q"), std::string::npos) << m;
    EXPECT_NE(m.find("512 tokens"), std::string::npos) << m;
  }
  const Batch fits = Batch::from_cu_seqlens({0, 200, 512}, 4, 2, 64, PA_DTYPE_FLOAT32);
  EXPECT_EQ(fits.q_view(q).data, q.data());
  EXPECT_EQ(fits.kv_view(k, "k").token_stride, 2 * 64);
  EXPECT_THROW(fits.kv_view(q, "v"), Error);  // q's size is not 512 tokens of 2 heads
  try {
    fits.view("k", k.data(), k.size() * sizeof(float) - 2, 2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a whole number of tokens"), std::string::npos) << e.what();
  }
  const Batch bf16 = Batch::from_cu_seqlens({0, 512}, 4, 2, 64, PA_DTYPE_BFLOAT16);
  std::vector<uint16_t> q16(size_t(512) * 4 * 64);
  EXPECT_EQ(bf16.q_view(q16).head_stride, 64);
  EXPECT_THROW(bf16.q_view(q), Error);  // float32 storage: twice the bytes
  EXPECT_THROW(fits.view("q", q.data(), q.size() * 4, 0), Error);
}

TEST(Facade, LengthsAndHeads) {
  try {
    Batch({std::numeric_limits<int32_t>::max(), 1}, 1, 1, 8, PA_DTYPE_FLOAT32);
    FAIL() << "2^31 tokens accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), PA_STATUS_OVERFLOW);
    EXPECT_NE(std::string(e.what()).find("lengths[1]"), std::string::npos) << e.what();
  }
  try {
    Batch({100, -5}, 1, 1, 8, PA_DTYPE_FLOAT32);
    FAIL() << "a negative length accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), PA_STATUS_INVALID_SEQLENS);
    EXPECT_NE(std::string(e.what()).find("lengths[1] = -5"), std::string::npos) << e.what();
  }
  Batch batch({300, 100}, 4, 2, 64, PA_DTYPE_FLOAT32);
  pa_config c = pa_config_default(64);
  c.block_size = 64;
  Plan plan = Plan::on_host(batch.problem(), c);
  HostQKV x = random_qkv(batch.problem(), 9);
  plan.estimate(batch.q_view(x.q), batch.kv_view(x.k, "k"));
  EXPECT_EQ(plan.heads().budget_blocks.size(), 2u * 4u);
  EXPECT_EQ(plan.heads(batch.problem()).density.size(), 2u * 4u);
  // A bigger problem than the plan's once sized the arrays and had the library write past them.
  Batch other({300, 100, 50}, 8, 2, 64, PA_DTYPE_FLOAT32);
  try {
    plan.heads(other.problem());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), PA_STATUS_PLAN_MISMATCH);
    EXPECT_NE(std::string(e.what()).find("the plan has 2 of 4"), std::string::npos) << e.what();
  }
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
