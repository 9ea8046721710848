// The structured input generator: deterministic, and the structure it documents is there.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "reference.hpp"

namespace proxyattn::test {
namespace {

TEST(Synth, DeterministicAcrossThreadCounts) {
  Batch batch({1000, 700}, 4, 2, 64, PA_DTYPE_BFLOAT16);
  check(pa_set_num_threads(1));
  HostQKV a = structured_qkv(batch.problem(), 7);
  check(pa_set_num_threads(3));
  HostQKV b = structured_qkv(batch.problem(), 7);
  check(pa_set_num_threads(0));
  EXPECT_EQ(a.q, b.q);
  EXPECT_EQ(a.k, b.k);
  EXPECT_EQ(a.v, b.v);
  HostQKV c = structured_qkv(batch.problem(), 8);
  EXPECT_NE(a.q, c.q);
}

// The last queries put several times a uniform share of their mass on the sink block and
// on the diagonal block, and the mass is concentrated (the 95% budget is a minority).
TEST(Synth, SinkAndLocalStructure) {
  const int n = 2048, hq = 4, hkv = 2, d = 64;
  Batch batch({n}, hq, hkv, d, PA_DTYPE_FLOAT32);
  HostQKV x = structured_qkv(batch.problem(), 9);
  const Inputs in = read_inputs(x.q.data(), x.k.data(), x.v.data(), 0, n, hq, hkv, d, PA_DTYPE_FLOAT32);
  pa_config c = pa_config_default(d);
  c.block_size = 64;
  const auto mass = last_block_mass(in, c);
  const int nqb = n / 64;
  const double uniform = 1.0 / nqb;
  double sink = 0;
  for (int h = 0; h < hq; ++h) {
    sink += mass[h][0] / hq;
    EXPECT_GT(mass[h][0], 2 * uniform) << "head " << h;
    EXPECT_GT(mass[h][nqb - 1], 2 * uniform) << "head " << h;
    EXPECT_LT(needed_count(mass[h], 0.95), nqb * 3 / 4) << "head " << h;
  }
  EXPECT_GT(sink, 3 * uniform);
  // Heads differ in how many blocks they need.
  std::vector<int> needed;
  for (int h = 0; h < hq; ++h) needed.push_back(needed_count(mass[h], 0.95));
  EXPECT_NE(*std::min_element(needed.begin(), needed.end()), *std::max_element(needed.begin(), needed.end()));
}

// Found by the fuzzer (docs/fuzzing.md): params.num_needles sized the generator's allocations
// unchecked (INT32_MAX needles asked for gigabytes, and 2 + num_needles overflowed int), and a
// chunked problem's K and V have other row counts than the total_tokens rows it writes (a paged
// cache of fewer rows was overrun). Both are refused by name, nothing written.
TEST(Synth, RefusesUnboundedNeedlesAndChunkedProblems) {
  Batch batch({300}, 2, 1, 16, PA_DTYPE_FLOAT32);
  pa_problem p = batch.problem();
  std::vector<float> q(300 * 2 * 16, 7.0f), k(300 * 16, 7.0f), v(300 * 16, 7.0f);
  pa_synth_params params = pa_synth_default(1);
  for (int32_t needles : {-1, 1025, std::numeric_limits<int32_t>::max()}) {
    params.num_needles = needles;
    EXPECT_EQ(pa_synth_generate(&p, &params, q.data(), k.data(), v.data()), PA_STATUS_INVALID_CONFIG);
    EXPECT_NE(std::string(pa_last_error()).find("params.num_needles = " + std::to_string(needles)), std::string::npos)
        << pa_last_error();
  }
  params = pa_synth_default(1);
  params.noise = std::nanf("");
  EXPECT_EQ(pa_synth_generate(&p, &params, q.data(), k.data(), v.data()), PA_STATUS_INVALID_CONFIG);
  EXPECT_NE(std::string(pa_last_error()).find("params.noise"), std::string::npos) << pa_last_error();
  // Two sequences of 150 keys sharing one page of 150 rows: K and V have 150 rows, not 300.
  const int32_t cu[3] = {0, 150, 300};
  p.num_seqs = 2, p.cu_seqlens = cu, p.cu_seqlens_k = cu, p.total_kv_tokens = 300;
  p.page_size = 150, p.num_pages = 1, p.max_pages_per_seq = 1;
  params = pa_synth_default(1);
  EXPECT_EQ(pa_synth_generate(&p, &params, q.data(), k.data(), v.data()), PA_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(pa_last_error()).find("cu_seqlens_k"), std::string::npos) << pa_last_error();
  for (float x : k) ASSERT_EQ(x, 7.0f);
  for (float x : q) ASSERT_EQ(x, 7.0f);
  params.num_needles = 1024;  // the bound itself is fine
  p = batch.problem();
  EXPECT_EQ(pa_synth_generate(&p, &params, q.data(), k.data(), v.data()), PA_STATUS_SUCCESS) << pa_last_error();
}

}  // namespace
}  // namespace proxyattn::test
