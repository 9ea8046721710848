// The CPU kernels (src/cpu/kernels.cpp) in every instruction-set variant this build has and
// this CPU runs, against fp64 references, tails included (sizes that are no multiple of the
// vector width or of the register tile).
//
// Built twice: test_kernels over the library as built (make's -march=native: one variant), and
// test_kernels_portable over the kernels compiled as a portable build compiles them (pip's:
// SSE2, AVX2 + FMA and AVX-512 on x86-64), with the run-time choice, and with 64-byte vectors
// whatever the CPU (AVX-512's width, on machines without it).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "cpu/kernels.hpp"

#if !PROXYATTN_TEST_PORTABLE_KERNELS
#include "proxyattn/proxyattn.h"
#include "proxyattn/proxyattn_tuning.h"
#endif

namespace proxyattn::cpu {
#if PROXYATTN_TEST_PORTABLE_KERNELS
namespace test_width {  // tests/cpu/kernels_test_width.cpp
void gemm_accumulate(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M, int N, int K);
float sum(const float* x, int n);
float max_of(const float* x, int n, float init);
void exp_shifted(float* x, int n, float shift);
void softmax_fold(float* tile, int ld, int rows, int cols, float* row_max, float* row_sum, float* correction);
}  // namespace test_width
#endif
}  // namespace proxyattn::cpu

namespace proxyattn::test {
namespace {

using cpu::KernelIsa;

// One variant: the dispatched functions with `isa` made current, or test_width's directly.
struct Variant {
  std::string name;
  int isa;  // KernelIsa, or -1: test_width
  decltype(&cpu::gemm_accumulate) gemm_accumulate;
  decltype(&cpu::sum) sum;
  decltype(&cpu::max_of) max_of;
  decltype(&cpu::exp_shifted) exp_shifted;
  decltype(&cpu::softmax_fold) softmax_fold;
  void activate() const {
    if (isa >= 0) ASSERT_TRUE(cpu::set_kernel_isa(KernelIsa(isa)));
  }
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

std::vector<Variant> variants() {
  std::vector<Variant> v;
  for (int i = 0; i < cpu::kNumKernelIsas; ++i)
    if (cpu::kernel_isa_available(KernelIsa(i)))
      v.push_back({cpu::kernel_isa_name(KernelIsa(i)), i, cpu::gemm_accumulate, cpu::sum, cpu::max_of,
                   cpu::exp_shifted, cpu::softmax_fold});
#if PROXYATTN_TEST_PORTABLE_KERNELS
  namespace w = cpu::test_width;
  v.push_back({"test_width", -1, w::gemm_accumulate, w::sum, w::max_of, w::exp_shifted, w::softmax_fold});
#endif
  return v;
}

// Back to the run-time choice: the widest variant available.
void restore_best() {
  for (int i = cpu::kNumKernelIsas - 1; i >= 0; --i)
    if (cpu::set_kernel_isa(KernelIsa(i))) return;
}

class Kernels : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override { GetParam().activate(); }
  void TearDown() override { restore_best(); }
};

std::vector<float> random_floats(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> x(n);
  for (auto& e : x) e = u(rng);
  return x;
}

TEST_P(Kernels, GemmAccumulateMatchesFp64) {
  const Variant& k = GetParam();
  for (int M : {1, 3, 4, 7, 9}) {
    for (int N : {1, 5, 8, 16, 17, 31, 32, 33, 64, 70}) {
      for (int K : {1, 6, 64}) {
        const int lda = K + 3, ldb = N + 2, ldc = N + 5;
        const auto A = random_floats(size_t(M) * lda, 1, -1, 1), B = random_floats(size_t(K) * ldb, 2, -1, 1);
        auto C = random_floats(size_t(M) * ldc, 3, -1, 1);
        const auto C0 = C;
        k.gemm_accumulate(A.data(), lda, B.data(), ldb, C.data(), ldc, M, N, K);
        for (int r = 0; r < M; ++r)
          for (int c = 0; c < ldc; ++c) {
            double want = C0[size_t(r) * ldc + c];
            if (c < N)
              for (int i = 0; i < K; ++i) want += double(A[size_t(r) * lda + i]) * B[size_t(i) * ldb + c];
            ASSERT_NEAR(C[size_t(r) * ldc + c], want, 1e-5 * (K + 1))
                << k.name << " M=" << M << " N=" << N << " K=" << K << " at " << r << "," << c
                << (c >= N ? " (outside C: must stay)" : "");
          }
      }
    }
  }
}

TEST_P(Kernels, ExpShiftedMatchesStdExp) {
  const Variant& k = GetParam();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int n : {1, 3, 4, 8, 15, 16, 17, 33, 64, 100}) {
    auto x = random_floats(n, n, -95.0f, 2.0f);
    x[0] = -inf;
    if (n > 2) x[n / 2] = 1.5f;  // the shift: every argument <= 0
    if (n > 5) x[n - 2] = nan;
    const auto x0 = x;
    k.exp_shifted(x.data(), n, 1.5f);
    for (int i = 0; i < n; ++i) {
      const double arg = double(x0[i]) - 1.5;
      if (std::isnan(x0[i])) {
        EXPECT_TRUE(std::isnan(x[i])) << k.name << " n=" << n << " i=" << i;
      } else if (arg < -87.0) {
        EXPECT_EQ(x[i], 0.0f) << k.name << " n=" << n << " i=" << i << " arg " << arg;
      } else {
        EXPECT_NEAR(x[i], std::exp(arg), 5e-6 * std::exp(arg)) << k.name << " n=" << n << " i=" << i;
      }
    }
  }
}

TEST_P(Kernels, SumAndMax) {
  const Variant& k = GetParam();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int n : {0, 1, 7, 15, 16, 17, 48, 129}) {
    auto x = random_floats(n, 7 + n, -3, 3);
    double want = 0, best = -10;
    for (float e : x) want += e, best = std::max<double>(best, e);
    EXPECT_NEAR(k.sum(x.data(), n), want, 1e-5 * (n + 1)) << k.name << " n=" << n;
    EXPECT_EQ(k.max_of(x.data(), n, -10.0f), float(best)) << k.name << " n=" << n;
    if (n > 0) {
      x[n - 1] = nan;  // skipped by max_of
      EXPECT_FALSE(std::isnan(k.max_of(x.data(), n, -10.0f))) << k.name << " n=" << n;
      EXPECT_TRUE(std::isnan(k.sum(x.data(), n))) << k.name << " n=" << n;
    }
  }
}

