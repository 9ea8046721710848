// Estimation on the CPU against the fp64 reference: proxies, scores, budgets, selection,
// invariants, GQA grouping and the edge cases of ALGORITHM.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>

#include "core/block_index.hpp"
#include "fixtures.hpp"
#include "index_compare.hpp"
#include "reference.hpp"

namespace proxyattn::test {
namespace {

constexpr double kTieTolerance = 1e-4;    // relative score gap treated as a tie (fp32 vs fp64)
constexpr double kGammaTolerance = 1e-5;  // prefix mass this close to gamma is a tie

pa_config small_config(int block, int stride, float gamma, int min_budget_tokens) {
  pa_config c = pa_config_default(64);
  c.block_size = block;
  c.stride = stride;
  c.gamma = gamma;
  c.min_budget_tokens = min_budget_tokens;
  c.dense_below = 0;
  return c;
}

// The plan of config c estimated on x, its invariants checked.
Plan estimated(const Batch& batch, const pa_config& c, HostQKV& x) {
  Plan plan = Plan::on_host(batch.problem(), c);
  plan.estimate(x.tq(), x.tk());
  plan.check_invariants();
  return plan;
}

struct Case {
  int n, hq, hkv, d, g, block, stride;
  pa_dtype dtype;
  bool structured;
  pa_budget_mode mode;
  bool sink, local;
  int anchors;  // config.anchor_blocks
  pa_anchor_mode anchor_mode = PA_ANCHORS_ON_TOP;
  int budget_rows = 1;
  pa_budget_rule rule = PA_BUDGET_RULE_RANKED;
};

class EstimateVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(EstimateVsReference, IndexMatchesFp64Reference) {
  const Case k = GetParam();
  Batch batch({k.n}, k.hq, k.hkv, k.d, k.dtype);
  const pa_problem& p = batch.problem();
  pa_config c = small_config(k.block, k.stride, 0.9f, 2 * k.block);
  c.softmax_scale = 1.0f / std::sqrt(float(k.d));
  c.num_proxy_groups = k.g;
  c.budget_mode = k.mode;
  c.force_sink = k.sink;
  c.force_local = k.local;
  c.anchor_blocks = k.anchors;
  c.anchor_mode = k.anchor_mode;
  c.budget_rows = k.budget_rows;
  c.budget_rule = k.rule;
  HostQKV x = k.structured ? structured_qkv(p, 11 + k.n) : random_qkv(p, 17 + k.n);
  Plan plan = Plan::on_host(p, c);
  plan.estimate(x.tq(), x.tk());
  plan.check_invariants();
  const KeptSets lib = kept_sets(plan, batch, c);
  const Inputs in = read_inputs(x.q.data(), x.k.data(), x.v.data(), 0, k.n, k.hq, k.hkv, k.d, k.dtype);
  const RefIndex ref = reference_index(in, c);
  const IndexDiff diff = compare_index(lib.kept[0], lib.needed.data(), ref, in, c, kTieTolerance, kGammaTolerance);
  // Near-ties are rare: bound them so that a systematic error cannot hide as "ties".
  EXPECT_LE(diff.tie_rows, std::max(1, diff.rows / 50)) << diff.tie_rows << " of " << diff.rows;
  RecordProperty("tie_rows", diff.tie_rows);
  RecordProperty("needed_ties", diff.needed_ties);
  if (diff.needed_ties == 0)
    for (int h = 0; h < k.hq; ++h) EXPECT_EQ(lib.budget[h], ref.budget[h]) << "head " << h;
  std::vector<int32_t> anchors(size_t(k.hq) * k.anchors);
  check(pa_plan_get_anchors(plan.get(), anchors.data()));
  for (int h = 0; h < k.hq; ++h) {
    std::vector<int> expect = ref.anchors[h];
    expect.resize(k.anchors, -1);
    EXPECT_EQ(std::vector<int>(anchors.begin() + h * k.anchors, anchors.begin() + (h + 1) * k.anchors),
              expect) << "head " << h;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, EstimateVsReference,
    ::testing::Values(
        // N not a multiple of the block or the stride; GQA 2:1; g = 1.
        Case{1001, 4, 2, 64, 1, 64, 4, PA_DTYPE_FLOAT32, false, PA_BUDGET_ABSOLUTE, true, true, 0},
        // g = Hkv, proportional budgets, bf16 proxies.
        Case{1500, 8, 4, 32, 4, 64, 4, PA_DTYPE_BFLOAT16, true, PA_BUDGET_PROPORTIONAL, true, true, 2},
        // No GQA (Hq = Hkv), stride 1, no forced blocks.
        Case{700, 2, 2, 16, 2, 64, 1, PA_DTYPE_FLOAT32, false, PA_BUDGET_ABSOLUTE, false, false, 1},
        // Block 128, stride 8, fp16, only the diagonal forced.
        Case{2100, 4, 1, 64, 1, 128, 8, PA_DTYPE_FLOAT16, true, PA_BUDGET_ABSOLUTE, false, true, 3},
        // Only the sink forced, stride 16.
        Case{1300, 4, 2, 64, 2, 64, 16, PA_DTYPE_FLOAT32, true, PA_BUDGET_PROPORTIONAL, true, false, 2},
        // Anchors counted in the budget (the rule before issue #28), both budget modes.
        Case{1500, 8, 4, 32, 2, 64, 4, PA_DTYPE_FLOAT32, true, PA_BUDGET_ABSOLUTE, true, true, 3,
             PA_ANCHORS_IN_BUDGET},
        Case{1300, 4, 2, 64, 1, 64, 4, PA_DTYPE_BFLOAT16, true, PA_BUDGET_PROPORTIONAL, true, true, 8,
             PA_ANCHORS_IN_BUDGET},
        // On top with many anchors per group and no forced sink.
        Case{1700, 8, 2, 32, 1, 64, 4, PA_DTYPE_FLOAT32, true, PA_BUDGET_ABSOLUTE, false, true, 8},
        // Budgets from 4 and 3 query blocks (issue #28), both anchor and budget modes.
        Case{1900, 4, 2, 32, 1, 64, 4, PA_DTYPE_FLOAT32, true, PA_BUDGET_ABSOLUTE, true, true, 2,
             PA_ANCHORS_ON_TOP, 4},
        Case{1500, 8, 4, 32, 2, 64, 4, PA_DTYPE_BFLOAT16, true, PA_BUDGET_PROPORTIONAL, true, true, 2,
             PA_ANCHORS_IN_BUDGET, 3},
        Case{1001, 4, 2, 64, 1, 64, 4, PA_DTYPE_FLOAT32, false, PA_BUDGET_ABSOLUTE, true, true, 0,
             PA_ANCHORS_ON_TOP, 16},
        // The paper's budget rule (the others use the ranked default), both anchor modes.
        Case{1500, 8, 4, 32, 2, 64, 4, PA_DTYPE_BFLOAT16, true, PA_BUDGET_ABSOLUTE, true, true, 2,
             PA_ANCHORS_ON_TOP, 1, PA_BUDGET_RULE_PAPER},
        Case{1300, 4, 2, 64, 1, 64, 4, PA_DTYPE_FLOAT32, true, PA_BUDGET_PROPORTIONAL, true, true, 3,
             PA_ANCHORS_IN_BUDGET, 1, PA_BUDGET_RULE_PAPER}),
    [](const auto& info) {
      const Case& k = info.param;
      return "N" + std::to_string(k.n) + "_Hq" + std::to_string(k.hq) + "_Hkv" + std::to_string(k.hkv) +
             "_g" + std::to_string(k.g) + "_b" + std::to_string(k.block) + "_s" + std::to_string(k.stride) +
             "_T" + std::to_string(k.anchors) + (k.anchor_mode == PA_ANCHORS_IN_BUDGET ? "_inbudget" : "") +
             (k.budget_rows > 1 ? "_R" + std::to_string(k.budget_rows) : "") +
             (k.rule == PA_BUDGET_RULE_PAPER ? "_paper" : "");
    });

// Anchors on top (issue #28): every head keeps exactly its anchor-free kept set (the plan of
// anchor_blocks = 0) plus its group's anchors n <= m, in both budget modes, and so a superset
// of the anchor-free set and of the set the anchors counted in the budget leave.
TEST(Estimate, OnTopAnchorsKeepTheAnchorFreeSetPlusTheAnchors) {
  for (pa_budget_mode mode : {PA_BUDGET_ABSOLUTE, PA_BUDGET_PROPORTIONAL})
    for (int min_budget : {64, 512}) {
      const int hq = 8, hkv = 2, g = 2, n = 2500, t = 4;
      Batch batch({n}, hq, hkv, 32, PA_DTYPE_FLOAT32);
      pa_config c = small_config(64, 4, 0.9f, min_budget);
      c.num_proxy_groups = g;
      c.budget_mode = mode;
      HostQKV x = structured_qkv(batch.problem(), 41);
      auto kept_of = [&](int anchor_blocks, pa_anchor_mode am) {
        pa_config cc = c;
        cc.anchor_blocks = anchor_blocks;
        cc.anchor_mode = am;
        const Plan plan = estimated(batch, cc, x);
        std::vector<int32_t> anchors(size_t(hq) * anchor_blocks);
        if (anchor_blocks > 0) check(pa_plan_get_anchors(plan.get(), anchors.data()));
        return std::make_pair(kept_sets(plan, batch, cc).kept[0], anchors);
      };
      const auto [free_set, no_anchors] = kept_of(0, PA_ANCHORS_ON_TOP);
      const auto [on_top, anchors] = kept_of(t, PA_ANCHORS_ON_TOP);
      const auto [in_budget, anchors_b] = kept_of(t, PA_ANCHORS_IN_BUDGET);
      ASSERT_EQ(anchors, anchors_b);
      const int nqb = (n + 63) / 64;
      int64_t extra = 0;
      for (int h = 0; h < hq; ++h) {
        const int j = h / (hq / g);
        for (int m = 0; m < nqb; ++m) {
          std::set<int> expect(free_set[h][m].begin(), free_set[h][m].end());
          for (int o = j * (hq / g); o < (j + 1) * (hq / g); ++o)
            for (int a = 0; a < t; ++a) {
              const int32_t b = anchors[size_t(o) * t + a];
              if (b >= 0 && b <= m) expect.insert(b);
            }
          const std::set<int> got(on_top[h][m].begin(), on_top[h][m].end());
          EXPECT_EQ(got, expect) << "mode " << mode << " head " << h << " row " << m;
          EXPECT_TRUE(std::includes(got.begin(), got.end(), in_budget[h][m].begin(), in_budget[h][m].end()))
              << "head " << h << " row " << m;
          extra += int64_t(got.size()) - int64_t(free_set[h][m].size());
        }
      }
      EXPECT_GT(extra, 0);  // the anchors do add blocks here
    }
}

// PA_ANCHORS_IN_BUDGET reproduces the index before issue #28 exactly: the anchors forced and
// counted in the budget (row_keep with every forced block), checked on the raw arrays.
TEST(Estimate, InBudgetAnchorsCountTheForcedBlocksInTheBudget) {
  const int hq = 4, n = 2000, t = 3;
  Batch batch({n}, hq, 2, 32, PA_DTYPE_FLOAT32);
  pa_config c = small_config(64, 4, 0.9f, 256);
  c.anchor_blocks = t;
  c.anchor_mode = PA_ANCHORS_IN_BUDGET;
  HostQKV x = structured_qkv(batch.problem(), 43);
  Plan plan = Plan::on_host(batch.problem(), c);
  plan.estimate(x.tq(), x.tk());
  const int nqb = (n + 63) / 64;
  int64_t qblocks = 0, entries = 0;
  check(pa_plan_get_layout(plan.get(), &qblocks, &entries));
  std::vector<int32_t> order(entries), count(size_t(qblocks) * hq), budget(hq), anchors(size_t(hq) * t);
  check(pa_plan_get_index(plan.get(), order.data(), count.data()));
  check(pa_plan_get_heads(plan.get(), budget.data(), nullptr, nullptr));
  check(pa_plan_get_anchors(plan.get(), anchors.data()));
  for (int m = 0; m < nqb; ++m) {
    std::set<int> forced = {0, m};
    for (int32_t a : anchors)
      if (a >= 0 && a <= m) forced.insert(a);
    for (int h = 0; h < hq; ++h)
      EXPECT_EQ(count[size_t(m) * hq + h], std::min<int>(m + 1, std::max<int>(budget[h], int(forced.size()))))
          << "head " << h << " row " << m;
  }
}

TEST(Estimate, EdgeLengths) {
  for (int n : {0, 1, 5, 63, 64, 65, 127, 130}) {
    Batch batch({n}, 4, 2, 32, PA_DTYPE_FLOAT32);
    pa_config c = small_config(64, 4, 0.9f, 64);
    HostQKV x = random_qkv(batch.problem(), 100 + n);
    Plan plan = Plan::on_host(batch.problem(), c);
    plan.estimate(x.tq(), x.tk());
    plan.check_invariants();
    const pa_plan_stats s = plan.stats();
    const int nqb = (n + 63) / 64;
    EXPECT_EQ(s.causal_pairs, int64_t(4) * nqb * (nqb + 1) / 2) << "n = " << n;
    if (n == 0) EXPECT_EQ(s.density, 1.0);
    const KeptSets lib = kept_sets(plan, batch, c);
    const Inputs in = read_inputs(x.q.data(), x.k.data(), x.v.data(), 0, n, 4, 2, 32, PA_DTYPE_FLOAT32);
    const RefIndex ref = reference_index(in, c);
    for (int h = 0; h < 4; ++h)
      for (int m = 0; m < nqb; ++m) EXPECT_EQ(lib.kept[0][h][m], ref.kept[h][m]) << "n " << n << " h " << h;
  }
}

TEST(Estimate, DenseBelowKeepsEverything) {
  Batch batch({1000, 3000}, 4, 2, 32, PA_DTYPE_FLOAT32);
  pa_config c = small_config(64, 4, 0.5f, 64);
  c.dense_below = 2000;
  HostQKV x = structured_qkv(batch.problem(), 5);
  Plan plan = Plan::on_host(batch.problem(), c);
  plan.estimate(x.tq(), x.tk());
  const pa_plan_stats s = plan.stats();
  EXPECT_EQ(s.dense_seqs, 1);
  const KeptSets lib = kept_sets(plan, batch, c);
  for (int h = 0; h < 4; ++h)
    for (size_t m = 0; m < lib.kept[0][h].size(); ++m) EXPECT_EQ(lib.kept[0][h][m].size(), m + 1);
  double sparse_density = 0;
  std::vector<double> density(8);
  check(pa_plan_get_heads(plan.get(), nullptr, nullptr, density.data()));
  for (int h = 0; h < 4; ++h) {
    EXPECT_EQ(density[h], 1.0);
    sparse_density += density[4 + h] / 4;
  }
  EXPECT_LT(sparse_density, 0.9);  // gamma = 0.5 on the structured input: clearly sparse
  for (int h = 0; h < 4; ++h) {  // a head's density: its kept blocks over the causal ones
    size_t kept = 0, causal = 0;
    for (size_t m = 0; m < lib.kept[1][h].size(); ++m) kept += lib.kept[1][h][m].size(), causal += m + 1;
    EXPECT_DOUBLE_EQ(density[4 + h], double(kept) / double(causal)) << "head " << h;
  }
}

TEST(Estimate, GammaOneAndFullBudgetKeepsEverything) {
  Batch batch({2000}, 4, 2, 32, PA_DTYPE_FLOAT32);
  pa_config c = small_config(64, 4, 1.0f, 4096);
  HostQKV x = random_qkv(batch.problem(), 9);
  Plan plan = Plan::on_host(batch.problem(), c);
  plan.estimate(x.tq(), x.tk());
  EXPECT_EQ(plan.stats().density, 1.0);
}

// Heads of a group share one ordering; groups are independent of each other.
TEST(Estimate, GqaGroupsShareOrderAndAreIndependent) {
  const int n = 1200, hq = 8, hkv = 4, d = 32;
  Batch batch({n}, hq, hkv, d, PA_DTYPE_FLOAT32);
  pa_config c = small_config(64, 4, 0.9f, 128);
  c.num_proxy_groups = 2;  // group 0: KV heads 0-1, Q heads 0-3; group 1: KV 2-3, Q 4-7
  HostQKV x = structured_qkv(batch.problem(), 21);
  Plan a = Plan::on_host(batch.problem(), c);
  a.estimate(x.tq(), x.tk());
  const KeptSets ka = kept_sets(a, batch, c);
  // Within a group every head's kept set is a prefix of the shared order: sets are nested.
  for (int m = 0; m < int(ka.kept[0][0].size()); ++m)
    for (int h = 0; h < hq; ++h)
      for (int h2 = h - h % 4; h2 < h - h % 4 + 4; ++h2) {
        const auto& s1 = ka.kept[0][h][m];
        const auto& s2 = ka.kept[0][h2][m];
        const auto& small = s1.size() <= s2.size() ? s1 : s2;
        const auto& big = s1.size() <= s2.size() ? s2 : s1;
        EXPECT_TRUE(std::includes(big.begin(), big.end(), small.begin(), small.end()));
      }
  // Changing group 1's Q heads leaves group 0's index untouched.
  std::vector<float> qf(size_t(n) * hq * d);
  check(pa_to_float32(PA_DTYPE_FLOAT32, x.q.data(), qf.size(), qf.data()));
  for (int t = 0; t < n; ++t)
    for (int h = 4; h < 8; ++h)
      for (int e = 0; e < d; ++e) qf[(size_t(t) * hq + h) * d + e] *= -1.0f;
  check(pa_from_float32(PA_DTYPE_FLOAT32, qf.data(), qf.size(), x.q.data()));
  Plan b = Plan::on_host(batch.problem(), c);
  b.estimate(x.tq(), x.tk());
  const KeptSets kb = kept_sets(b, batch, c);
  for (int h = 0; h < 4; ++h) EXPECT_EQ(ka.kept[0][h], kb.kept[0][h]) << "head " << h;
}

TEST(Estimate, VarlenEqualsSeparateRuns) {
  const std::vector<int32_t> lengths = {700, 0, 64, 1500, 1};
  Batch batch(lengths, 4, 2, 32, PA_DTYPE_BFLOAT16);
  pa_config c = small_config(64, 4, 0.9f, 128);
  c.dense_below = 100;
  HostQKV x = structured_qkv(batch.problem(), 31);
  Plan plan = Plan::on_host(batch.problem(), c);
  plan.estimate(x.tq(), x.tk());
  const KeptSets all = kept_sets(plan, batch, c);
  int64_t begin = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    Batch one({lengths[s]}, 4, 2, 32, PA_DTYPE_BFLOAT16);
    const size_t qrow = 4 * 32 * 2, krow = 2 * 32 * 2;
    HostQKV y;
    y.hq = 4, y.hkv = 2, y.d = 32;
    y.q.assign(x.q.begin() + begin * qrow, x.q.begin() + (begin + lengths[s]) * qrow);
    y.k.assign(x.k.begin() + begin * krow, x.k.begin() + (begin + lengths[s]) * krow);
    Plan single = Plan::on_host(one.problem(), c);
    single.estimate(y.tq(), y.tk());
    const KeptSets alone = kept_sets(single, one, c);
    EXPECT_EQ(all.kept[s], alone.kept[0]) << "sequence " << s;
    for (int h = 0; h < 4; ++h) EXPECT_EQ(all.budget[s * 4 + h], alone.budget[h]);
    begin += lengths[s];
  }
}

TEST(Estimate, ThreadCountDoesNotChangeTheIndex) {
  Batch batch({1800}, 4, 2, 64, PA_DTYPE_BFLOAT16);
  pa_config c = small_config(64, 4, 0.9f, 128);
  HostQKV x = structured_qkv(batch.problem(), 41);
  std::vector<KeptSets> results;
  for (int threads : {1, 3}) {
    check(pa_set_num_threads(threads));
    Plan plan = Plan::on_host(batch.problem(), c);
    plan.estimate(x.tq(), x.tk());
    results.push_back(kept_sets(plan, batch, c));
  }
  check(pa_set_num_threads(0));
  EXPECT_EQ(results[0].kept, results[1].kept);
}

TEST(Estimate, FlexConversionMatchesKeptSets) {
  Batch batch({900, 500}, 4, 2, 32, PA_DTYPE_FLOAT32);
  pa_config c = small_config(64, 4, 0.8f, 64);
  HostQKV x = structured_qkv(batch.problem(), 51);
  Plan plan = Plan::on_host(batch.problem(), c);
  plan.estimate(x.tq(), x.tk());
  const KeptSets ks = kept_sets(plan, batch, c);
  for (int s = 0; s < 2; ++s) {
    const int nqb = (batch.lengths()[s] + 63) / 64;
    std::vector<int32_t> num(4 * nqb), idx(4 * nqb * nqb, -1);
    check(pa_plan_to_flex(plan.get(), s, num.data(), idx.data()));
    for (int h = 0; h < 4; ++h)
      for (int m = 0; m < nqb; ++m) {
        const int32_t* row = &idx[(h * nqb + m) * nqb];
        ASSERT_EQ(num[h * nqb + m], int(ks.kept[s][h][m].size()));
        EXPECT_EQ(std::vector<int>(row, row + num[h * nqb + m]), ks.kept[s][h][m]);
        for (int e = num[h * nqb + m]; e < nqb; ++e) EXPECT_EQ(row[e], 0);
      }
  }
}

}  // namespace
}  // namespace proxyattn::test

