// GPU estimation against the CPU backend, through the public C API: the same problem and
// config estimated on host copies (CPU) and on device tensors (CUDA), then the two block
// indexes compared.
//
// What must be equal, and what may differ (fp32 tensor-core accumulation order and the
// exponentials differ from the CPU in the last bits, about 1e-6 relative, so exact
// near-ties can flip; the tolerances below are far above that and far below any real
// difference in ranking):
//   - per (sequence, head): needed_blocks and budget_blocks equal; OR needed differs by
//     exactly one and the reference (fp64) prefix sum of the smaller count lies within
//     kGammaSlack of gamma (as a fraction of the total mass). The GPU budget must follow
//     from its own needed (K_i = min(Nqb, max(count_i, Kmin))).
//   - per (sequence, head, row): the GPU count equals row_keep() of the GPU's budget, and
//     equals the CPU count wherever budgets agree.
//   - per (sequence, group, row, kept length c): the set of the first c GPU entries equals
//     the set of the first c CPU entries; OR every block in the symmetric difference has a
//     reference (fp64) score within kTieRelative (relative) or kTieAbsolute of the CPU's
//     c-th score. At most max(1, kMaxRowFraction * rows) (group, row) pairs of a case may
//     differ at all.
//   - per (sequence, head): the anchors equal; OR each differing anchor's reference (fp64)
//     mass is a near-tie (kTieRelative) of the CPU's anchor in that place; the rows of a
//     group whose anchors differ are then not compared (their forced sets differ).
//   - every GPU order row is a permutation of 0..m with its forced blocks (sink, the GPU's
//     group anchors, diagonal) first, ascending, and pa_plan_check passes.
// The measured differences are printed per case ("[compare]" lines).
//
// The suite EstimateGpu runs every case under each tuning of kTunings (parameterised tests):
// at the defaults and with pass 2 in place of the block logits (the path of other strides and
// of logit buffers over 1 GiB, here at the default config).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/block_index.hpp"
#include "core/budget.hpp"
#include "core/plan.hpp"
#include "cuda/backend.hpp"
#include "gpu_util.hpp"
#include "ranked_rule.hpp"
#include "proxyattn/proxyattn.h"
#include "proxyattn/proxyattn.hpp"
#include "proxyattn/proxyattn_tuning.h"

namespace proxyattn::test {
namespace {

constexpr double kTieRelative = 1e-3;   // scores this close (relative) may swap places
constexpr double kTieAbsolute = 1e-30;  // underflowed scores (the CPU flushes below e^-87)
constexpr double kGammaSlack = 1e-4;    // needed may differ by one this close to gamma
constexpr double kMaxRowFraction = 0.01;

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- inputs ------------------------------------------------------------------------------
// Q and K on the host (2-byte elements), with the strides of their views.
struct Inputs {
  std::vector<uint16_t> q, k;
  pa_tensor tq{}, tk{};  // views over q, k (host pointers)
  pa_dtype dtype = PA_DTYPE_BFLOAT16;
  // q and k as float, converted on first use by the references.
  mutable std::vector<float> qf, kf;
  void ensure_float() const {
    if (!qf.empty()) return;
    qf.resize(q.size());
    kf.resize(k.size());
    check(pa_to_float32(dtype, q.data(), int64_t(q.size()), qf.data()));
    check(pa_to_float32(dtype, k.data(), int64_t(k.size()), kf.data()));
  }
};

// head_pad > 0 stores each head in head_dim + head_pad elements (a strided view).
Inputs make_inputs(const pa_problem& p, bool structured, uint64_t seed, int head_pad = 0) {
  const int64_t nq = p.total_tokens * p.num_q_heads * p.head_dim;
  const int64_t nk = p.total_tokens * p.num_kv_heads * p.head_dim;
  std::vector<uint16_t> q(nq), k(nk), v(nk);
  if (structured) {
    const pa_synth_params params = pa_synth_default(seed);
    check(pa_synth_generate(&p, &params, q.data(), k.data(), v.data()));
  } else {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.5f);
    std::vector<float> f(std::max(nq, nk));
    for (int64_t i = 0; i < nq; ++i) f[i] = normal(rng);
    check(pa_from_float32(p.dtype, f.data(), nq, q.data()));
    for (int64_t i = 0; i < nk; ++i) f[i] = normal(rng);
    check(pa_from_float32(p.dtype, f.data(), nk, k.data()));
  }
  Inputs in;
  in.dtype = p.dtype;
  const int hs = p.head_dim + head_pad;
  auto relayout = [&](const std::vector<uint16_t>& src, int heads, std::vector<uint16_t>& dst,
                      pa_tensor& view) {
    dst.assign(size_t(p.total_tokens) * heads * hs, 0x7fc0);  // padding: NaN, never read
    for (int64_t t = 0; t < p.total_tokens; ++t)
      for (int h = 0; h < heads; ++h)
        std::memcpy(&dst[(t * heads + h) * hs], &src[(t * heads + h) * p.head_dim],
                    sizeof(uint16_t) * p.head_dim);
    view.data = dst.data();
    view.head_stride = hs;
    view.token_stride = int64_t(heads) * hs;
  };
  relayout(q, p.num_q_heads, in.q, in.tq);
  relayout(k, p.num_kv_heads, in.k, in.tk);
  return in;
}

// ---- an index copied to the host ------------------------------------------------------------
struct Index {
  std::vector<int32_t> order, count, budget, needed, anchors;
};

Index read_index(const pa_plan* plan, const pa_problem& p) {
  int64_t rows = 0, entries = 0;
  check(pa_plan_get_layout(plan, &rows, &entries));
  Index x;
  x.order.resize(entries);
  x.count.resize(rows * p.num_q_heads);
  x.budget.resize(size_t(p.num_seqs) * p.num_q_heads);
  x.needed.resize(x.budget.size());
  check(pa_plan_get_index(plan, x.order.data(), x.count.data()));
  check(pa_plan_get_heads(plan, x.budget.data(), x.needed.data(), nullptr));
  pa_config effective{};
  check(pa_plan_get_config(plan, &effective));
  x.anchors.resize(x.budget.size() * effective.anchor_blocks);
  check(pa_plan_get_anchors(plan, x.anchors.data()));
  return x;
}

Index estimate_cpu(const pa_problem& p, const pa_config& c, const Inputs& in) {
  Plan plan = Plan::on_host(p, c);
  plan.estimate(in.tq, in.tk);
  return read_index(plan.get(), p);
}

// Device plan storage and workspace (of the tuning's size) poisoned (0xff) before the run;
// estimation with the tuning on a stream of its own; returns the status of pa_estimate.
pa_status estimate_gpu(const pa_problem& p, const pa_config& c, const pa_tuning& tuning, const Inputs& in,
                       Index* out, int poison = 0xff) {
  DeviceBuffer dq(in.q.size() * sizeof(uint16_t)), dk(in.k.size() * sizeof(uint16_t));
  EXPECT_EQ(dq.upload(in.q.data()), cudaSuccess);
  EXPECT_EQ(dk.upload(in.k.data()), cudaSuccess);
  size_t plan_bytes = 0, ws_bytes = 0;
  check(pa_plan_bytes(&p, &c, &plan_bytes));
  check(pa_workspace_bytes_tuned(&p, &c, &tuning, &ws_bytes));
  DeviceBuffer storage(plan_bytes), workspace(ws_bytes);
  EXPECT_EQ(storage.poison(poison), cudaSuccess);  // before pa_plan_create writes its tables
  EXPECT_EQ(workspace.poison(poison), cudaSuccess);
  pa_plan* plan = nullptr;
  check(pa_plan_create(&p, &c, storage.get(), plan_bytes, &plan));
  check(pa_plan_set_tuning(plan, &tuning));
  pa_tensor q = in.tq, k = in.tk;
  q.data = dq.get();
  k.data = dk.get();
  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  const pa_status st = pa_estimate(plan, &q, &k, workspace.get(), ws_bytes, stream);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaStreamDestroy(stream);
  if (st == PA_STATUS_SUCCESS) {
    EXPECT_EQ(pa_plan_check(plan), PA_STATUS_SUCCESS) << pa_last_error();
    if (out) *out = read_index(plan, p);
  }
  pa_plan_free(plan);
  return st;
}

// ---- fp64 references for the rows and heads that differ ----------------------------------
float to_float(pa_dtype dtype, uint16_t x) {
  float f = 0.0f;
  check(pa_to_float32(dtype, &x, 1, &f));
  return f;
}
float round_to(pa_dtype dtype, float x) {
  uint16_t h = 0;
  check(pa_from_float32(dtype, &x, 1, &h));
  return to_float(dtype, h);
}
// Element (token, head, c) of a view over `values` (the float copy of its buffer).
double element(const pa_tensor& t, const std::vector<float>& values, int64_t token, int head, int c) {
  return values[token * t.token_stride + head * t.head_stride + c];
}

// One sequence's positions [0, length) at tokens token_begin.. of in (Q and K of the whole
// prompt so far); its scores use the sampled query rows from row_begin on (a chunk's first
// known query).
struct SeqRef {
  const pa_problem* p;
  const pa_config* c;
  const Inputs* in;
  int64_t token_begin;
  int length;
  int row_begin = 0;
  std::vector<std::vector<double>> qp, kp;  // [g][ns * d]: proxies as the library stores them