// Two tiles of one online softmax against the softmax of the rows whole; NaN rows stay NaN and
// a row with no key yet (all -inf) is left as it was.
TEST_P(Kernels, SoftmaxFoldMatchesFp64) {
  const Variant& k = GetParam();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int cols : {5, 16, 37, 64}) {
    const int rows = 4, ld = cols + 3;
    auto t1 = random_floats(size_t(rows) * ld, cols, -8, 8), t2 = random_floats(size_t(rows) * ld, cols + 1, -8, 8);
    for (int c = 0; c < ld; ++c) t1[size_t(2) * ld + c] = -inf;  // row 2: no key in the first tile
    t2[size_t(3) * ld + cols - 1] = nan;                          // row 3: NaN in the second
    const auto a = t1, b = t2;
    std::vector<float> row_max(rows, -inf), row_sum(rows, 0.0f), corr(rows);
    k.softmax_fold(t1.data(), ld, rows, cols, row_max.data(), row_sum.data(), corr.data());
    EXPECT_EQ(row_max[2], -inf);
    EXPECT_EQ(corr[2], 1.0f);
    k.softmax_fold(t2.data(), ld, rows, cols, row_max.data(), row_sum.data(), corr.data());
    for (int r = 0; r < 3; ++r) {
      double mx = -INFINITY, s = 0;
      for (int c = 0; c < cols; ++c) mx = std::max({mx, double(a[size_t(r) * ld + c]), double(b[size_t(r) * ld + c])});
      for (int c = 0; c < cols; ++c)
        s += std::exp(a[size_t(r) * ld + c] - mx) + std::exp(b[size_t(r) * ld + c] - mx);
      EXPECT_EQ(row_max[r], float(mx)) << k.name << " cols=" << cols << " row " << r;
      EXPECT_NEAR(row_sum[r], s, 1e-5 * s) << k.name << " cols=" << cols << " row " << r;
      for (int c = 0; c < cols; ++c)
        EXPECT_NEAR(t2[size_t(r) * ld + c], std::exp(b[size_t(r) * ld + c] - mx), 1e-6)
            << k.name << " cols=" << cols << " row " << r << " col " << c;
    }
    EXPECT_TRUE(std::isnan(row_sum[3])) << k.name << " cols=" << cols;
  }
}