namespace proxyattn::test {
namespace {

// The checker reports each kind of broken index.
TEST(Estimate, InvariantCheckerCatchesViolations) {
  Batch batch({640}, 2, 1, 16, PA_DTYPE_FLOAT32);
  pa_config c = small_config(64, 4, 0.9f, 64);
  HostQKV x = random_qkv(batch.problem(), 61);
  Plan plan = Plan::on_host(batch.problem(), c);
  plan.estimate(x.tq(), x.tk());
  const BatchLayout layout = make_batch_layout(batch.problem(), 64, 1);
  int64_t rows = 0, entries = 0;
  check(pa_plan_get_layout(plan.get(), &rows, &entries));
  std::vector<int32_t> order(entries), count(rows * 2);
  check(pa_plan_get_index(plan.get(), order.data(), count.data()));
  auto check_with = [&](std::vector<int32_t> o, std::vector<int32_t> n, const char* needle) {
    const HostIndex index{&layout, 2, 1, o.data(), n.data()};
    EXPECT_EQ(check_index(index, true, true), PA_STATUS_INTERNAL) << needle;
    EXPECT_NE(std::string(pa_last_error()).find(needle), std::string::npos) << pa_last_error();
  };
  const HostIndex good{&layout, 2, 1, order.data(), count.data()};
  ASSERT_EQ(check_index(good, true, true), PA_STATUS_SUCCESS);
  const int64_t row5 = order_row(layout.seqs[0], 0, 5);  // row 5: [0, 5, ...]
  {
    auto o = order;
    o[row5 + 1] = 7;  // block after the query block
    check_with(o, count, "not causal");
  }
  {
    auto o = order;
    auto n = count;
    n[5 * 2] = 3;
    o[row5 + 2] = o[row5 + 1];  // the diagonal twice
    check_with(o, n, "kept twice");
  }
  {
    auto o = order;
    std::swap(o[row5], o[row5 + 5]);  // sink moved out of a prefix of 2
    auto n = count;
    n[5 * 2] = 2;
    check_with(o, n, "forced block 0 (sink) missing");
  }
  {
    auto n = count;
    n[5 * 2 + 1] = 7;  // more than m + 1
    check_with(order, n, "outside");
  }
  {
    // an anchor (block 3 of head 1) raises row 5's forced blocks to 3; keep only 2
    const std::vector<int32_t> anchors{-1, 3};
    auto o = order;
    auto n = count;
    n[5 * 2] = 2;
    const HostIndex index{&layout, 2, 1, o.data(), n.data(), anchors.data(), 1};
    EXPECT_EQ(check_index(index, true, true), PA_STATUS_INTERNAL);
    EXPECT_NE(std::string(pa_last_error()).find("count 2 outside [3, 6]"), std::string::npos)
        << pa_last_error();
    n = count;
    const int64_t e = std::find(o.begin() + row5, o.begin() + row5 + 6, 3) - o.begin();
    std::swap(o[e], o[row5 + 5]);  // block 3 moved to the end of the row
    std::swap(o[row5 + 2], o[row5 + 4]);
    n[5 * 2] = 3;
    n[5 * 2 + 1] = 3;
    const HostIndex moved{&layout, 2, 1, o.data(), n.data(), anchors.data(), 1};
    EXPECT_EQ(check_index(moved, true, true), PA_STATUS_INTERNAL);
    EXPECT_NE(std::string(pa_last_error()).find("forced block 3 (anchor) missing"), std::string::npos)
        << pa_last_error();
  }
}

// Two Q heads share one KV head and one proxy. Head 0 looks for direction u, which lives in
// key block 3; head 1 for w (block 7) and away from u, so that their mean (the proxy) has
// no u at all and ranks block 3 among the noise. With a one-block budget head 0 then loses
// its only important block; its anchor (T = 1) keeps it in every row from 3 on.
TEST(Estimate, AnchorsKeepEachHeadsTopBlockTheProxyMisses) {
  const int n = 640, hq = 2, hkv = 1, d = 32, block = 64;
  const int u_block = 3, w_block = 7;
  Batch batch({n}, hq, hkv, d, PA_DTYPE_FLOAT32);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> noise(0.0f, 0.1f);
  std::vector<float> q(size_t(n) * hq * d), k(size_t(n) * d), v(size_t(n) * d);
  constexpr float kSignal = 6.0f;  // |q| * |k| / sqrt(d) of a matching pair: about e^9 odds
  for (int t = 0; t < n; ++t) {
    for (int c = 0; c < d; ++c) {
      k[size_t(t) * d + c] = noise(rng);
      v[size_t(t) * d + c] = noise(rng);
    }
    if (t / block == u_block) k[size_t(t) * d + 0] += kSignal;  // u = e0
    if (t / block == w_block) k[size_t(t) * d + 1] += kSignal;  // w = e1
    q[(size_t(t) * hq + 0) * d + 0] = kSignal;                   // head 0: u
    q[(size_t(t) * hq + 1) * d + 0] = -kSignal;                  // head 1: w - u
    q[(size_t(t) * hq + 1) * d + 1] = 2.0f * kSignal;
  }
  HostQKV x;
  x.hq = hq, x.hkv = hkv, x.d = d;
  auto bytes = [](const std::vector<float>& f) {
    std::vector<uint8_t> b(f.size() * sizeof(float));
    std::memcpy(b.data(), f.data(), b.size());
    return b;
  };
  x.q = bytes(q), x.k = bytes(k), x.v = bytes(v);
  auto head0_keeps_u = [&](int anchors) {
    pa_config c = small_config(block, 4, 0.5f, 0);
    c.anchor_blocks = anchors;
    Plan plan = Plan::on_host(batch.problem(), c);
    plan.estimate(x.tq(), x.tk());
    plan.check_invariants();
    const KeptSets lib = kept_sets(plan, batch, c);
    EXPECT_EQ(lib.needed[0], 1);  // head 0's mass is in block 3
    int rows = 0;
    for (int m = u_block; m < n / block; ++m) {
      const auto& kept = lib.kept[0][0][m];
      rows += std::find(kept.begin(), kept.end(), u_block) != kept.end();
    }
    return rows;
  };
  const int rows_after_u = n / block - u_block;
  EXPECT_EQ(head0_keeps_u(1), rows_after_u);
  EXPECT_LT(head0_keeps_u(0), rows_after_u / 2);  // the proxy alone misses it in most rows
}

TEST(Estimate, ForwardEqualsEstimateThenAttend) {
  Batch batch({900}, 4, 2, 32, PA_DTYPE_BFLOAT16);
  const pa_problem& p = batch.problem();
  pa_config c = small_config(64, 4, 0.9f, 128);
  HostQKV x = structured_qkv(p, 71);
  const size_t o_bytes = x.q.size();
  std::vector<uint8_t> o1(o_bytes), o2(o_bytes, 0xff);
  std::vector<float> l1(4 * 900), l2(4 * 900);
  pa_tensor t1 = pa_tensor_contiguous(o1.data(), 4, 32), t2 = pa_tensor_contiguous(o2.data(), 4, 32);
  Plan a = Plan::on_host(p, c);
  a.estimate(x.tq(), x.tk());
  a.attend(x.tq(), x.tk(), x.tv(), t1, l1.data());
  Plan b = Plan::on_host(p, c);
  b.forward(x.tq(), x.tk(), x.tv(), t2, l2.data());
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(l1, l2);
}

}  // namespace
}  // namespace proxyattn::test