  void build_proxies() {
    if (!qp.empty()) return;
    in->ensure_float();
    const int g = c->num_proxy_groups, d = p->head_dim, s = c->stride;
    const int ns = int(cdiv(length, s));
    const int qh = p->num_q_heads / g, kh = p->num_kv_heads / g;
    qp.assign(g, std::vector<double>(size_t(ns) * d));
    kp = qp;
    for (int j = 0; j < g; ++j)
      for (int i = 0; i < ns; ++i)
        for (int x = 0; x < d; ++x) {
          const int64_t t = token_begin + int64_t(i) * s;
          float sq = 0.0f, sk = 0.0f;  // fp32 in head order, like both backends
          for (int h = j * qh; h < (j + 1) * qh; ++h) sq += float(element(in->tq, in->qf, t, h, x));
          for (int h = j * kh; h < (j + 1) * kh; ++h) sk += float(element(in->tk, in->kf, t, h, x));
          qp[j][size_t(i) * d + x] = round_to(p->dtype, sq / float(qh));
          kp[j][size_t(i) * d + x] = round_to(p->dtype, sk / float(kh));
        }
  }

  // A[j][m][0..m] in fp64.
  std::vector<double> scores(int j, int m) {
    build_proxies();
    const int d = p->head_dim, pb = c->block_size / c->stride;
    const int ns = int(cdiv(length, c->stride));
    std::vector<double> a(m + 1, 0.0);
    for (int tq = std::max(m * pb, row_begin); tq < std::min(ns, (m + 1) * pb); ++tq) {
      std::vector<double> logit(tq + 1);
      double mx = -INFINITY;
      for (int tk = 0; tk <= tq; ++tk) {
        double dot = 0.0;
        for (int x = 0; x < d; ++x) dot += qp[j][size_t(tq) * d + x] * kp[j][size_t(tk) * d + x];
        logit[tk] = dot * c->softmax_scale;
        mx = std::max(mx, logit[tk]);
      }
      double sum = 0.0;
      for (double l : logit) sum += std::exp(l - mx);
      for (int tk = 0; tk <= tq; ++tk) a[tk / pb] = std::max(a[tk / pb], std::exp(logit[tk] - mx) / sum);
    }
    return a;
  }

  // Masses of head h's query block qb (-1: the last) per key block 0..qb, sorted descending,
  // in fp64.
  std::vector<double> sorted_mass(int h, int qb = -1) {
    std::vector<double> m = mass(h, qb);
    std::sort(m.begin(), m.end(), std::greater<double>());
    return m;
  }

