// ALGORITHM.md steps 2-6 on the CPU: proxy heads, strided token-level proxy scores with
// 2-D block max pooling, per-head budgets from the last query block, shared selection.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/budget.hpp"
#include "core/config.hpp"
#include "cpu/backend.hpp"
#include "cpu/elements.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"

namespace proxyattn::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Proxy heads of one sequence, sampled at stride s; keys stored transposed so that a
// tile of keys is the B operand of gemm_accumulate.
struct Proxies {
  float* q;    // [g, ns, d]
  float* kt;   // [g, d, ns]
  int64_t ns;  // sampled positions ceil(N / s)
};

// Per-worker buffers of the scoring passes.
struct SoftmaxScratch {
  std::vector<float> tile, row_max, row_sum, correction;  // logits / probabilities and row stats
  std::vector<float> qtile, kt, krow;                     // budget step: Q tile, K^T tile, one K row
};

int64_t sampled_positions(int64_t length, int stride) { return (length + stride - 1) / stride; }

// Step 2-3: mean of the group's Q heads and of its KV heads at positions 0, s, 2s, ...,
// accumulated in fp32 and stored as the input type would hold them (the GPU feeds its
// tensor cores the proxies in that type; the CPU keeps the same values).
void build_proxies(const PlanDesc& plan, const SeqSpan& span, const pa_tensor& q,
                   const pa_tensor& k, const Proxies& px) {
  const pa_problem& p = plan.problem;
  const int d = p.head_dim, bytes = dtype_bytes(p.dtype);
  const int qh = plan.q_heads_per_group(), kh = plan.kv_heads_per_group();
  const int64_t ns = px.ns;
  parallel_for(int64_t(plan.groups()) * ns, [&](int, int64_t item) {
    const int j = int(item / ns);
    const int64_t i = item % ns;
    const int64_t token = span.token_begin + i * plan.config.stride;
    std::vector<float> row(d), sum(d);
    auto mean_into = [&](const pa_tensor& t, int first_head, int heads, float* out, int64_t step) {
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (int h = first_head; h < first_head + heads; ++h) {
        load_row(row_ptr(t, bytes, token, h), p.dtype, d, row.data());
        for (int c = 0; c < d; ++c) sum[c] += row[c];
      }
      for (int c = 0; c < d; ++c) out[c * step] = round_to(p.dtype, sum[c] / float(heads));
    };
    mean_into(q, j * qh, qh, px.q + (j * ns + i) * d, 1);
    mean_into(k, j * kh, kh, px.kt + int64_t(j) * d * ns + i, ns);
  });
}

// Causal softmax of a tile of `rows` query rows over key blocks 0..m, visited twice:
// pass 1 folds the row statistics, pass 2 hands each block's normalised probabilities
// (tile [rows, ld], `cols` valid columns) to reduce(n, cols). logits(n) fills the tile
// with scaled, causally masked logits of block n and returns its column count.
template <typename Logits, typename Reduce>
void two_pass_softmax(int m, int rows, int ld, SoftmaxScratch& sc, const Logits& logits,
                      const Reduce& reduce) {
  sc.row_max.assign(rows, kNegInf);
  sc.row_sum.assign(rows, 0.0f);
  sc.correction.resize(rows);
  for (int n = 0; n <= m; ++n) {
    const int cols = logits(n);
    softmax_fold(sc.tile.data(), ld, rows, cols, sc.row_max.data(), sc.row_sum.data(),
                 sc.correction.data());
  }
  for (int n = 0; n <= m; ++n) {
    const int cols = logits(n);
    for (int r = 0; r < rows; ++r) {
      float* x = &sc.tile[size_t(r) * ld];
      exp_shifted(x, cols, sc.row_max[r]);
      const float inv = 1.0f / sc.row_sum[r];
      for (int c = 0; c < cols; ++c) x[c] *= inv;
    }
    reduce(n, cols);
  }
}

// Scales a logit tile and masks the causal upper triangle of a diagonal block (query row r
// and key column c of the same block: key after query when c > r).
void scale_and_mask(float* tile, int ld, int rows, int cols, float scale, bool diagonal) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      float& x = tile[size_t(r) * ld + c];
      x = (diagonal && c > r) ? kNegInf : x * scale;
    }
}

// Step 4 for one (group, query-block row m): A[n] = max over sampled (tq, tk) of the
// causal row softmax P[tq, tk], tq in block m, tk in block n <= m.
void proxy_block_scores(const PlanDesc& plan, const Proxies& px, int j, int m, float* scores,
                        SoftmaxScratch& sc) {
  const int d = plan.problem.head_dim, per_block = plan.config.block_size / plan.config.stride;
  const int64_t first = int64_t(m) * per_block;
  const int rows = int(std::min<int64_t>(px.ns, first + per_block) - first);
  const float* qrows = px.q + (j * px.ns + first) * d;
  const float* kt = px.kt + int64_t(j) * d * px.ns;
  sc.tile.resize(size_t(rows) * per_block);
  auto logits = [&](int n) {
    const int64_t k0 = int64_t(n) * per_block;
    const int cols = int(std::min<int64_t>(px.ns, k0 + per_block) - k0);
    std::fill(sc.tile.begin(), sc.tile.end(), 0.0f);
    gemm_accumulate(qrows, d, kt + k0, int(px.ns), sc.tile.data(), per_block, rows, cols, d);
    scale_and_mask(sc.tile.data(), per_block, rows, cols, plan.config.softmax_scale, n == m);
    return cols;
  };
  auto block_max = [&](int n, int cols) {
    float best = 0.0f;
    for (int r = 0; r < rows; ++r) best = max_of(&sc.tile[size_t(r) * per_block], cols, best);
    scores[n] = best;
  };
  two_pass_softmax(m, rows, per_block, sc, logits, block_max);
}