std::string variant_name(const ::testing::TestParamInfo<Variant>& info) { return info.param.name; }
INSTANTIATE_TEST_SUITE_P(Cpu, Kernels, ::testing::ValuesIn(variants()), variant_name);

#if PROXYATTN_TEST_PORTABLE_KERNELS
// A portable build runs the widest instruction set of the CPU: vector code exists beyond
// -march=native (the wheel's module once ran the CPU forward 15x slower than make's).
TEST(KernelDispatch, PortableBuildRunsTheCpusWidestKernels) {
#if defined(__x86_64__)
  EXPECT_TRUE(cpu::kernel_isa_available(KernelIsa::kBaseline));
  EXPECT_STREQ(cpu::kernel_isa_name(KernelIsa::kBaseline), "sse2");
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  EXPECT_EQ(cpu::kernel_isa_available(KernelIsa::kAvx2), avx2);
  EXPECT_EQ(cpu::kernel_isa_available(KernelIsa::kAvx512), avx512);
  const KernelIsa want = avx512 ? KernelIsa::kAvx512 : avx2 ? KernelIsa::kAvx2 : KernelIsa::kBaseline;
  EXPECT_EQ(cpu::kernel_isa(), want) << "runs " << cpu::kernel_isa_name(cpu::kernel_isa());
  if (avx2) EXPECT_STREQ(cpu::kernel_isa_name(KernelIsa::kAvx2), "avx2");
#else
  EXPECT_EQ(cpu::kernel_isa(), KernelIsa::kBaseline);
#if defined(__aarch64__)
  EXPECT_STREQ(cpu::kernel_isa_name(KernelIsa::kBaseline), "neon");
#endif
#endif
  EXPECT_FALSE(cpu::set_kernel_isa(KernelIsa(cpu::kNumKernelIsas)));
}
#else
// The whole CPU forward under each variant (gamma 1: the same blocks whatever the rounding of
// the estimation): the same outputs within rounding, and the C API names the variant in use.
TEST(KernelDispatch, EveryVariantGivesTheSameForward) {
  const int n = 700, hq = 4, hkv = 2, d = 64;
  pa_problem p{};
  p.num_seqs = 1, p.total_tokens = n, p.num_q_heads = hq, p.num_kv_heads = hkv, p.head_dim = d;
  p.dtype = PA_DTYPE_FLOAT32;
  auto q = random_floats(size_t(n) * hq * d, 11, -2, 2), k = random_floats(size_t(n) * hkv * d, 12, -2, 2);
  auto v = random_floats(size_t(n) * hkv * d, 13, -1, 1);
  pa_config config = pa_config_default(d);
  config.block_size = 64, config.gamma = 1.0f, config.min_budget_tokens = 0, config.dense_below = 0;
  size_t plan_bytes = 0, ws_bytes = 0;
  ASSERT_EQ(pa_plan_bytes(&p, &config, &plan_bytes), PA_STATUS_SUCCESS);
  ASSERT_EQ(pa_workspace_bytes(&p, &config, &ws_bytes), PA_STATUS_SUCCESS);
  std::vector<std::vector<float>> outs;
  for (const Variant& variant : variants()) {
    variant.activate();
    EXPECT_EQ(std::string(pa_cpu_kernels()), variant.name);
    std::vector<uint8_t> storage(plan_bytes), ws(ws_bytes + 1);
    std::vector<float> o(q.size()), lse(size_t(hq) * n);
    pa_plan* plan = nullptr;
    ASSERT_EQ(pa_plan_create(&p, &config, storage.data(), plan_bytes, &plan), PA_STATUS_SUCCESS);
    pa_tensor tq = pa_tensor_contiguous(q.data(), hq, d), tk = pa_tensor_contiguous(k.data(), hkv, d);
    pa_tensor tv = pa_tensor_contiguous(v.data(), hkv, d), to = pa_tensor_contiguous(o.data(), hq, d);
    EXPECT_EQ(pa_forward(plan, &tq, &tk, &tv, &to, lse.data(), ws.data(), ws_bytes, nullptr), PA_STATUS_SUCCESS);
    pa_plan_free(plan);
    o.insert(o.end(), lse.begin(), lse.end());
    if (!outs.empty()) {
      for (size_t i = 0; i < o.size(); ++i)
        ASSERT_NEAR(o[i], outs[0][i], 1e-4) << variant.name << " against " << variants()[0].name << " at " << i;
    }
    outs.push_back(std::move(o));
  }
  restore_best();
}
#endif

}  // namespace
}  // namespace proxyattn::test
