// The structured input generator: deterministic, and the structure it documents is there.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

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

}  // namespace
}  // namespace proxyattn::test