  // Masses of head h's query block qb (-1: the last) per key block 0..qb, in fp64.
  std::vector<double> mass(int h, int qb = -1) {
    in->ensure_float();
    const int d = p->head_dim, b = c->block_size;
    if (qb < 0) qb = int(cdiv(length, b)) - 1;
    const int kv = h / (p->num_q_heads / p->num_kv_heads);
    const int q0 = qb * b, q_end = std::min(length, q0 + b);
    std::vector<double> mass(qb + 1, 0.0);
    for (int t = q0; t < q_end; ++t) {
      std::vector<double> logit(t + 1);
      double mx = -INFINITY;
      for (int u = 0; u <= t; ++u) {
        double dot = 0.0;
        for (int x = 0; x < d; ++x)
          dot += element(in->tq, in->qf, token_begin + t, h, x) *
                 element(in->tk, in->kf, token_begin + u, kv, x);
        logit[u] = dot * c->softmax_scale;
        mx = std::max(mx, logit[u]);
      }
      double sum = 0.0;
      for (double l : logit) sum += std::exp(l - mx);
      for (int u = 0; u <= t; ++u) mass[u / b] += std::exp(logit[u] - mx) / sum / (q_end - q0);
    }
    return mass;
  }
};

bool near_tie(double a, double b) {
  return std::fabs(a - b) <= kTieRelative * std::max(a, b) + kTieAbsolute;
}

// ---- the comparison --------------------------------------------------------------------
// A head's count in row m with anchors on top (row_keep_anchored): exact from the fp64
// reference scores' ranks; lo..hi whatever the ranks (every anchor ranked inside the head's
// K' ranked entries .. none); anchor_at_tie: some anchor's score is a near-tie of the K'-th
// ranked score, so that float scores may rank it on either side.
struct OnTopCount {
  int32_t exact, lo, hi;
  bool anchor_at_tie;
};

OnTopCount on_top_count(const pa_config& c, const std::vector<double>& scores, int32_t m,
                        const std::vector<int32_t>& forced, int32_t budget, int32_t needed, int32_t nkb,
                        int32_t min_blocks) {
  const int32_t base_forced = std::min<int32_t>(m + 1, c.force_sink + c.force_local);
  const int32_t f = int32_t(forced.size());
  const int32_t base = row_keep(c.budget_mode, budget, needed, nkb, min_blocks, m, base_forced);
  const int32_t ranked = base - base_forced;  // K'
  const std::vector<float> as_float(scores.begin(), scores.end());
  std::vector<int32_t> ranks;
  anchor_ranks(as_float.data(), m, c.force_sink, c.force_local, forced, ranks);
  OnTopCount out{};
  out.exact = row_keep_anchored(c.anchor_mode, c.budget_mode, budget, needed, nkb, min_blocks, m, base_forced, f,
                                ranks.data(), int32_t(ranks.size()));
  out.lo = f > base_forced ? on_top_keep(base, base_forced, f, std::min<int32_t>(f - base_forced, ranked), m)
                           : out.exact;
  out.hi = f > base_forced ? on_top_keep(base, base_forced, f, 0, m) : out.exact;
  // The K'-th largest score among the blocks that are neither the forced sink nor diagonal.
  std::vector<double> free;
  for (int32_t n = 0; n <= m; ++n)
    if (!((c.force_sink && n == 0) || (c.force_local && n == m))) free.push_back(scores[n]);
  std::sort(free.begin(), free.end(), std::greater<double>());
  if (ranked >= 1 && ranked <= int32_t(free.size()))
    for (int32_t n : forced)
      if (!((c.force_sink && n == 0) || (c.force_local && n == m)) && near_tie(scores[n], free[ranked - 1]))
        out.anchor_at_tie = true;
  return out;
}

struct Report {
  int64_t rows = 0, rows_differ = 0, heads = 0, heads_differ = 0;
  double max_row_gap = 0.0;    // largest relative score gap among tolerated swaps
  double max_gamma_gap = 0.0;  // largest |prefix/total - gamma| among tolerated budget flips
};

// The index rows first_qblock .. Nkb - 1 of every sequence (docs/index_format.md), refs[s]
// the reference of sequence s.
void compare(const std::string& name, const PlanDesc& plan, std::vector<SeqRef>& refs, const Index& cpu,
             const Index& gpu, Report& rep) {
  const pa_problem& p = plan.problem;
  const pa_config& c = plan.config;
  const int hq = p.num_q_heads, g = c.num_proxy_groups, per_group = hq / g;
  const int min_blocks = int(cdiv(c.min_budget_tokens, c.block_size));
  ASSERT_EQ(cpu.order.size(), gpu.order.size());
  for (int s = 0; s < p.num_seqs; ++s) {
    const SeqSpan& span = plan.batch.seqs[s];
    const int nkb = span.num_kblocks();
    SeqRef& ref = refs[s];
    const bool dense = plan.runs_dense(span);
    if (span.num_qblocks == 0) continue;
    // Budgets.
    std::vector<bool> budget_agrees(hq, true);
    for (int h = 0; h < hq; ++h) {
      const size_t at = size_t(s) * hq + h;
      ++rep.heads;
      EXPECT_EQ(gpu.budget[at], budget_blocks(gpu.needed[at], nkb, min_blocks))
          << name << " seq " << s << " head " << h;
      if (gpu.needed[at] == cpu.needed[at]) {
        EXPECT_EQ(gpu.budget[at], cpu.budget[at]) << name << " seq " << s << " head " << h;
        continue;
      }
      budget_agrees[h] = false;
      ++rep.heads_differ;
      ASSERT_FALSE(dense) << name << ": dense sequence " << s << " with differing budgets";
      ASSERT_LE(std::abs(gpu.needed[at] - cpu.needed[at]), 1)
          << name << " seq " << s << " head " << h << ": needed gpu " << gpu.needed[at] << " cpu "
          << cpu.needed[at];
      // The count is the largest over the measured rows (budget_rows, those the call holds
      // whole, the last always): the flip lies at gamma in one of them.
      const int lo = std::min(gpu.needed[at], cpu.needed[at]);
      double gap = INFINITY, at_boundary = 0.0;
      for (int32_t qb : budget_rows(nkb, c.budget_rows)) {
        if (qb != nkb - 1 && int64_t(qb) * c.block_size < span.query_offset()) continue;
        const std::vector<double> mass = ref.sorted_mass(h, qb);
        if (lo > int(mass.size())) continue;
        const double total = std::accumulate(mass.begin(), mass.end(), 0.0);
        const double prefix = std::accumulate(mass.begin(), mass.begin() + lo, 0.0);
        if (std::fabs(prefix / total - double(c.gamma)) < gap)
          gap = std::fabs(prefix / total - double(c.gamma)), at_boundary = prefix / total;
      }
      if (c.budget_rule == PA_BUDGET_RULE_RANKED) {
        // Or the flip lies at the ranked rule's target along the group's anchor-free ranking
        // of the last row (fp64 scores and masses).
        const int m = nkb - 1;
        const std::vector<double> a = ref.scores(h / per_group, m), mass = ref.mass(h);
        const std::vector<int> ranking = anchor_free_ranking(a.data(), m, c);
        const double share = ranked_share(c);
        const double total = std::accumulate(mass.begin(), mass.end(), 0.0);
        double prefix = 0.0;
        for (int i = 0; i < lo && i < int(ranking.size()); ++i) prefix += mass[ranking[i]];
        if (std::fabs(prefix / total - share) < gap) gap = std::fabs(prefix / total - share), at_boundary = prefix / total;
        // Or two blocks the count walks past hold near-tied scores (kTieRelative): the GPU's
        // ranking may swap them, and the count follows the swapped masses.
        for (int i = forced_blocks(m, c); i + 1 < int(ranking.size()) && i <= lo; ++i)
          if (near_tie(a[ranking[i]], a[ranking[i + 1]])) gap = 0.0;
      }
      rep.max_gamma_gap = std::max(rep.max_gamma_gap, gap);
      EXPECT_LE(gap, kGammaSlack) << name << " seq " << s << " head " << h << ": needed gpu "
                                  << gpu.needed[at] << " cpu " << cpu.needed[at]
                                  << ", prefix/total at the boundary " << at_boundary;
    }
    // Anchors: equal, or near-ties in mass; a group with differing anchors skips its rows.
    const int ta = int(gpu.anchors.size() / (size_t(p.num_seqs) * hq));
    std::vector<bool> anchors_agree(g, true);
    for (int h = 0; h < hq; ++h) {
      const int32_t* ga = &gpu.anchors[(size_t(s) * hq + h) * ta];
      const int32_t* ca = &cpu.anchors[(size_t(s) * hq + h) * ta];
      if (std::equal(ga, ga + ta, ca)) continue;
      anchors_agree[h / per_group] = false;
      const std::vector<double> mass = ref.mass(h);
      for (int a = 0; a < ta; ++a) {
        if (ga[a] == ca[a]) continue;
        ASSERT_TRUE(ga[a] >= 0 && ca[a] >= 0) << name << " seq " << s << " head " << h << " anchor " << a;
        EXPECT_TRUE(near_tie(mass[ga[a]], mass[ca[a]]))
            << name << " seq " << s << " head " << h << " anchor " << a << ": gpu block " << ga[a]
            << " mass " << mass[ga[a]] << ", cpu block " << ca[a] << " mass " << mass[ca[a]];
      }
    }
    // Rows.
    std::vector<int32_t> forced;
    for (int j = 0; j < g; ++j)
      for (int m = span.first_qblock; m < nkb; ++m) {
        const int64_t off = order_row(span, j, m);
        const int32_t* go = &gpu.order[off];
        const int32_t* co = &cpu.order[off];
        // A permutation of 0..m, forced blocks first.
        std::vector<int> perm(go, go + m + 1);
        std::sort(perm.begin(), perm.end());
        for (int n = 0; n <= m; ++n) ASSERT_EQ(perm[n], n) << name << " seq " << s << " row " << m;
        row_forced(m, c.force_sink, c.force_local,
                   gpu.anchors.data() + (size_t(s) * hq + size_t(j) * per_group) * ta, per_group * ta,
                   forced);
        for (size_t e = 0; e < forced.size(); ++e)
          ASSERT_EQ(go[e], forced[e]) << name << " seq " << s << " group " << j << " row " << m;
        std::set<int> lengths;
        bool count_tie = false;  // on top: a count off by an anchor ranked at a near-tie
        std::vector<double> a;   // the row's fp64 scores, when needed
        if (!dense && c.anchor_mode == PA_ANCHORS_ON_TOP) a = ref.scores(j, m);
        for (int h = j * per_group; h < (j + 1) * per_group; ++h) {
          const int64_t at = count_row(span, m) * hq + h;
          const size_t head = size_t(s) * hq + h;
          if (dense) {
            ASSERT_EQ(gpu.count[at], m + 1) << name << " seq " << s << " head " << h << " row " << m;
          } else if (c.anchor_mode != PA_ANCHORS_ON_TOP) {
            ASSERT_EQ(gpu.count[at], row_keep(c.budget_mode, gpu.budget[head], gpu.needed[head], nkb, min_blocks,
                                              m, int32_t(forced.size())))
                << name << " seq " << s << " head " << h << " row " << m;
            if (budget_agrees[h] && anchors_agree[j]) ASSERT_EQ(gpu.count[at], cpu.count[at]) << name;
          } else {
            const OnTopCount want = on_top_count(c, a, m, forced, gpu.budget[head],
                                                 gpu.needed[head], nkb, min_blocks);
            ASSERT_GE(gpu.count[at], want.lo) << name << " seq " << s << " head " << h << " row " << m;
            ASSERT_LE(gpu.count[at], want.hi) << name << " seq " << s << " head " << h << " row " << m;
            const bool cpu_differs = budget_agrees[h] && anchors_agree[j] && gpu.count[at] != cpu.count[at];
            if (gpu.count[at] != want.exact || cpu_differs) {
              EXPECT_TRUE(want.anchor_at_tie) << name << " seq " << s << " head " << h << " row " << m
                                              << ": count gpu " << gpu.count[at] << " cpu " << cpu.count[at]
                                              << " reference " << want.exact;
              count_tie = true;
            }
          }
          lengths.insert(gpu.count[at]);
        }
        ++rep.rows;
        if (count_tie) {
          ++rep.rows_differ;
          continue;
        }
        if (!anchors_agree[j]) {
          ++rep.rows_differ;
          continue;
        }
        bool differs = false;
        for (int len_c : lengths) {
          std::set<int> gs(go, go + len_c), cs(co, co + len_c);
          if (gs == cs) continue;
          differs = true;
          if (a.empty()) a = ref.scores(j, m);
          const double boundary = a[co[len_c - 1]];
          std::vector<int> diff;
          std::set_symmetric_difference(gs.begin(), gs.end(), cs.begin(), cs.end(), std::back_inserter(diff));
          for (int n : diff) {
            const double gap = std::fabs(a[n] - boundary) / std::max(std::max(a[n], boundary), 1e-300);
            if (std::fabs(a[n] - boundary) > kTieAbsolute) rep.max_row_gap = std::max(rep.max_row_gap, gap);
            EXPECT_TRUE(near_tie(a[n], boundary))
                << name << " seq " << s << " group " << j << " row " << m << " keep " << len_c
                << ": block " << n << " score " << a[n] << " vs boundary " << boundary;
          }
        }
        if (differs) ++rep.rows_differ;
      }
  }
}

// Prints the case's "[compare]" line and checks how many rows may differ at all.
void report(const std::string& name, const Report& rep) {
  std::printf("[compare] %-40s rows %lld differ %lld (max score gap %.2e) heads %lld differ %lld "
              "(max gamma gap %.2e)\n",
              name.c_str(), (long long)rep.rows, (long long)rep.rows_differ, rep.max_row_gap,
              (long long)rep.heads, (long long)rep.heads_differ, rep.max_gamma_gap);
  EXPECT_LE(rep.rows_differ, std::max<int64_t>(1, int64_t(kMaxRowFraction * rep.rows))) << name;
}

struct Case {
  std::string name;
  std::vector<int32_t> lengths;
  int hq = 8, hkv = 2, d = 128;
  pa_dtype dtype = PA_DTYPE_BFLOAT16;
  pa_config config{};
  bool structured = true;
  uint64_t seed = 1;
  int head_pad = 0;
  pa_tuning tuning = suite_tuning();  // of the GPU run
};

pa_config base_config(int d) {
  pa_config c = pa_config_default(d);
  c.min_budget_tokens = 256;  // small floors so budgets, not the floor, decide most rows
  c.dense_below = 0;
  return c;
}

// Runs one case on both backends and checks it; returns the report.
Report run_case(const Case& k) {
  Batch batch(k.lengths, k.hq, k.hkv, k.d, k.dtype);
  const pa_problem& p = batch.problem();
  const Inputs in = make_inputs(p, k.structured, k.seed, k.head_pad);
  const Index cpu = estimate_cpu(p, k.config, in);
  Index gpu;
  const pa_status st = estimate_gpu(p, k.config, k.tuning, in, &gpu);
  Report rep;
  EXPECT_EQ(st, PA_STATUS_SUCCESS) << k.name << ": " << pa_last_error();
  if (st != PA_STATUS_SUCCESS) return rep;
  const PlanDesc plan = describe_plan(p, k.config);
  std::vector<SeqRef> refs;
  for (int s = 0; s < p.num_seqs; ++s)
    refs.push_back(SeqRef{&p, &plan.config, &in, p.cu_seqlens[s], p.cu_seqlens[s + 1] - p.cu_seqlens[s]});
  compare(k.name, plan, refs, cpu, gpu, rep);
  report(k.name, rep);
  return rep;
}

// ---- cases ---------------------------------------------------------------------------------
// The tunings every case of EstimateGpu runs under (scripts/gpu-check once ran the whole
// program again under an environment variable for the second).
const NamedTuning kTunings[] = {
    {"default", pa_tuning_default()},
    tuned("two_pass", [](pa_tuning& t) { t.est_block_logits = 0; }),
};

class EstimateGpu : public TunedTest {};
INSTANTIATE_TEST_SUITE_P(Tunings, EstimateGpu, ::testing::ValuesIn(kTunings), tuning_name);

TEST_P(EstimateGpu, SanitizeSmallVarlen) {
  PA_REQUIRE_GPU();
  Case k;
  k.name = "sanitize";
  k.lengths = {300, 1, 129, 64, 77};
  k.hq = 4, k.hkv = 2, k.d = 64;
  k.config = base_config(64);
  k.config.block_size = 64;
  k.config.num_proxy_groups = 2;
  k.config.dense_below = 70;  // 1 and 64 run dense
  k.config.min_budget_tokens = 64;
  k.config.anchor_blocks = 2;  // the anchor bitmap and counters under racecheck too
  run_case(k);
}

TEST_P(EstimateGpu, SingleSequenceLengths) {
  PA_REQUIRE_GPU();
  uint64_t seed = 11;
  for (int n : {1, 100, 127, 128, 129, 1000, 4096 + 77, 16384}) {
    for (bool structured : {true, false}) {
      Case k;
      k.name = "N=" + std::to_string(n) + (structured ? " structured" : " random");
      k.lengths = {n};
      k.config = base_config(128);
      k.structured = structured;
      k.seed = seed++;
      run_case(k);
    }
  }
}

// The paper's budget rule (PA_BUDGET_RULE_PAPER; the other cases run the ranked default).
TEST_P(EstimateGpu, PaperBudgetRule) {
  PA_REQUIRE_GPU();
  uint64_t seed = 31;
  for (int n : {4096 + 77, 16384}) {
    Case k;
    k.name = "N=" + std::to_string(n) + " paper rule";
    k.lengths = {n};
    k.config = base_config(128);
    k.config.budget_rule = PA_BUDGET_RULE_PAPER;
    k.seed = seed++;
    run_case(k);
  }
}

TEST_P(EstimateGpu, VarlenMixedDefaults) {
  PA_REQUIRE_GPU();
  Case k;
  k.name = "varlen defaults fp16 d64 g=Hkv";
  k.lengths = {5000, 300, 1, 4096 + 77, 2048, 2047, 9000, 0, 129};
  k.hq = 8, k.hkv = 4, k.d = 64;
  k.dtype = PA_DTYPE_FLOAT16;
  k.config = pa_config_default(64);  // dense below 2048 tokens, Kmin = 16 blocks
  k.config.num_proxy_groups = 4;
  k.seed = 21;
  run_case(k);
}

// A budget floor near INT32_MAX keeps every block, as on the CPU (tests/cpu/test_errors.cpp):
// the floor in blocks is computed in 64 bits, not wrapped to a negative int.
TEST_P(EstimateGpu, LargestBudgetFloor) {
  PA_REQUIRE_GPU();
  for (int32_t floor : {std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::max() - 62}) {
    Case k;
    k.name = "min_budget_tokens=" + std::to_string(floor);
    k.lengths = {3000, 700};
    k.config = base_config(128);
    k.config.min_budget_tokens = floor;
    k.seed = 31;
    run_case(k);
  }
}

// Every setting at least once, in varied combinations.
TEST_P(EstimateGpu, ConfigMatrix) {
  PA_REQUIRE_GPU();
  const int strides[] = {1, 4, 8, 2, 16};
  int i = 0;
  for (int d : {64, 128})
    for (pa_dtype dtype : {PA_DTYPE_BFLOAT16, PA_DTYPE_FLOAT16})
      for (int g : {1, 4})
        for (int block : {64, 128}) {
          Case k;
          k.hq = 8, k.hkv = 4, k.d = d, k.dtype = dtype;
          k.config = base_config(d);
          k.config.block_size = block;
          k.config.stride = strides[i % 5];
          k.config.num_proxy_groups = g;
          k.config.budget_mode = (i % 2) ? PA_BUDGET_PROPORTIONAL : PA_BUDGET_ABSOLUTE;
          k.config.force_sink = (i / 2) % 2;
          k.config.force_local = (i / 4) % 2 ? 0 : 1;
          k.config.gamma = (i % 3 == 0) ? 0.9f : 0.95f;
          const int anchor_choices[] = {0, 1, 2, 8};
          k.config.anchor_blocks = anchor_choices[(i / 3) % 4];
          k.config.anchor_mode = (i / 5) % 2 ? PA_ANCHORS_IN_BUDGET : PA_ANCHORS_ON_TOP;
          k.lengths = {2000 + 173 * i, 700 + 31 * i};
          k.structured = i % 3 != 1;
          k.seed = 100 + i;
          k.name = "matrix#" + std::to_string(i) + " d" + std::to_string(d) +
                   (dtype == PA_DTYPE_BFLOAT16 ? " bf16" : " fp16") + " g" + std::to_string(g) +
                   " b" + std::to_string(block) + " s" + std::to_string(k.config.stride) + " T" +
                   std::to_string(k.config.anchor_blocks) +
                   (k.config.anchor_mode == PA_ANCHORS_IN_BUDGET ? " in-budget" : " on-top");
          run_case(k);
          ++i;
        }
}

// Every sampled-rows-per-block value b/s in 4..128 (the kernels' row and segment layouts).
TEST_P(EstimateGpu, SampledRowsPerBlock) {
  PA_REQUIRE_GPU();
  const int settings[][2] = {{64, 16}, {128, 16}, {64, 8}, {64, 2}, {64, 1}, {128, 2}, {128, 1}};
  int i = 0;
  for (const auto& bs : settings) {
    Case k;
    k.config = base_config(128);
    k.config.block_size = bs[0];
    k.config.stride = bs[1];
    k.lengths = {3000 + 61 * i};
    k.structured = i % 2 == 0;
    k.seed = 300 + i;
    k.name = "b" + std::to_string(bs[0]) + " s" + std::to_string(bs[1]);
    run_case(k);
    ++i;
  }
}

// Long rows at stride 1: many key chunks per row tile, two CTAs per query block (b/s = 128).
TEST_P(EstimateGpu, LongRowsManyChunks) {
  PA_REQUIRE_GPU();
  Case k;
  k.name = "16K stride 1 g2";
  k.lengths = {16384};
  k.hq = 4, k.hkv = 2, k.d = 64;
  k.config = base_config(64);
  k.config.stride = 1;
  k.config.num_proxy_groups = 2;
  k.seed = 700;
  run_case(k);
}

TEST_P(EstimateGpu, Llama16K) {
  PA_REQUIRE_GPU();
  for (int g : {1, 8}) {
    Case k;
    k.name = "16K 32/8 heads g" + std::to_string(g) + " T2";
    k.lengths = {16384};
    k.hq = 32, k.hkv = 8, k.d = 128;
    k.config = pa_config_default(128);
    k.config.num_proxy_groups = g;
    k.config.anchor_blocks = 2;
    k.seed = 400 + g;
    run_case(k);
  }
}

// Anchor modes (issue #28) against the CPU index: many anchors per group (T 8, 8 Q heads per
// group: up to 64 per row), rows of the first two sort classes (32K tokens: 512 blocks of 64,
// more than one bitmap word of ranks), small and large budgets, both budget modes; on top, a
// row's anchor-free sort and its popcounts.
TEST_P(EstimateGpu, AnchorModes) {
  PA_REQUIRE_GPU();
  int i = 0;
  for (pa_anchor_mode am : {PA_ANCHORS_ON_TOP, PA_ANCHORS_IN_BUDGET})
    for (pa_budget_mode bm : {PA_BUDGET_ABSOLUTE, PA_BUDGET_PROPORTIONAL})
      for (int min_budget : {128, 4096}) {
        Case k;
        k.lengths = {32768, 3000};
        k.hq = 8, k.hkv = 2, k.d = 64;
        k.config = base_config(64);
        k.config.block_size = 64;
        k.config.anchor_blocks = 8;
        k.config.anchor_mode = am;
        k.config.budget_mode = bm;
        k.config.min_budget_tokens = min_budget;
        k.config.force_sink = i % 3 != 2;
        k.seed = 900 + i;
        k.name = std::string(am == PA_ANCHORS_ON_TOP ? "on-top" : "in-budget") +
                 (bm == PA_BUDGET_PROPORTIONAL ? " proportional" : " absolute") + " floor " +
                 std::to_string(min_budget) + (k.config.force_sink ? "" : " no sink");
        run_case(k);
        ++i;
      }
}

// budget_rows = R > 1 (issue #28): count_i the largest over R query blocks of the prompt,
// varlen (a dense sequence and one shorter than R blocks among them), both anchor modes,
// both budget modes, a small floor so that the counts decide the budgets.
TEST_P(EstimateGpu, BudgetRows) {
  PA_REQUIRE_GPU();
  int i = 0;
  for (int rows : {2, 4, 16})
    for (pa_anchor_mode am : {PA_ANCHORS_ON_TOP, PA_ANCHORS_IN_BUDGET}) {
      Case k;
      k.lengths = {9000, 2600, 300, 1000 + 77 * i};
      k.hq = 8, k.hkv = 2, k.d = i % 2 ? 64 : 128;
      k.config = base_config(k.d);
      k.config.block_size = i % 3 == 2 ? 64 : 128;
      k.config.budget_rows = rows;
      k.config.budget_rule = PA_BUDGET_RULE_PAPER;  // the rows' counts, not the ranked one, decide
      k.config.anchor_mode = am;
      k.config.anchor_blocks = 2;
      k.config.num_proxy_groups = 1 + i % 2;
      k.config.budget_mode = i % 2 ? PA_BUDGET_PROPORTIONAL : PA_BUDGET_ABSOLUTE;
      k.config.min_budget_tokens = k.config.block_size;
      k.config.dense_below = 512;
      k.structured = i % 3 != 1;
      k.seed = 1200 + i;
      k.name = "R" + std::to_string(rows) + (am == PA_ANCHORS_ON_TOP ? " on-top" : " in-budget") + " d" +
               std::to_string(k.d) + " b" + std::to_string(k.config.block_size);
      run_case(k);
      if (k.structured) {  // the earlier blocks decide some head's count (else R went untested)
        const Batch batch(k.lengths, k.hq, k.hkv, k.d, k.dtype);
        const Inputs in = make_inputs(batch.problem(), true, k.seed);
        pa_config last_only = k.config;
        last_only.budget_rows = 1;
        EXPECT_NE(estimate_cpu(batch.problem(), k.config, in).needed,
                  estimate_cpu(batch.problem(), last_only, in).needed) << k.name;
      }
      ++i;
    }
}

// Non-contiguous views: padded heads keep 16-byte alignment (vector loads), odd padding
// does not (element loads).
TEST_P(EstimateGpu, StridedViews) {
  PA_REQUIRE_GPU();
  for (int pad : {8, 3}) {
    Case k;
    k.name = "head padding " + std::to_string(pad);
    k.lengths = {2500, 900};
    k.hq = 4, k.hkv = 4, k.d = 64;  // no GQA
    k.config = base_config(64);
    k.head_pad = pad;
    k.seed = 500 + pad;
    run_case(k);
  }
}

// Same inputs, different poison: bit-identical indexes (no race, nothing read unwritten).
TEST_P(EstimateGpu, Deterministic) {
  PA_REQUIRE_GPU();
  Batch batch({3000, 5000}, 8, 2, 128, PA_DTYPE_BFLOAT16);
  pa_config c = base_config(128);
  c.anchor_blocks = 4;
  const Inputs in = make_inputs(batch.problem(), true, 600);
  Index a, b;
  ASSERT_EQ(estimate_gpu(batch.problem(), c, suite_tuning(), in, &a, 0xff), PA_STATUS_SUCCESS) << pa_last_error();
  ASSERT_EQ(estimate_gpu(batch.problem(), c, suite_tuning(), in, &b, 0x00), PA_STATUS_SUCCESS) << pa_last_error();
  EXPECT_EQ(a.order, b.order);
  EXPECT_EQ(a.count, b.count);
  EXPECT_EQ(a.budget, b.budget);
  EXPECT_EQ(a.needed, b.needed);
  EXPECT_EQ(a.anchors, b.anchors);
}

// Block logits and the two passes give the same A (block_max_from_logits_kernel evaluates
// pass 2's expression on the same numbers), so the same index, bit for bit.
TEST(EstimateGpuTuning, BlockLogitsMatchTwoPasses) {
  PA_REQUIRE_GPU();
  for (const int32_t block : {128, 64}) {  // b/s = 32 and 16 at the default s = 4
    Batch batch({3000, 9000}, 8, 2, 64, PA_DTYPE_BFLOAT16);
    pa_config c = base_config(64);
    c.block_size = block;
    c.num_proxy_groups = 2;
    const Inputs in = make_inputs(batch.problem(), true, 700 + block);
    pa_tuning off = pa_tuning_default();
    off.est_block_logits = 0;
    Index logits, two_pass;
    ASSERT_EQ(estimate_gpu(batch.problem(), c, pa_tuning_default(), in, &logits), PA_STATUS_SUCCESS)
        << pa_last_error();
    ASSERT_EQ(estimate_gpu(batch.problem(), c, off, in, &two_pass), PA_STATUS_SUCCESS) << pa_last_error();
    EXPECT_EQ(logits.order, two_pass.order) << "b = " << block;
    EXPECT_EQ(logits.count, two_pass.count) << "b = " << block;
    EXPECT_EQ(logits.budget, two_pass.budget) << "b = " << block;
  }
}

// The workspace's block logits (proxy_scores.cu): one float per sampled row and entry of A
// at b/s = 32 and 16, none at other strides, none past 1 GiB, none with
// tuning.est_block_logits = 0. Host only: runs without a GPU too.
TEST(EstimateGpuTuning, WorkspaceHoldsBlockLogits) {
  auto workspace = [](int32_t tokens, int32_t hkv, int32_t stride, int32_t groups, int32_t block_logits) {
    Batch batch({tokens}, 2 * hkv, hkv, 64, PA_DTYPE_BFLOAT16);
    pa_config c = pa_config_default(64);
    c.stride = stride;
    c.num_proxy_groups = groups;
    pa_tuning t = pa_tuning_default();
    t.est_block_logits = block_logits;
    size_t n = 0;
    check(pa_workspace_bytes_tuned(&batch.problem(), &c, &t, &n));
    return n;
  };
  auto bytes = [&](int32_t tokens, int32_t hkv, int32_t stride, int32_t groups) {
    return workspace(tokens, hkv, stride, groups, 1);
  };
  auto two_pass = [&](int32_t tokens, int32_t hkv, int32_t stride, int32_t groups) {
    return workspace(tokens, hkv, stride, groups, 0);
  };
  constexpr int64_t kBlocks = 1024;  // 128K tokens at b = 128
  const int64_t entries = kBlocks * (kBlocks + 1) / 2;
  const size_t at_128k = bytes(131072, 2, 4, 1), without = two_pass(131072, 2, 4, 1);
  EXPECT_EQ(at_128k - without, size_t(entries * 32 * sizeof(float)));  // 64 MiB and a bit
  EXPECT_EQ(bytes(131072, 2, 4, 2) - two_pass(131072, 2, 4, 2), size_t(2 * entries * 32 * sizeof(float)));
  EXPECT_EQ(bytes(131072, 2, 8, 1) - two_pass(131072, 2, 8, 1), size_t(entries * 16 * sizeof(float)));
  EXPECT_EQ(bytes(131072, 2, 2, 1), two_pass(131072, 2, 2, 1));  // b/s = 64: pass 2
  EXPECT_EQ(bytes(262144, 8, 4, 8), two_pass(262144, 8, 4, 8));  // 2 GiB of logits: pass 2
}

// The key layout of the GPU estimation (BatchLayout::kblock_begin): every key block of a
// chunk, the rows' count of a short chunk, nothing of a sequence without queries; key tables
// in the plan only when some chunk starts after block 0. Host only: runs without a GPU too.
TEST(EstimateGpuLayout, KeyBlocksOfChunks) {
  const int32_t cu_q[5] = {0, 1700, 1701, 2601, 2601}, cu_k[5] = {0, 3000, 4500, 5400, 6000};
  pa_problem p{};
  p.num_seqs = 4, p.cu_seqlens = cu_q, p.total_tokens = cu_q[4];
  p.num_q_heads = 8, p.num_kv_heads = 2, p.head_dim = 128, p.dtype = PA_DTYPE_BFLOAT16;
  p.cu_seqlens_k = cu_k, p.total_kv_tokens = cu_k[4];
  const PlanDesc chunked = describe_plan(p, base_config(128));
  // a chunk from position 1300 (rows 10..23 of 24 key blocks), a decode step (1 row), a whole
  // prompt of 900 (8 blocks), a sequence of 600 keys without queries
  EXPECT_EQ(chunked.batch.kblock_begin, (std::vector<int64_t>{0, 24, 25, 33}));
  EXPECT_EQ(chunked.batch.total_kblocks, 33);
  EXPECT_EQ(chunked.batch.total_qblocks, 14 + 1 + 8);
  ASSERT_TRUE(separate_keys(chunked.batch));
  const BatchTables tables = batch_tables(chunked.batch);
  EXPECT_EQ(tables.kblock_begin, chunked.batch.kblock_begin);
  ASSERT_EQ(tables.kblock_seq.size(), 33u);
  EXPECT_EQ(tables.kblock_seq[23], 0);
  EXPECT_EQ(tables.kblock_seq[24], 1);
  EXPECT_EQ(tables.kblock_seq[32], 2);
  EXPECT_GT(chunked.storage.kblock_begin_offset, chunked.storage.kblock_seq_offset);

  const Batch whole({3000, 900}, 8, 2, 128, PA_DTYPE_BFLOAT16);
  const PlanDesc plan = describe_plan(whole.problem(), base_config(128));
  EXPECT_FALSE(separate_keys(plan.batch));
  EXPECT_EQ(plan.storage.kblock_seq_offset, plan.storage.qblock_seq_offset);
  std::vector<uint8_t> storage(plan.storage.total_bytes);
  const IndexArrays index = bind_storage(storage.data(), plan.storage);
  EXPECT_EQ(index.kblock_seq, index.qblock_seq);
  EXPECT_EQ(index.kblock_begin, nullptr);
  EXPECT_TRUE(batch_tables(plan.batch).kblock_seq.empty());
}

TEST(EstimateGpuRefusal, Float32IsUnsupported) {
  PA_REQUIRE_GPU();
  Batch batch({300}, 4, 2, 64, PA_DTYPE_FLOAT32);
  const pa_problem& p = batch.problem();
  const pa_config c = base_config(64);
  size_t plan_bytes = 0;
  check(pa_plan_bytes(&p, &c, &plan_bytes));
  DeviceBuffer storage(plan_bytes);
  pa_plan* plan = nullptr;
  // Refused when the plan is made in device memory (pa_estimate could not run it either).
  EXPECT_EQ(pa_plan_create(&p, &c, storage.get(), plan_bytes, &plan), PA_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(pa_last_error()).find("float32"), std::string::npos) << pa_last_error();
  EXPECT_EQ(plan, nullptr);
}

// ---- chunked prefill (ALGORITHM.md, "Chunked prefill and queries at an offset") -----------
// Chunked problems on the GPU through the internal entry point cuda::estimate: pa_plan_create
// refuses device plans of chunked problems until the attention kernels take them. Each call
// of a case runs on both backends with the same inputs (keys packed by cu_seqlens_k, or in a
// paged cache whose pages are handed out in a shuffled order and whose rows not yet appended
// are NaN; with a state, one per backend, both starting as the same poison) and checks:
//   - the index as compare() checks whole prompts, on the rows first_qblock .. Nkb - 1 (the
//     fp64 reference reads the prompts; a chunk's first row from its first known query);
//   - the state's bytes equal the CPU's after every call (the pooled proxies are bit-identical
//     by construction; a difference is named by page, slot, plane, group and position);
//   - one sequence: each sparse chunk's device index equals, bit for bit, the device index of
//     the prompt cut at the chunk's end estimated whole (budgets, needed, anchors; every row
//     from the chunk's first when a state holds its earlier queries or it starts on a block
//     boundary, else from the next).

// One sequence of a call: its queries [begin, end) of its prompt (keys [0, end)).
struct Span {
  int begin, end;
};

struct ChunkCase {
  std::string name;
  std::vector<int32_t> prompts;          // prompt lengths; no call goes past them
  std::vector<std::vector<Span>> calls;  // in order, one span per sequence each
  int hq = 8, hkv = 2, d = 128;
  pa_config config{};
  int page_size = 0;   // 0: keys packed by cu_seqlens_k
  bool state = false;  // an estimation state beside the paged cache
  uint64_t seed = 1;
};

// Calls of `chunk` queries each over one prompt of n tokens.
std::vector<std::vector<Span>> chunks_of(int n, int chunk) {
  std::vector<std::vector<Span>> calls;
  for (int b = 0; b < n; b += chunk) calls.push_back({Span{b, std::min(n, b + chunk)}});
  return calls;
}

constexpr uint16_t kNaN16 = 0x7fc0;  // bf16 NaN: cache rows that nothing was appended to

// The prompts' keys in a paged cache [num_pages * page_size, Hkv, d], appended call by call.
struct PagedKeys {
  int page_size = 0, num_pages = 0, max_pages = 0;
  std::vector<uint16_t> k;
  std::vector<int32_t> table;  // [num_seqs, max_pages]
  int64_t row(int seq, int64_t pos) const {
    return int64_t(table[size_t(seq) * max_pages + pos / page_size]) * page_size + pos % page_size;
  }
};

// Pages handed to the sequences in a shuffled order, three pages that no sequence uses.
PagedKeys make_paged_keys(const ChunkCase& cc) {
  PagedKeys pk;
  pk.page_size = cc.page_size;
  int used = 0;
  for (int32_t n : cc.prompts) {
    pk.max_pages = std::max(pk.max_pages, int(cdiv(n, cc.page_size)));
    used += int(cdiv(n, cc.page_size));
  }
  pk.max_pages = std::max(pk.max_pages, 1);
  pk.num_pages = used + 3;
  std::vector<int32_t> pages(pk.num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937_64(cc.seed));
  pk.table.assign(cc.prompts.size() * pk.max_pages, 0);
  int next = 0;
  for (size_t s = 0; s < cc.prompts.size(); ++s)
    for (int64_t i = 0; i < cdiv(cc.prompts[s], cc.page_size); ++i) pk.table[s * pk.max_pages + i] = pages[next++];
  pk.k.assign(size_t(pk.num_pages) * cc.page_size * cc.hkv * cc.d, kNaN16);
  return pk;
}

// One call's lengths and host tensors: Q of its queries, K packed by cu_k (packed keys only;
// paged keys are appended to the cache instead).
struct Call {
  std::vector<int32_t> cu_q{0}, cu_k{0};
  std::vector<uint16_t> q, k;
};

Call make_call(const ChunkCase& cc, const Inputs& prompts, const std::vector<int32_t>& starts,
               const std::vector<Span>& spans, PagedKeys* paged) {
  Call call;
  const size_t qrow = size_t(cc.hq) * cc.d, krow = size_t(cc.hkv) * cc.d;
  for (size_t s = 0; s < spans.size(); ++s) {
    const Span sp = spans[s];
    call.cu_q.push_back(call.cu_q.back() + sp.end - sp.begin);
    call.cu_k.push_back(call.cu_k.back() + sp.end);
    const uint16_t* q0 = prompts.q.data() + (starts[s] + sp.begin) * qrow;
    call.q.insert(call.q.end(), q0, q0 + size_t(sp.end - sp.begin) * qrow);
    const uint16_t* k0 = prompts.k.data() + starts[s] * krow;
    if (paged == nullptr) {
      call.k.insert(call.k.end(), k0, k0 + size_t(sp.end) * krow);
      continue;
    }
    for (int t = sp.begin; t < sp.end; ++t)  // the engine's append of the call's keys
      std::copy(k0 + t * krow, k0 + (t + 1) * krow, paged->k.data() + paged->row(int(s), t) * krow);
  }
  return call;
}

pa_problem call_problem(const ChunkCase& cc, const Call& call, const PagedKeys* paged) {
  pa_problem p{};
  p.num_seqs = int32_t(call.cu_q.size() - 1);
  p.cu_seqlens = call.cu_q.data();
  p.total_tokens = call.cu_q.back();
  p.num_q_heads = cc.hq, p.num_kv_heads = cc.hkv, p.head_dim = cc.d, p.dtype = PA_DTYPE_BFLOAT16;
  p.cu_seqlens_k = call.cu_k.data();
  p.total_kv_tokens = call.cu_k.back();
  if (paged != nullptr)
    p.page_size = paged->page_size, p.num_pages = paged->num_pages, p.max_pages_per_seq = paged->max_pages;
  return p;
}

// The CPU backend's index of a call through the C API (host plan, pa_estimate_kv).
Index estimate_cpu_kv(const pa_problem& p, const pa_config& c, const pa_tensor& q, const pa_kv_cache& kv) {
  size_t plan_bytes = 0, work_bytes = 0;
  check(pa_plan_bytes(&p, &c, &plan_bytes));
  check(pa_workspace_bytes(&p, &c, &work_bytes));
  std::vector<uint8_t> storage(plan_bytes), work(work_bytes);
  pa_plan* plan = nullptr;
  check(pa_plan_create(&p, &c, storage.data(), plan_bytes, &plan));
  EXPECT_EQ(pa_estimate_kv(plan, &q, &kv, work.data(), work_bytes, nullptr), PA_STATUS_SUCCESS) << pa_last_error();
  Index x = read_index(plan, p);
  pa_plan_free(plan);
  return x;
}

template <typename T>
void upload_table(void* device, const std::vector<T>& host) {
  if (!host.empty())
    EXPECT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}

std::vector<int32_t> download_ints(const int32_t* device, size_t n) {
  std::vector<int32_t> host(n);
  if (n > 0) EXPECT_EQ(cudaMemcpy(host.data(), device, n * sizeof(int32_t), cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

// The device index of plan's problem through cuda::estimate on device tensors: plan storage
// and workspace poisoned (0xff), the batch tables uploaded as pa_plan_create does, the index
// checked with check_index (pa_plan_check's invariants).
Index estimate_gpu_internal(PlanDesc plan, const pa_tuning& tuning, const pa_tensor& q, const pa_kv_cache& kv) {
  plan.tuning = tuning;
  DeviceBuffer storage(plan.storage.total_bytes), workspace(cuda::estimate_workspace_bytes(plan));
  EXPECT_EQ(storage.poison(), cudaSuccess);
  EXPECT_EQ(workspace.poison(), cudaSuccess);
  plan.index = bind_storage(storage.get(), plan.storage);
  const BatchTables tables = batch_tables(plan.batch);
  upload_table(plan.index.seqs, tables.seqs);
  upload_table(plan.index.qblock_seq, tables.qblock_seq);
  upload_table(plan.index.kblock_seq, tables.kblock_seq);
  upload_table(plan.index.kblock_begin, tables.kblock_begin);
  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  EXPECT_EQ(cuda::estimate(plan, q, kv, workspace.get(), stream), PA_STATUS_SUCCESS) << pa_last_error();
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaStreamDestroy(stream);
  const pa_problem& p = plan.problem;
  const size_t heads = size_t(p.num_seqs) * p.num_q_heads;
  Index x;
  x.order = download_ints(plan.index.order, size_t(plan.batch.order_entries));
  x.count = download_ints(plan.index.count, size_t(plan.batch.total_qblocks) * p.num_q_heads);
  x.budget = download_ints(plan.index.budget, heads);
  x.needed = download_ints(plan.index.needed, heads);
  x.anchors = download_ints(plan.index.anchors, heads * plan.config.anchor_blocks);
  const HostIndex host{&plan.batch, p.num_q_heads, plan.groups(), x.order.data(), x.count.data(),
                       x.anchors.data(), plan.config.anchor_blocks};
  EXPECT_EQ(check_index(host, plan.config.force_sink, plan.config.force_local), PA_STATUS_SUCCESS) << pa_last_error();
  return x;
}

// Empty when the two states are equal, else where they first differ and how many bytes do.
std::string state_difference(const std::vector<uint8_t>& cpu, const std::vector<uint8_t>& gpu,
                             const ChunkCase& cc, const PagedKeys& paged) {
  if (cpu.size() != gpu.size()) return "sizes differ";
  size_t first = cpu.size(), count = 0;
  for (size_t i = 0; i < cpu.size(); ++i)
    if (cpu[i] != gpu[i]) {
      first = std::min(first, i);
      ++count;
    }
  if (count == 0) return "";
  // [num_pages, page_size / s, 2, g, d] of 2-byte elements
  const size_t element = first / 2, g = size_t(cc.config.num_proxy_groups), per_page = cc.page_size / cc.config.stride;
  const size_t row = element / cc.d, slot = row / g / 2, page = slot / per_page;
  std::string where = "unused page";
  for (size_t s = 0; s < cc.prompts.size(); ++s)
    for (int i = 0; i < paged.max_pages; ++i)
      if (paged.table[s * paged.max_pages + i] == int32_t(page) && i < cdiv(cc.prompts[s], cc.page_size))
        where = "sequence " + std::to_string(s) + " position " +
                std::to_string(int64_t(i) * cc.page_size + int64_t(slot % per_page) * cc.config.stride);
  char bytes[64];
  std::snprintf(bytes, sizeof(bytes), "cpu 0x%02x%02x gpu 0x%02x%02x", cpu[first | 1], cpu[first & ~size_t(1)],
                gpu[first | 1], gpu[first & ~size_t(1)]);
  return std::to_string(count) + " bytes differ; first at page " + std::to_string(page) + " slot " +
         std::to_string(slot % per_page) + " (" + where + ") " + (row / g % 2 ? "query" : "key") + " group " +
         std::to_string(row % g) + " element " + std::to_string(element % cc.d) + ": " + bytes;
}

// The first n tokens of a one-sequence prompt set, as their own inputs.
Inputs first_tokens(const Inputs& in, int n, const ChunkCase& cc) {
  Inputs cut;
  cut.dtype = in.dtype;
  cut.q.assign(in.q.begin(), in.q.begin() + size_t(n) * cc.hq * cc.d);
  cut.k.assign(in.k.begin(), in.k.begin() + size_t(n) * cc.hkv * cc.d);
  cut.tq = in.tq, cut.tk = in.tk;
  cut.tq.data = cut.q.data();
  cut.tk.data = cut.k.data();
  return cut;
}

// A one-sequence call's device index against the device index of its prompt cut at the
// chunk's end and estimated whole: every bit of the rows both know.
void expect_one_shot_rows(const std::string& name, const ChunkCase& cc, const Inputs& prompts,
                          const PlanDesc& plan, const Index& chunk, Span sp) {
  const Batch whole_batch({sp.end}, cc.hq, cc.hkv, cc.d, PA_DTYPE_BFLOAT16);
  const Inputs cut = first_tokens(prompts, sp.end, cc);
  Index whole;
  ASSERT_EQ(estimate_gpu(whole_batch.problem(), cc.config, suite_tuning(), cut, &whole), PA_STATUS_SUCCESS)
      << pa_last_error();
  EXPECT_EQ(chunk.budget, whole.budget) << name;
  EXPECT_EQ(chunk.needed, whole.needed) << name;
  EXPECT_EQ(chunk.anchors, whole.anchors) << name;
  const PlanDesc whole_plan = describe_plan(whole_batch.problem(), cc.config);
  const SeqSpan& cs = plan.batch.seqs[0];
  const SeqSpan& ws = whole_plan.batch.seqs[0];
  const bool first_row_known = cc.state || sp.begin % cc.config.block_size == 0;
  int differ = 0;
  std::string first;
  for (int j = 0; j < plan.groups(); ++j)
    for (int m = cs.first_qblock + (first_row_known ? 0 : 1); m < cs.num_kblocks(); ++m) {
      bool same = std::equal(&chunk.order[order_row(cs, j, m)], &chunk.order[order_row(cs, j, m)] + m + 1,
                             &whole.order[order_row(ws, j, m)]);
      for (int h = j * plan.q_heads_per_group(); h < (j + 1) * plan.q_heads_per_group(); ++h)
        same = same && chunk.count[count_row(cs, m) * cc.hq + h] == whole.count[count_row(ws, m) * cc.hq + h];
      if (same) continue;
      if (differ++ == 0) first = "group " + std::to_string(j) + " row " + std::to_string(m);
    }
  EXPECT_EQ(differ, 0) << name << ": rows differing from the one-shot prefill, the first " << first;
}

void run_chunk_case(const ChunkCase& cc) {
  const pa_config& c = cc.config;
  const Batch prompt_batch(cc.prompts, cc.hq, cc.hkv, cc.d, PA_DTYPE_BFLOAT16);
  const Inputs prompts = make_inputs(prompt_batch.problem(), true, cc.seed);
  const std::vector<int32_t> starts(prompt_batch.cu_seqlens().begin(), prompt_batch.cu_seqlens().end() - 1);
  PagedKeys paged = cc.page_size > 0 ? make_paged_keys(cc) : PagedKeys{};
  PagedKeys* pages = cc.page_size > 0 ? &paged : nullptr;
  DeviceBuffer table(paged.table.size() * sizeof(int32_t));
  upload_table(table.get(), paged.table);
  std::vector<uint8_t> cpu_state;
  std::unique_ptr<DeviceBuffer> gpu_state;
  pa_proxy_state cpu_st{}, gpu_st{};
  const int pb = c.block_size / c.stride;
  for (size_t ci = 0; ci < cc.calls.size(); ++ci) {
    const std::string name = cc.name + " call " + std::to_string(ci);
    SCOPED_TRACE(name);
    const std::vector<Span>& spans = cc.calls[ci];
    const Call call = make_call(cc, prompts, starts, spans, pages);
    const pa_problem p = call_problem(cc, call, pages);
    if (cc.state && gpu_state == nullptr) {  // both states start as the same poison
      size_t bytes = 0;
      check(pa_proxy_state_bytes(&p, &c, &bytes));
      cpu_state.assign(bytes, 0xff);
      gpu_state = std::make_unique<DeviceBuffer>(bytes);
      ASSERT_EQ(gpu_state->poison(0xff), cudaSuccess);
      check(pa_proxy_state_make(&p, &c, cpu_state.data(), bytes, &cpu_st));
      check(pa_proxy_state_make(&p, &c, gpu_state->get(), bytes, &gpu_st));
    }
    const std::vector<uint16_t>& keys = pages != nullptr ? paged.k : call.k;
    std::vector<uint16_t> q_host = call.q;
    std::vector<uint16_t> k_host = keys;
    const pa_tensor q = pa_tensor_contiguous(q_host.data(), cc.hq, cc.d);
    const pa_tensor k = pa_tensor_contiguous(k_host.data(), cc.hkv, cc.d);
    const pa_kv_cache cpu_kv{k, k, pages != nullptr ? paged.table.data() : nullptr, cc.state ? &cpu_st : nullptr};
    const Index cpu = estimate_cpu_kv(p, c, q, cpu_kv);

    DeviceBuffer dq(q_host.size() * sizeof(uint16_t)), dk(k_host.size() * sizeof(uint16_t));
    ASSERT_EQ(dq.upload(q_host.data()), cudaSuccess);
    ASSERT_EQ(dk.upload(k_host.data()), cudaSuccess);
    pa_tensor gq = q, gk = k;
    gq.data = dq.get();
    gk.data = dk.get();
    const pa_kv_cache gpu_kv{gk, gk, pages != nullptr ? table.as<int32_t>() : nullptr, cc.state ? &gpu_st : nullptr};
    const PlanDesc plan = describe_plan(p, c);
    const Index gpu = estimate_gpu_internal(plan, suite_tuning(), gq, gpu_kv);

    std::vector<SeqRef> refs;
    for (size_t s = 0; s < spans.size(); ++s) {
      const int own = int(cdiv(spans[s].begin, c.stride));
      const int row_begin = cc.state ? plan.batch.seqs[s].first_qblock * pb : own;
      refs.push_back(SeqRef{&p, &plan.config, &prompts, starts[s], spans[s].end, row_begin});
    }
    Report rep;
    compare(name, plan, refs, cpu, gpu, rep);
    report(name, rep);
    if (cc.state) {
      std::vector<uint8_t> device_state(cpu_state.size());
      ASSERT_EQ(gpu_state->download(device_state.data()), cudaSuccess);
      EXPECT_EQ(state_difference(cpu_state, device_state, cc, paged), "") << name;
    }
    // With budget_rows > 1 a later chunk measures only the rows it holds whole: its counts may
    // lie below the one-shot prefill's (compare() has checked them against the CPU's).
    if (spans.size() == 1 && spans[0].end > spans[0].begin && !plan.runs_dense(plan.batch.seqs[0]) &&
        (c.budget_rows == 1 || spans[0].begin == 0))
      expect_one_shot_rows(name, cc, prompts, plan, gpu, spans[0]);
  }
}

// One prompt of 2600 tokens in calls of `chunk` queries (aligned to the block or not; the
// last call shorter, under a block with chunk 640: a short chunk, dense).
ChunkCase chunk_case(int chunk, int page_size, bool state, int groups, int d, int block = 128) {
  ChunkCase cc;
  cc.prompts = {2600};
  cc.calls = chunks_of(2600, chunk);
  cc.d = d;
  cc.config = base_config(d);
  cc.config.block_size = block;
  cc.config.num_proxy_groups = groups;
  cc.config.anchor_blocks = groups == 2 ? 2 : 0;
  cc.page_size = page_size;
  cc.state = state;
  cc.seed = uint64_t(900 + chunk + page_size + 7 * groups + d + block);
  cc.name = "chunk" + std::to_string(chunk) + (page_size ? " page" + std::to_string(page_size) : " packed") +
            (state ? " state" : "") + " g" + std::to_string(groups) + " d" + std::to_string(d) + " b" +
            std::to_string(block);
  return cc;
}

// A varlen batch in two calls: a prompt prefilled in two chunks (the second starting inside a
// block), a decode step after a prefix, a whole prompt (sparse) and a short one (dense) of the
// second call, and a sequence without new queries.
ChunkCase varlen_case(int page_size, bool state) {
  ChunkCase cc;
  cc.prompts = {3000, 1500, 900, 600, 300};
  cc.calls = {{{0, 1300}, {0, 1499}, {0, 0}, {0, 600}, {0, 0}},
              {{1300, 3000}, {1499, 1500}, {0, 900}, {600, 600}, {0, 300}}};
  cc.config = base_config(128);
  cc.config.dense_below = 512;
  cc.config.num_proxy_groups = 2;
  cc.config.anchor_blocks = 2;
  cc.page_size = page_size;
  cc.state = state;
  cc.seed = uint64_t(1000 + page_size);
  cc.name = std::string("varlen") + (page_size ? " page" + std::to_string(page_size) : " packed") +
            (state ? " state" : "");
  return cc;
}

TEST_P(EstimateGpu, ChunkedPackedKeys) {
  PA_REQUIRE_GPU();
  for (const ChunkCase& cc : {chunk_case(640, 0, false, 1, 128), chunk_case(700, 0, false, 2, 64),
                              chunk_case(700, 0, false, 1, 128, 64)})
    run_chunk_case(cc);
}

TEST_P(EstimateGpu, ChunkedPagedKeys) {
  PA_REQUIRE_GPU();
  for (const ChunkCase& cc : {chunk_case(700, 16, false, 2, 128), chunk_case(640, 64, false, 1, 64),
                              chunk_case(700, 128, false, 2, 64), chunk_case(1000, 256, false, 1, 128)})
    run_chunk_case(cc);
}

TEST_P(EstimateGpu, ChunkedPagedKeysWithState) {
  PA_REQUIRE_GPU();
  for (const ChunkCase& cc : {chunk_case(700, 16, true, 2, 64), chunk_case(640, 64, true, 1, 128),
                              chunk_case(700, 128, true, 1, 64, 64), chunk_case(1000, 256, true, 2, 128)})
    run_chunk_case(cc);
}

// budget_rows = R > 1 (issue #28): each chunk's counts from the rows it holds whole.
TEST_P(EstimateGpu, ChunkedBudgetRows) {
  PA_REQUIRE_GPU();
  for (int rows : {4, 16}) {
    for (ChunkCase cc : {chunk_case(700, 64, true, 2, 128), chunk_case(640, 0, false, 1, 64, 64)}) {
      cc.config.budget_rows = rows;
      cc.name += " R" + std::to_string(rows);
      run_chunk_case(cc);
    }
    ChunkCase cc = varlen_case(64, true);
    cc.config.budget_rows = rows;
    cc.name += " R" + std::to_string(rows);
    run_chunk_case(cc);
  }
}

TEST_P(EstimateGpu, ChunkedVarlenBatch) {
  PA_REQUIRE_GPU();
  for (const ChunkCase& cc : {varlen_case(0, false), varlen_case(64, false), varlen_case(64, true)})
    run_chunk_case(cc);
}

// Small enough for compute-sanitizer (the GPU check's *Sanitize* filter): a chunk starting
// inside a block after a whole-prompt call, a decode step and a whole prompt, paged by 16
// with a state, g = 2 with anchors.
TEST_P(EstimateGpu, SanitizeChunkedPagedState) {
  PA_REQUIRE_GPU();
  ChunkCase cc;
  cc.name = "sanitize chunked";
  cc.prompts = {700, 300, 200};
  cc.calls = {{{0, 300}, {0, 299}, {0, 0}}, {{300, 700}, {299, 300}, {0, 200}}};
  cc.hq = 4, cc.hkv = 2, cc.d = 64;
  cc.config = base_config(64);
  cc.config.block_size = 64;
  cc.config.num_proxy_groups = 2;
  cc.config.dense_below = 128;
  cc.config.min_budget_tokens = 64;
  cc.config.anchor_blocks = 2;
  cc.page_size = 16;
  cc.state = true;
  cc.seed = 1100;
  run_chunk_case(cc);
}

}  // namespace
}  // namespace proxyattn::test
