// Block-sparse and dense attention on the CPU against fp64 references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <string>

#include "core/plan.hpp"
#include "cpu/backend.hpp"
#include "cpu/kernels.hpp"
#include "fixtures.hpp"
#include "reference.hpp"

namespace proxyattn::test {
namespace {

struct Outputs {
  std::vector<uint8_t> o;
  std::vector<float> lse;
  pa_tensor to(int hq, int d) { return pa_tensor_contiguous(o.data(), hq, d); }
};

Outputs poisoned_outputs(const pa_problem& p) {
  Outputs out;
  out.o.assign(p.total_tokens * p.num_q_heads * p.head_dim * element_bytes(p.dtype), 0xff);  // NaN
  out.lse.assign(size_t(p.num_q_heads) * p.total_tokens, std::numeric_limits<float>::quiet_NaN());
  return out;
}

std::vector<double> as_double(const pa_problem& p, const Outputs& out, int64_t begin, int64_t n) {
  const int64_t row = int64_t(p.num_q_heads) * p.head_dim;
  std::vector<float> f(n * row);
  check(pa_to_float32(p.dtype, out.o.data() + begin * row * element_bytes(p.dtype), n * row, f.data()));
  for (float x : f) EXPECT_FALSE(std::isnan(x)) << "output not written (poison left)";
  return std::vector<double>(f.begin(), f.end());
}

double max_lse_error(const Outputs& out, const RefOutput& ref, int hq, int64_t total, int64_t begin, int n) {
  double worst = 0;
  for (int h = 0; h < hq; ++h)
    for (int t = 0; t < n; ++t) {
      const double a = out.lse[h * total + begin + t], b = ref.lse[size_t(h) * n + t];
      EXPECT_FALSE(std::isnan(a));
      if (std::isinf(b)) {
        EXPECT_EQ(a, b);
        continue;
      }
      worst = std::max(worst, std::abs(a - b));
    }
  return worst;
}

pa_config test_config(int d, float gamma, int min_budget_tokens) {
  pa_config c = pa_config_default(d);
  c.block_size = 64;
  c.gamma = gamma;
  c.min_budget_tokens = min_budget_tokens;
  c.dense_below = 0;
  return c;
}

TEST(Attention, DenseMatchesFp64) {
  Batch batch({333}, 4, 2, 64, PA_DTYPE_FLOAT32);
  const pa_problem& p = batch.problem();
  HostQKV x = random_qkv(p, 1);
  Outputs out = poisoned_outputs(p);
  pa_tensor o = out.to(4, 64);
  const float scale = 0.125f;
  dense_attention(p, scale, x.tq(), x.tk(), x.tv(), o, out.lse.data());
  const Inputs in = read_inputs(x.q.data(), x.k.data(), x.v.data(), 0, 333, 4, 2, 64, p.dtype);
  const RefOutput ref = reference_attention(in, scale, 64, nullptr);
  EXPECT_LT(relative_error(as_double(p, out, 0, 333), ref.o), 1e-6);
  EXPECT_LT(max_lse_error(out, ref, 4, 333, 0, 333), 1e-5);
}

// gamma = 1 and a budget covering everything: sparse equals dense.
TEST(Attention, FullBudgetEqualsDense) {
  Batch batch({1000}, 4, 1, 64, PA_DTYPE_FLOAT32);
  const pa_problem& p = batch.problem();
  pa_config c = test_config(64, 1.0f, 1 << 20);
  HostQKV x = random_qkv(p, 2);
  Plan plan = Plan::on_host(p, c);
  plan.estimate(x.tq(), x.tk());
  ASSERT_EQ(plan.stats().density, 1.0);
  Outputs sparse = poisoned_outputs(p), dense = poisoned_outputs(p);
  pa_tensor os = sparse.to(4, 64), od = dense.to(4, 64);
  plan.attend(x.tq(), x.tk(), x.tv(), os, sparse.lse.data());
  dense_attention(p, c.softmax_scale, x.tq(), x.tk(), x.tv(), od, dense.lse.data());
  const Inputs in = read_inputs(x.q.data(), x.k.data(), x.v.data(), 0, 1000, 4, 1, 64, p.dtype);
  const RefOutput ref = reference_attention(in, c.softmax_scale, 64, nullptr);
  EXPECT_LT(relative_error(as_double(p, sparse, 0, 1000), ref.o), 1e-6);
  EXPECT_LT(relative_error(as_double(p, sparse, 0, 1000), as_double(p, dense, 0, 1000)), 1e-6);
  EXPECT_LT(max_lse_error(sparse, ref, 4, 1000, 0, 1000), 1e-5);
}

struct SparseCase {
  pa_dtype dtype;
  double tolerance;  // relative error against the fp64 mask reference
};

std::string dtype_label(pa_dtype dtype) {
  switch (dtype) {
    case PA_DTYPE_FLOAT32: return "float32";
    case PA_DTYPE_FLOAT16: return "float16";
    case PA_DTYPE_BFLOAT16: return "bfloat16";
  }
  return "unknown";
}

class SparseVsMaskReference : public ::testing::TestWithParam<SparseCase> {};

// The sparse output equals attention restricted to the kept blocks (the index expanded to
// a dense mask, in fp64). bf16/fp16 tolerances: the rounding of the stored output.
TEST_P(SparseVsMaskReference, MatchesMaskedFp64) {
  const SparseCase k = GetParam();
  Batch batch({1111}, 4, 2, 64, k.dtype);
  const pa_problem& p = batch.problem();
  pa_config c = test_config(64, 0.7f, 128);
  HostQKV x = structured_qkv(p, 3);
  Plan plan = Plan::on_host(p, c);
  plan.estimate(x.tq(), x.tk());
  ASSERT_LT(plan.stats().density, 0.9);  // really sparse
  Outputs out = poisoned_outputs(p);
  pa_tensor o = out.to(4, 64);
  plan.attend(x.tq(), x.tk(), x.tv(), o, out.lse.data());
  const KeptSets ks = kept_sets(plan, batch, c);
  const Inputs in = read_inputs(x.q.data(), x.k.data(), x.v.data(), 0, 1111, 4, 2, 64, p.dtype);
  const RefOutput ref = reference_attention(in, c.softmax_scale, 64, &ks.kept[0]);
  EXPECT_LT(relative_error(as_double(p, out, 0, 1111), ref.o), k.tolerance);
  EXPECT_LT(max_lse_error(out, ref, 4, 1111, 0, 1111), 1e-4);
  // And it is not dense attention: the mask matters on this input.
  const RefOutput dense = reference_attention(in, c.softmax_scale, 64, nullptr);
  EXPECT_GT(relative_error(ref.o, dense.o), 10 * k.tolerance);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SparseVsMaskReference,
                         ::testing::Values(SparseCase{PA_DTYPE_FLOAT32, 2e-6},
                                           SparseCase{PA_DTYPE_BFLOAT16, 4e-3},
                                           SparseCase{PA_DTYPE_FLOAT16, 6e-4}),
                         [](const auto& info) { return dtype_label(info.param.dtype); });

TEST(Attention, VarlenEqualsSeparateRuns) {
  const std::vector<int32_t> lengths = {300, 0, 1, 900, 64};
  const int hq = 4, hkv = 2, d = 32;
  Batch batch(lengths, hq, hkv, d, PA_DTYPE_BFLOAT16);
  const pa_problem& p = batch.problem();
  pa_config c = test_config(d, 0.9f, 128);
  c.dense_below = 100;
  HostQKV x = structured_qkv(p, 4);
  Plan plan = Plan::on_host(p, c);
  Outputs all = poisoned_outputs(p);
  pa_tensor o = all.to(hq, d);
  plan.estimate(x.tq(), x.tk());
  plan.attend(x.tq(), x.tk(), x.tv(), o, all.lse.data());
  int64_t begin = 0;
  for (int32_t n : lengths) {
    Batch one({n}, hq, hkv, d, PA_DTYPE_BFLOAT16);
    HostQKV y;
    y.hq = hq, y.hkv = hkv, y.d = d;
    const size_t qrow = hq * d * 2, krow = hkv * d * 2;
    y.q.assign(x.q.begin() + begin * qrow, x.q.begin() + (begin + n) * qrow);
    y.k.assign(x.k.begin() + begin * krow, x.k.begin() + (begin + n) * krow);
    y.v.assign(x.v.begin() + begin * krow, x.v.begin() + (begin + n) * krow);
    Plan single = Plan::on_host(one.problem(), c);
    single.estimate(y.tq(), y.tk());
    Outputs out = poisoned_outputs(one.problem());
    pa_tensor os = out.to(hq, d);
    single.attend(y.tq(), y.tk(), y.tv(), os, out.lse.data());
    EXPECT_TRUE(std::equal(out.o.begin(), out.o.end(), all.o.begin() + begin * qrow)) << "length " << n;
    for (int h = 0; h < hq; ++h)
      for (int t = 0; t < n; ++t) EXPECT_EQ(out.lse[h * n + t], all.lse[h * p.total_tokens + begin + t]);
    begin += n;
  }
}

// Strided views ([H, N, d] layout and padded rows) give the contiguous result.
TEST(Attention, StridedTensors) {
  const int n = 200, hq = 2, hkv = 1, d = 32;
  Batch batch({n}, hq, hkv, d, PA_DTYPE_FLOAT32);
  const pa_problem& p = batch.problem();
  HostQKV x = random_qkv(p, 5);
  std::vector<float> q(size_t(n) * hq * d), qt(q.size());
  check(pa_to_float32(PA_DTYPE_FLOAT32, x.q.data(), q.size(), q.data()));
  for (int t = 0; t < n; ++t)  // [N, H, d] -> [H, N, d]
    for (int h = 0; h < hq; ++h)
      for (int e = 0; e < d; ++e) qt[(size_t(h) * n + t) * d + e] = q[(size_t(t) * hq + h) * d + e];
  pa_tensor q_hnd{qt.data(), d, int64_t(n) * d};
  Outputs a = poisoned_outputs(p), b = poisoned_outputs(p);
  pa_tensor oa = a.to(hq, d), ob = b.to(hq, d);
  dense_attention(p, 0.2f, x.tq(), x.tk(), x.tv(), oa, a.lse.data());
  dense_attention(p, 0.2f, q_hnd, x.tk(), x.tv(), ob, b.lse.data());
  EXPECT_EQ(a.o, b.o);
  EXPECT_EQ(a.lse, b.lse);
}

// A row whose index keeps no block returns O = 0 and LSE = -inf (defined, not NaN).
TEST(Attention, EmptyRowIsZeroWithMinusInfLse) {
  const int n = 256, hq = 2, hkv = 1, d = 16;
  Batch batch({n}, hq, hkv, d, PA_DTYPE_FLOAT32);
  pa_config c = test_config(d, 0.9f, 64);
  HostQKV x = random_qkv(batch.problem(), 6);
  Plan plan = Plan::on_host(batch.problem(), c);
  plan.estimate(x.tq(), x.tk());
  // Build the same plan description and empty row 2 of head 1 in a copy of the counts.
  PlanDesc desc;
  desc.problem = batch.problem();
  desc.config = c;
  desc.batch = make_batch_layout(desc.problem, c.block_size, c.num_proxy_groups);
  int64_t rows = 0, entries = 0;
  check(pa_plan_get_layout(plan.get(), &rows, &entries));
  std::vector<int32_t> order(entries), count(rows * hq);
  check(pa_plan_get_index(plan.get(), order.data(), count.data()));
  count[2 * hq + 1] = 0;
  desc.index.order = order.data();
  desc.index.count = count.data();
  Outputs out = poisoned_outputs(desc.problem);
  const pa_kv_cache kv{x.tk(), x.tv(), nullptr, nullptr};
  ASSERT_EQ(cpu::attend(desc, x.tq(), kv, out.to(hq, d), out.lse.data()), PA_STATUS_SUCCESS);
  const std::vector<double> o = as_double(desc.problem, out, 0, n);
  for (int t = 128; t < 192; ++t) {
    EXPECT_EQ(out.lse[1 * n + t], -std::numeric_limits<float>::infinity());
    for (int e = 0; e < d; ++e) EXPECT_EQ(o[(size_t(t) * hq + 1) * d + e], 0.0);
    EXPECT_TRUE(std::isfinite(out.lse[0 * n + t]));
  }
}

// NaN in, NaN out: a row that sees a NaN in its scores (Q or K) gets O = NaN and LSE = NaN,
// never the O = 0, LSE = -inf of a row with no key; a NaN in V makes that dimension of O NaN
// in the rows that see it (LSE unchanged), and may reach the same dimension of earlier rows of
// its query tile too (their probability 0 times NaN, as in every P V product). Rows that do
// not see it are otherwise untouched. Dense and block-sparse, fp32, bf16 and fp16, rows of the
// vectorised exp and of its scalar tail (lengths not a multiple of 8).
enum class NanIn { kQ, kK, kV };

struct NanCase {
  pa_dtype dtype;
  bool sparse;
  NanIn where;
};

std::string nan_name(const NanCase& c) {
  const char* where[] = {"Q", "K", "V"};
  return dtype_label(c.dtype) + (c.sparse ? "_sparse_" : "_dense_") + where[int(c.where)];
}
void PrintTo(const NanCase& c, std::ostream* os) { *os << nan_name(c); }

class NanPropagates : public ::testing::TestWithParam<NanCase> {};

// Outputs of one run over the batch, O as float.
struct NanRun {
  std::vector<float> o, lse;
};

NanRun run_nan(const Batch& batch, HostQKV& x, bool sparse) {
  const pa_problem& p = batch.problem();
  Outputs out;  // poisoned with finite values, so that NaN can only come from the library
  out.o.assign(p.total_tokens * p.num_q_heads * p.head_dim * element_bytes(p.dtype), 0x3c);
  out.lse.assign(size_t(p.num_q_heads) * p.total_tokens, 12345.0f);
  pa_tensor o = out.to(p.num_q_heads, p.head_dim);
  if (sparse) {
    pa_config c = test_config(p.head_dim, 0.9f, 64);  // sink and diagonal forced, few blocks kept
    Plan plan = Plan::on_host(p, c);
    plan.forward(x.tq(), x.tk(), x.tv(), o, out.lse.data());
    plan.check_invariants();
  } else {
    dense_attention(p, 0.125f, x.tq(), x.tk(), x.tv(), o, out.lse.data());
  }
  NanRun r;
  r.o.resize(p.total_tokens * p.num_q_heads * p.head_dim);
  check(pa_to_float32(p.dtype, out.o.data(), int64_t(r.o.size()), r.o.data()));
  r.lse = out.lse;
  return r;
}

void set_nan(std::vector<uint8_t>& buf, pa_dtype dtype, size_t element) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  check(pa_from_float32(dtype, &nan, 1, buf.data() + element * element_bytes(dtype)));
}

TEST_P(NanPropagates, RowsThatSeeItAreNaN) {
  const NanCase nc = GetParam();
  const int hq = 4, hkv = 2, d = 32;
  const int n = 301;  // 4 blocks of 64 and 45 rows: full and tail widths of the exp
  Batch batch({n, 150}, hq, hkv, d, nc.dtype);
  const pa_problem& p = batch.problem();
  HostQKV clean = random_qkv(p, 7), x = clean;
  // Sequence 0: token 5 (block 0, kept by every row through the forced sink) for K and V, row
  // 200 for Q; head 1 of Q (KV head 0), element 3.
  const int qh = 1, kvh = 0, e = 3;
  const int t = nc.where == NanIn::kQ ? 200 : 5;
  if (nc.where == NanIn::kQ) set_nan(x.q, p.dtype, (size_t(t) * hq + qh) * d + e);
  if (nc.where == NanIn::kK) set_nan(x.k, p.dtype, (size_t(t) * hkv + kvh) * d + e);
  if (nc.where == NanIn::kV) set_nan(x.v, p.dtype, (size_t(t) * hkv + kvh) * d + e);
  const NanRun ref = run_nan(batch, clean, nc.sparse), got = run_nan(batch, x, nc.sparse);

  const int group = hq / hkv;
  for (int64_t row = 0; row < p.total_tokens; ++row)
    for (int h = 0; h < hq; ++h) {
      // Who sees the NaN: the Q row itself, or rows of sequence 0 at or after the K/V token in
      // the heads of its KV head.
      const bool kv_head = h / group == kvh;
      const bool sees = nc.where == NanIn::kQ ? (row == t && h == qh) : (row < n && row >= t && kv_head);
      const size_t at = size_t(h) * p.total_tokens + row;
      const float lse = got.lse[at];
      const float* o = &got.o[(size_t(row) * hq + h) * d];
      const float* o_ref = &ref.o[(size_t(row) * hq + h) * d];
      if (nc.where == NanIn::kV) {  // O's dimension e only; the LSE is the clean one
        EXPECT_EQ(lse, ref.lse[at]) << row << " " << h;
        for (int c = 0; c < d; ++c) {
          if (c != e || !kv_head || row >= n) {
            ASSERT_EQ(std::memcmp(&o[c], &o_ref[c], sizeof(float)), 0) << row << " " << h << " " << c;
          } else if (sees) {
            ASSERT_TRUE(std::isnan(o[c])) << "row " << row << " head " << h;
          } else {  // before the token: NaN through 0 x NaN within its tile, or clean
            ASSERT_TRUE(std::isnan(o[c]) || o[c] == o_ref[c]) << row << " " << h;
          }
        }
        continue;
      }
      if (sees) {
        for (int c = 0; c < d; ++c) ASSERT_TRUE(std::isnan(o[c])) << "row " << row << " head " << h << " dim " << c;
        EXPECT_TRUE(std::isnan(lse)) << "row " << row << " head " << h << ": LSE " << lse;
      } else if (!nc.sparse || nc.where != NanIn::kQ) {  // the same plan: the same numbers
        EXPECT_EQ(lse, ref.lse[at]) << row << " " << h;
        EXPECT_EQ(std::memcmp(o, o_ref, sizeof(float) * d), 0) << row << " " << h;
      } else {  // a NaN query may change the plan of its blocks' rows: finite is what matters
        EXPECT_TRUE(std::isfinite(lse)) << row << " " << h;
        for (int c = 0; c < d; ++c) ASSERT_TRUE(std::isfinite(o[c])) << row << " " << h;
      }
    }
}

std::string nan_label(const ::testing::TestParamInfo<NanCase>& info) { return nan_name(info.param); }

INSTANTIATE_TEST_SUITE_P(
    Cpu, NanPropagates,
    ::testing::Values(NanCase{PA_DTYPE_FLOAT32, false, NanIn::kQ}, NanCase{PA_DTYPE_FLOAT32, false, NanIn::kK},
                      NanCase{PA_DTYPE_FLOAT32, false, NanIn::kV}, NanCase{PA_DTYPE_FLOAT32, true, NanIn::kQ},
                      NanCase{PA_DTYPE_FLOAT32, true, NanIn::kK}, NanCase{PA_DTYPE_FLOAT32, true, NanIn::kV},
                      NanCase{PA_DTYPE_BFLOAT16, false, NanIn::kQ}, NanCase{PA_DTYPE_BFLOAT16, true, NanIn::kK},
                      NanCase{PA_DTYPE_FLOAT16, true, NanIn::kQ}),
    nan_label);

// The online softmax step itself: a row of NaN logits (its max is -inf to max_of, which skips
// NaN) is told apart from a row with no key, and NaN survives later tiles; exp keeps NaN in
// both its vectorised loop and its scalar tail.
TEST(Attention, SoftmaxFoldKeepsNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const int ld = 11, rows = 3;
  // Row 0: NaN then masked; row 1: masked only (no key); row 2: finite with a NaN in the tail.
  std::vector<float> tile = {nan, nan, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf,
                             -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf,
                             0.5f, 1.0f, 0.0f, -1.0f, 2.0f, 0.25f, 0.0f, 0.0f, 1.0f, nan, 0.0f};
  std::vector<float> row_max(rows, -inf), row_sum(rows, 0.0f), correction(rows);
  cpu::softmax_fold(tile.data(), ld, rows, ld, row_max.data(), row_sum.data(), correction.data());
  EXPECT_TRUE(std::isnan(row_max[0]) && std::isnan(row_sum[0]) && std::isnan(correction[0]));
  EXPECT_EQ(row_max[1], -inf);
  EXPECT_EQ(row_sum[1], 0.0f);
  EXPECT_EQ(correction[1], 1.0f);
  EXPECT_EQ(row_max[2], 2.0f);
  EXPECT_TRUE(std::isnan(row_sum[2]));
  EXPECT_TRUE(std::isnan(tile[2 * ld + 9]));  // the scalar tail's exp(NaN)
  // A second, finite tile: the NaN rows stay NaN, the empty row takes its first keys.
  std::vector<float> next(size_t(rows) * ld, 0.0f);
  next[1 * ld] = nan;  // NaN in the vectorised part of row 1 (its first 8 columns)
  cpu::softmax_fold(next.data(), ld, rows, ld, row_max.data(), row_sum.data(), correction.data());
  EXPECT_TRUE(std::isnan(row_sum[0]) && std::isnan(row_sum[1]) && std::isnan(row_sum[2]));
  EXPECT_EQ(row_max[1], 0.0f);
  EXPECT_TRUE(std::isnan(next[1 * ld]));
  EXPECT_EQ(next[1 * ld + 1], 1.0f);
  EXPECT_EQ(cpu::exp_nonpositive(-inf), 0.0f);
  EXPECT_TRUE(std::isnan(cpu::exp_nonpositive(nan)));
}

}  // namespace
}  // namespace proxyattn::test