// Step 5 for Q head h: block masses of the last query block's softmax rows, averaged.
void last_block_mass(const PlanDesc& plan, const SeqSpan& span, const pa_tensor& q,
                     const pa_tensor& k, int h, double* mass, SoftmaxScratch& sc) {
  const pa_problem& p = plan.problem;
  const int d = p.head_dim, b = plan.config.block_size, bytes = dtype_bytes(p.dtype);
  const int kv = h / plan.q_heads_per_kv();
  const int m = span.num_qblocks - 1;
  const int64_t q0 = int64_t(m) * b;
  const int rows = int(span.length - q0);
  sc.qtile.resize(size_t(rows) * d);
  sc.kt.resize(size_t(d) * b);
  sc.tile.resize(size_t(rows) * b);
  sc.krow.resize(d);
  for (int r = 0; r < rows; ++r)
    load_row(row_ptr(q, bytes, span.token_begin + q0 + r, h), p.dtype, d, &sc.qtile[size_t(r) * d]);
  auto logits = [&](int n) {
    const int64_t k0 = int64_t(n) * b;
    const int cols = int(std::min<int64_t>(span.length, k0 + b) - k0);
    for (int c = 0; c < cols; ++c) {
      load_row(row_ptr(k, bytes, span.token_begin + k0 + c, kv), p.dtype, d, sc.krow.data());
      for (int e = 0; e < d; ++e) sc.kt[size_t(e) * b + c] = sc.krow[e];
    }
    std::fill(sc.tile.begin(), sc.tile.end(), 0.0f);
    gemm_accumulate(sc.qtile.data(), d, sc.kt.data(), b, sc.tile.data(), b, rows, cols, d);
    scale_and_mask(sc.tile.data(), b, rows, cols, plan.config.softmax_scale, n == m);
    return cols;
  };
  auto block_mass = [&](int n, int cols) {
    double total = 0.0;
    for (int r = 0; r < rows; ++r) total += sum(&sc.tile[size_t(r) * b], cols);
    mass[n] = total / rows;
  };
  two_pass_softmax(m, rows, b, sc, logits, block_mass);
}

// Step 6 for one row: the forced blocks (ascending) first, then the others by score
// descending, ties to the lower block. Writes m + 1 entries; flags is scratch.
void write_order_row(const float* scores, int m, const std::vector<int32_t>& forced, int32_t* out,
                     std::vector<int32_t>& rest, std::vector<uint8_t>& flags) {
  flags.assign(m + 1, 0);
  for (int32_t n : forced) flags[n] = 1;
  std::copy(forced.begin(), forced.end(), out);
  rest.clear();
  for (int n = 0; n <= m; ++n)
    if (!flags[n]) rest.push_back(n);
  if (scores != nullptr)
    std::stable_sort(rest.begin(), rest.end(),
                     [&](int32_t a, int32_t c) { return scores[a] > scores[c]; });
  std::copy(rest.begin(), rest.end(), out + forced.size());
}

void write_counts(const PlanDesc& plan, const SeqSpan& span, int seq, int j, int m, int forced) {
  const pa_config& c = plan.config;
  const int hq = plan.problem.num_q_heads, per_group = plan.q_heads_per_group();
  const int min_blocks = min_budget_blocks(c);
  for (int h = j * per_group; h < (j + 1) * per_group; ++h) {
    const int32_t budget = plan.index.budget[seq * hq + h];
    const int32_t needed = plan.index.needed[seq * hq + h];
    plan.index.count[(span.qblock_begin + m) * hq + h] =
        row_keep(c.budget_mode, budget, needed, span.num_qblocks, min_blocks, m, forced);
  }
}

// No anchors in sequence seq (dense, empty or an index set by hand).
void clear_anchors(const PlanDesc& plan, int seq) {
  const int64_t per_seq = int64_t(plan.problem.num_q_heads) * plan.config.anchor_blocks;
  std::fill(plan.index.anchors + seq * per_seq, plan.index.anchors + (seq + 1) * per_seq, -1);
}