namespace proxyattn::test {
namespace {

// budget_rows R: a count_i never below the last block's (R = 1), the anchors unchanged.
TEST(Estimate, BudgetRowsTakeTheLargestCount) {
  const int hq = 4, n = 3000;
  Batch batch({n}, hq, 2, 32, PA_DTYPE_FLOAT32);
  pa_config c = small_config(64, 4, 0.9f, 64);
  c.anchor_blocks = 2;
  HostQKV x = structured_qkv(batch.problem(), 47);
  auto heads = [&](int rows) {
    pa_config cc = c;
    cc.budget_rows = rows;
    Plan plan = Plan::on_host(batch.problem(), cc);
    plan.estimate(x.tq(), x.tk());
    plan.check_invariants();
    std::vector<int32_t> needed(hq), anchors(size_t(hq) * 2);
    check(pa_plan_get_heads(plan.get(), nullptr, needed.data(), nullptr));
    check(pa_plan_get_anchors(plan.get(), anchors.data()));
    return std::make_pair(needed, anchors);
  };
  const auto [one, anchors1] = heads(1);
  const auto [four, anchors4] = heads(4);
  EXPECT_EQ(anchors1, anchors4);
  for (int h = 0; h < hq; ++h) EXPECT_GE(four[h], one[h]) << "head " << h;
}

// PA_BUDGET_RULE_RANKED (issue #28): each head's count is at least the paper's, and with
// anchors off its last row (the same ranking the count walked) keeps at least the target
// share 1 - s (1 - gamma) of that head's fp64 last-row mass; a larger slack never counts more.
TEST(Estimate, RankedBudgetsReachTheTargetInTheLastRow) {
  const int hq = 8, hkv = 2, n = 3000, d = 32;
  Batch batch({n}, hq, hkv, d, PA_DTYPE_FLOAT32);
  HostQKV x = structured_qkv(batch.problem(), 53);
  const Inputs in = read_inputs(x.q.data(), x.k.data(), x.v.data(), 0, n, hq, hkv, d, PA_DTYPE_FLOAT32);
  for (int g : {1, 2}) {
    pa_config c = small_config(64, 4, 0.9f, 64);
    c.num_proxy_groups = g;
    c.anchor_blocks = 0;
    const std::vector<std::vector<double>> mass = last_block_mass(in, c);
    auto run = [&](pa_budget_rule rule, float slack) {
      pa_config cc = c;
      cc.budget_rule = rule;
      cc.ranked_slack = slack;
      return kept_sets(estimated(batch, cc, x), batch, cc);
    };
    const KeptSets paper = run(PA_BUDGET_RULE_PAPER, 2.0f);
    const KeptSets tight = run(PA_BUDGET_RULE_RANKED, 1.0f);
    const KeptSets loose = run(PA_BUDGET_RULE_RANKED, 2.0f);
    int raised = 0;
    for (int h = 0; h < hq; ++h) {
      EXPECT_GE(loose.needed[h], paper.needed[h]) << "g " << g << " head " << h;
      EXPECT_GE(tight.needed[h], loose.needed[h]) << "g " << g << " head " << h;
      raised += tight.needed[h] > paper.needed[h];
      const std::vector<int>& last = tight.kept[0][h].back();
      double kept = 0, total = 0;
      for (double m : mass[h]) total += m;
      for (int b : last) kept += mass[h][b];
      EXPECT_GE(kept / total, double(c.gamma) - kGammaTolerance) << "g " << g << " head " << h;
    }
    EXPECT_GT(raised, 0) << "g " << g << ": the structured input's ranking misses mass the paper counts";
  }
}

}  // namespace
}  // namespace proxyattn::test