void estimate_dense(const PlanDesc& plan, const SeqSpan& span, int seq) {
  const int hq = plan.problem.num_q_heads, nqb = span.num_qblocks;
  for (int h = 0; h < hq; ++h) plan.index.budget[seq * hq + h] = plan.index.needed[seq * hq + h] = nqb;
  clear_anchors(plan, seq);
  std::vector<int32_t> rest, forced;
  std::vector<uint8_t> flags;
  for (int j = 0; j < plan.groups(); ++j)
    for (int m = 0; m < nqb; ++m) {
      row_forced(m, plan.config.force_sink, plan.config.force_local, nullptr, 0, forced);
      write_order_row(nullptr, m, forced, plan.index.order + order_row(span, j, m), rest, flags);
      for (int h = j * plan.q_heads_per_group(); h < (j + 1) * plan.q_heads_per_group(); ++h)
        plan.index.count[(span.qblock_begin + m) * hq + h] = m + 1;
    }
}

void estimate_sparse(const PlanDesc& plan, const SeqSpan& span, int seq, const pa_tensor& q,
                     const pa_tensor& k, const Proxies& px) {
  const pa_config& c = plan.config;
  const int hq = plan.problem.num_q_heads, nqb = span.num_qblocks, g = plan.groups();
  const int workers = num_threads();

  // Step 5: per-head budgets.
  const int min_blocks = min_budget_blocks(c);
  struct BudgetScratch {
    SoftmaxScratch softmax;
    std::vector<double> mass, sorted;
  };
  std::vector<BudgetScratch> bs(workers);
  parallel_for(hq, [&](int w, int64_t h) {
    BudgetScratch& sc = bs[w];
    sc.mass.resize(nqb);
    sc.sorted.resize(nqb);
    last_block_mass(plan, span, q, k, int(h), sc.mass.data(), sc.softmax);
    // A NaN in the inputs makes the masses NaN (softmax_fold keeps it): no mass information,
    // so the head keeps every block (needed_blocks' rule for a zero total), and no NaN
    // reaches the sorts of the budget step.
    if (std::any_of(sc.mass.begin(), sc.mass.end(), [](double x) { return x != x; }))
      std::fill(sc.mass.begin(), sc.mass.end(), 0.0);
    const int32_t needed = needed_blocks(sc.mass.data(), nqb, c.gamma, sc.sorted.data());
    plan.index.needed[seq * hq + h] = needed;
    plan.index.budget[seq * hq + h] = budget_blocks(needed, nqb, min_blocks);
    anchor_blocks(sc.mass.data(), nqb, c.anchor_blocks, c.force_sink, c.force_local,
                  plan.index.anchors + (int64_t(seq) * hq + h) * c.anchor_blocks);
  });

  // Steps 2-4 and 6: proxies, then per (group, row) scores, one ordering, head prefixes.
  build_proxies(plan, span, q, k, px);
  struct RowScratch {
    SoftmaxScratch softmax;
    std::vector<float> scores;
    std::vector<int32_t> rest, forced;
    std::vector<uint8_t> flags;
  };
  const int anchor_count = plan.q_heads_per_group() * c.anchor_blocks;
  std::vector<RowScratch> rs(workers);
  const int64_t items = int64_t(g) * nqb;
  parallel_for(items, [&](int w, int64_t item) {
    // Longest rows first so that the dynamic schedule ends evenly.
    const int j = int(item % g);
    const int m = nqb - 1 - int(item / g);
    RowScratch& sc = rs[w];
    sc.scores.resize(nqb);
    proxy_block_scores(plan, px, j, m, sc.scores.data(), sc.softmax);
    row_forced(m, c.force_sink, c.force_local,
               group_anchors(plan.index.anchors, seq, j, hq, g, c.anchor_blocks), anchor_count,
               sc.forced);
    write_order_row(sc.scores.data(), m, sc.forced, plan.index.order + order_row(span, j, m),
                    sc.rest, sc.flags);
    write_counts(plan, span, seq, j, m, int(sc.forced.size()));
  });
}

}  // namespace

size_t estimate_workspace_bytes(const PlanDesc& plan) {
  const int64_t ns = sampled_positions(plan.batch.max_length, plan.config.stride);
  return sizeof(float) * 2 * size_t(plan.groups()) * size_t(ns) * size_t(plan.problem.head_dim);
}

pa_status estimate(const PlanDesc& plan, const pa_tensor& q, const pa_tensor& k, void* workspace) {
  const int64_t max_ns = sampled_positions(plan.batch.max_length, plan.config.stride);
  float* base = static_cast<float*>(workspace);
  for (size_t seq = 0; seq < plan.batch.seqs.size(); ++seq) {
    const SeqSpan& span = plan.batch.seqs[seq];
    if (span.num_qblocks == 0) {  // empty sequence: no block, no budget
      for (int h = 0; h < plan.problem.num_q_heads; ++h)
        plan.index.budget[seq * plan.problem.num_q_heads + h] = plan.index.needed[seq * plan.problem.num_q_heads + h] = 0;
      clear_anchors(plan, int(seq));
      continue;
    }
    if (plan.runs_dense(span)) {
      estimate_dense(plan, span, int(seq));
      continue;
    }
    Proxies px;
    px.ns = sampled_positions(span.length, plan.config.stride);
    px.q = base;
    px.kt = base + size_t(plan.groups()) * max_ns * plan.problem.head_dim;
    estimate_sparse(plan, span, int(seq), q, k, px);
  }
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cpu
