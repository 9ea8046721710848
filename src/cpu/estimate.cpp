// ALGORITHM.md steps 2-6 on the CPU: proxy heads, strided token-level proxy scores with
// 2-D block max pooling, per-head budgets from the last query block, shared selection.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/budget.hpp"
#include "core/config.hpp"
#include "core/given_budgets.hpp"
#include "cpu/backend.hpp"
#include "cpu/elements.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"

namespace proxyattn::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Proxy heads of one sequence, sampled at stride s; keys stored transposed so that a
// tile of keys is the B operand of gemm_accumulate. Sampled position i is token i s.
struct Proxies {
  float* q;           // [g, ns - q_first, d]: sampled queries q_first .. ns - 1
  float* kt;          // [g, d, ns]: every sampled key
  int64_t ns;         // sampled positions of the keys, ceil(kv_len / s)
  int64_t q_first;    // first sampled query held: the start of the first row's block
  int64_t q_begin;    // first sampled query the scores may use (earlier ones are unknown)
};

// Where a call reads keys and writes or reads its estimation state.
struct Sources {
  const PlanDesc* plan;
  const pa_tensor* q;
  const pa_kv_cache* kv;
  int seq;
  const SeqSpan* span;
  int64_t kv_row(int64_t pos) const {
    return proxyattn::kv_row(*span, seq, pos, kv->block_table, plan->problem.page_size,
                             plan->problem.max_pages_per_seq);
  }
  int64_t q_token(int64_t pos) const { return span->token_begin + pos - span->query_offset(); }
  // Element of the state [num_pages, page_size / s, 2, g, d] of sampled position pos, plane
  // 0 (keys) or 1 (queries), group j.
  void* state_row(int64_t pos, int plane, int j) const {
    const pa_proxy_state& st = *kv->proxy_state;
    const int per_page = st.page_size / st.stride;
    const int64_t slot = kv_row(pos) / st.page_size * per_page + pos % st.page_size / st.stride;
    const int64_t row = (slot * 2 + plane) * st.num_proxy_groups + j;
    return static_cast<char*>(st.data) + row * st.head_dim * dtype_bytes(st.dtype);
  }
};

// Per-worker buffers of the scoring passes.
struct SoftmaxScratch {
  std::vector<float> tile, row_max, row_sum, correction;  // logits / probabilities and row stats
  std::vector<float> qtile, kt, krow;                     // budget step: Q tile, K^T tile, one K row
};

int64_t sampled_positions(int64_t length, int stride) { return (length + stride - 1) / stride; }

// Steps 2-3 of sampled position i: the mean of the group's Q heads (queries) or KV heads
// (keys), accumulated in fp32 and stored as the input type would hold them (the GPU feeds its
// tensor cores the proxies in that type; the CPU keeps the same values).
void mean_of_heads(const pa_tensor& t, int64_t token, int first_head, int heads, pa_dtype dtype,
                   int d, std::vector<float>& row, std::vector<float>& sum, float* out, int64_t step) {
  const int bytes = dtype_bytes(dtype);
  std::fill(sum.begin(), sum.end(), 0.0f);
  for (int h = first_head; h < first_head + heads; ++h) {
    load_row(row_ptr(t, bytes, token, h), dtype, d, row.data());
    for (int c = 0; c < d; ++c) sum[c] += row[c];
  }
  for (int c = 0; c < d; ++c) out[c * step] = round_to(dtype, sum[c] / float(heads));
}

// Scratch rows of the pooling.
struct PoolRows {
  std::vector<float> row, sum, key, query;
  explicit PoolRows(int d) : row(d), sum(d), key(d), query(d) {}
};

// Pools the call's own sampled position pos for group j into rows.key and rows.query, and
// writes both to the state when there is one.
void pool_own(const Sources& src, int j, int64_t pos, PoolRows& rows) {
  const PlanDesc& plan = *src.plan;
  const pa_dtype dtype = plan.problem.dtype;
  const int d = plan.problem.head_dim, qh = plan.q_heads_per_group(), kh = plan.kv_heads_per_group();
  mean_of_heads(src.kv->k, src.kv_row(pos), j * kh, kh, dtype, d, rows.row, rows.sum, rows.key.data(), 1);
  mean_of_heads(*src.q, src.q_token(pos), j * qh, qh, dtype, d, rows.row, rows.sum, rows.query.data(), 1);
  if (src.kv->proxy_state == nullptr) return;
  store_row(rows.key.data(), dtype, d, src.state_row(pos, 0, j));
  store_row(rows.query.data(), dtype, d, src.state_row(pos, 1, j));
}

// First sampled position of the call's own queries.
int64_t first_own_sample(const SeqSpan& span, int stride) {
  return sampled_positions(span.query_offset(), stride);
}

// A sequence that runs dense still keeps its state: later chunks read these positions.
void store_state(const Sources& src) {
  const PlanDesc& plan = *src.plan;
  const int s = plan.config.stride;
  const int64_t own = first_own_sample(*src.span, s), ns = sampled_positions(src.span->kv_length, s);
  parallel_for(int64_t(plan.groups()) * (ns - own), [&](int, int64_t item) {
    PoolRows rows(plan.problem.head_dim);
    pool_own(src, int(item / (ns - own)), (own + item % (ns - own)) * s, rows);
  });
}

// Proxies of the call's own positions (pooled from Q and K, written to the state) and of the
// prefix (read from the state when there is one, else its keys pooled from the cache).
void build_proxies(const Sources& src, const Proxies& px) {
  const PlanDesc& plan = *src.plan;
  const pa_dtype dtype = plan.problem.dtype;
  const int d = plan.problem.head_dim, s = plan.config.stride, kh = plan.kv_heads_per_group();
  const int64_t own = first_own_sample(*src.span, s);
  const bool state = src.kv->proxy_state != nullptr;
  parallel_for(int64_t(plan.groups()) * px.ns, [&](int, int64_t item) {
    const int j = int(item / px.ns);
    const int64_t i = item % px.ns, pos = i * s;
    PoolRows rows(d);
    float* key = px.kt + int64_t(j) * d * px.ns + i;
    float* query = i >= px.q_first ? px.q + (j * (px.ns - px.q_first) + (i - px.q_first)) * d : nullptr;
    if (i >= own) {
      pool_own(src, j, pos, rows);
    } else if (state) {  // the prefix, pooled by an earlier call
      load_row(src.state_row(pos, 0, j), dtype, d, rows.key.data());
      if (query != nullptr) load_row(src.state_row(pos, 1, j), dtype, d, rows.query.data());
    } else {  // the prefix without a state: its keys pooled again, its queries unknown
      mean_of_heads(src.kv->k, src.kv_row(pos), j * kh, kh, dtype, d, rows.row, rows.sum,
                    rows.key.data(), 1);
      query = nullptr;
    }
    for (int c = 0; c < d; ++c) key[c * px.ns] = rows.key[c];
    if (query != nullptr) std::copy(rows.query.begin(), rows.query.end(), query);
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

// Scales a logit tile and masks the causal upper triangle of a diagonal block: query row r
// sits at column r + shift of the block (shift > 0 when the rows start inside the block), and
// key column c after it is masked.
void scale_and_mask(float* tile, int ld, int rows, int cols, float scale, bool diagonal, int shift) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      float& x = tile[size_t(r) * ld + c];
      x = (diagonal && c > r + shift) ? kNegInf : x * scale;
    }
}

// Step 4 for one (group, query-block row m): A[n] = max over sampled (tq, tk) of the
// causal row softmax P[tq, tk], tq in block m (those known to the call), tk in block n <= m.
void proxy_block_scores(const PlanDesc& plan, const Proxies& px, int j, int m, float* scores,
                        SoftmaxScratch& sc) {
  const int d = plan.problem.head_dim, per_block = plan.config.block_size / plan.config.stride;
  const int64_t block_first = int64_t(m) * per_block;
  const int64_t first = std::max(block_first, px.q_begin);
  const int rows = int(std::max<int64_t>(0, std::min<int64_t>(px.ns, block_first + per_block) - first));
  const float* qrows = px.q + (j * (px.ns - px.q_first) + (first - px.q_first)) * d;
  const float* kt = px.kt + int64_t(j) * d * px.ns;
  sc.tile.resize(size_t(rows) * per_block);
  auto logits = [&](int n) {
    const int64_t k0 = int64_t(n) * per_block;
    const int cols = int(std::min<int64_t>(px.ns, k0 + per_block) - k0);
    std::fill(sc.tile.begin(), sc.tile.end(), 0.0f);
    gemm_accumulate(qrows, d, kt + k0, int(px.ns), sc.tile.data(), per_block, rows, cols, d);
    scale_and_mask(sc.tile.data(), per_block, rows, cols, plan.config.softmax_scale, n == m,
                   int(first - block_first));
    return cols;
  };
  auto block_max = [&](int n, int cols) {
    float best = 0.0f;
    for (int r = 0; r < rows; ++r) best = max_of(&sc.tile[size_t(r) * per_block], cols, best);
    scores[n] = best;
  };
  two_pass_softmax(m, rows, per_block, sc, logits, block_max);
}

// Step 5 for Q head h: block masses mass[0..m] of query block m's softmax rows, averaged. The
// call holds every query of block m (the last block: a sparse chunk holds at least a block of
// queries; budget_rows > 1 measures only the blocks the call holds whole).
void block_mass(const Sources& src, int h, int m, double* mass, SoftmaxScratch& sc) {
  const PlanDesc& plan = *src.plan;
  const SeqSpan& span = *src.span;
  const pa_problem& p = plan.problem;
  const int d = p.head_dim, b = plan.config.block_size, bytes = dtype_bytes(p.dtype);
  const int kv = h / plan.q_heads_per_kv();
  const int64_t q0 = int64_t(m) * b;
  const int rows = int(std::min<int64_t>(span.kv_length, q0 + b) - q0);
  sc.qtile.resize(size_t(rows) * d);
  sc.kt.resize(size_t(d) * b);
  sc.tile.resize(size_t(rows) * b);
  sc.krow.resize(d);
  for (int r = 0; r < rows; ++r)
    load_row(row_ptr(*src.q, bytes, src.q_token(q0 + r), h), p.dtype, d, &sc.qtile[size_t(r) * d]);
  auto logits = [&](int n) {
    const int64_t k0 = int64_t(n) * b;
    const int cols = int(std::min<int64_t>(q0 + rows, k0 + b) - k0);
    for (int c = 0; c < cols; ++c) {
      load_row(row_ptr(src.kv->k, bytes, src.kv_row(k0 + c), kv), p.dtype, d, sc.krow.data());
      for (int e = 0; e < d; ++e) sc.kt[size_t(e) * b + c] = sc.krow[e];
    }
    std::fill(sc.tile.begin(), sc.tile.end(), 0.0f);
    gemm_accumulate(sc.qtile.data(), d, sc.kt.data(), b, sc.tile.data(), b, rows, cols, d);
    scale_and_mask(sc.tile.data(), b, rows, cols, plan.config.softmax_scale, n == m, 0);
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

// num_kblocks: the whole sequence's key blocks (the proportional mode's N_b). forced: the row's
// forced blocks (sink, diagonal, anchors); ranks: its anchors' ranks (anchor_ranks; empty when
// the anchors count in the budget).
void write_counts(const PlanDesc& plan, const SeqSpan& span, int seq, int j, int m,
                  const std::vector<int32_t>& forced, const std::vector<int32_t>& ranks,
                  int32_t num_kblocks) {
  const pa_config& c = plan.config;
  const int hq = plan.problem.num_q_heads, per_group = plan.q_heads_per_group();
  const int min_blocks = min_budget_blocks(c);
  const int32_t base_forced = std::min<int32_t>(m + 1, c.force_sink + c.force_local);
  for (int h = j * per_group; h < (j + 1) * per_group; ++h) {
    const int32_t budget = plan.index.budget[seq * hq + h];
    const int32_t needed = plan.index.needed[seq * hq + h];
    plan.index.count[count_row(span, m) * hq + h] =
        row_keep_anchored(c.anchor_mode, c.budget_mode, budget, needed, num_kblocks, min_blocks, m,
                          base_forced, int32_t(forced.size()), ranks.data(), int32_t(ranks.size()));
  }
}

// No anchors in sequence seq (dense, empty or an index set by hand).
void clear_anchors(const PlanDesc& plan, int seq) {
  const int64_t per_seq = int64_t(plan.problem.num_q_heads) * plan.config.anchor_blocks;
  std::fill(plan.index.anchors + seq * per_seq, plan.index.anchors + (seq + 1) * per_seq, -1);
}

void estimate_dense(const PlanDesc& plan, const SeqSpan& span, int seq) {
  const int hq = plan.problem.num_q_heads, nkb = span.num_kblocks();
  for (int h = 0; h < hq; ++h) plan.index.budget[seq * hq + h] = plan.index.needed[seq * hq + h] = nkb;
  clear_anchors(plan, seq);
  std::vector<int32_t> rest, forced;
  std::vector<uint8_t> flags;
  for (int j = 0; j < plan.groups(); ++j)
    for (int m = span.first_qblock; m < nkb; ++m) {
      row_forced(m, plan.config.force_sink, plan.config.force_local, nullptr, 0, forced);
      write_order_row(nullptr, m, forced, plan.index.order + order_row(span, j, m), rest, flags);
      for (int h = j * plan.q_heads_per_group(); h < (j + 1) * plan.q_heads_per_group(); ++h)
        plan.index.count[count_row(span, m) * hq + h] = m + 1;
    }
}

// Step 5 given by the caller: sequence seq's budgets, needed counts and anchors copied.
void copy_given(const PlanDesc& plan, int seq, const GivenBudgets& given) {
  const int hq = plan.problem.num_q_heads, t = plan.config.anchor_blocks;
  std::copy_n(given.budget.begin() + size_t(seq) * hq, hq, plan.index.budget + size_t(seq) * hq);
  std::copy_n(given.needed.begin() + size_t(seq) * hq, hq, plan.index.needed + size_t(seq) * hq);
  std::copy_n(given.anchors.begin() + size_t(seq) * hq * t, size_t(hq) * t,
              plan.index.anchors + size_t(seq) * hq * t);
}

void estimate_sparse(const Sources& src, const Proxies& px, const GivenBudgets* given) {
  const PlanDesc& plan = *src.plan;
  const SeqSpan& span = *src.span;
  const int seq = src.seq;
  const pa_config& c = plan.config;
  const int hq = plan.problem.num_q_heads, nkb = span.num_kblocks(), g = plan.groups();
  const int workers = num_threads();

  // Step 5: per-head budgets (or the caller's): count_i the largest over the budget rows the
  // call holds whole (every one for a whole prompt; the last always), anchors from the last.
  const int min_blocks = min_budget_blocks(c);
  std::vector<int32_t> rows = budget_rows(nkb, c.budget_rows);
  rows.erase(std::remove_if(rows.begin(), rows.end(),
                            [&](int32_t qb) { return int64_t(qb) * c.block_size < span.query_offset(); }),
             rows.end());
  const int32_t budget_kblocks = given != nullptr ? given->num_kblocks[seq] : nkb;
  if (given != nullptr) copy_given(plan, seq, *given);
  struct BudgetScratch {
    SoftmaxScratch softmax;
    std::vector<double> mass, sorted;
  };
  std::vector<BudgetScratch> bs(workers);
  // The ranked rule's last-row masses of every head [Hq, nkb], kept until the ranking exists.
  const bool ranked = given == nullptr && c.budget_rule == PA_BUDGET_RULE_RANKED;
  std::vector<double> last_mass(ranked ? size_t(hq) * nkb : 0);
  parallel_for(given != nullptr ? 0 : hq, [&](int w, int64_t h) {
    BudgetScratch& sc = bs[w];
    sc.mass.resize(nkb);
    sc.sorted.resize(nkb);
    // A NaN in the inputs makes the masses NaN (softmax_fold keeps it): no mass information,
    // so the head keeps every block (needed_blocks' rule for a zero total), and no NaN
    // reaches the sorts of the budget step.
    auto clean = [&](int blocks) {
      if (std::any_of(sc.mass.begin(), sc.mass.begin() + blocks, [](double x) { return x != x; }))
        std::fill(sc.mass.begin(), sc.mass.begin() + blocks, 0.0);
    };
    int32_t needed = 0;
    for (int32_t qb : rows) {
      if (qb == nkb - 1) continue;  // the last block below, its masses kept for the anchors
      block_mass(src, int(h), qb, sc.mass.data(), sc.softmax);
      clean(qb + 1);
      needed = std::max(needed, needed_blocks(sc.mass.data(), qb + 1, c.gamma, sc.sorted.data()));
    }
    block_mass(src, int(h), nkb - 1, sc.mass.data(), sc.softmax);
    clean(nkb);
    needed = std::max(needed, needed_blocks(sc.mass.data(), nkb, c.gamma, sc.sorted.data()));
    plan.index.needed[seq * hq + h] = needed;
    plan.index.budget[seq * hq + h] = budget_blocks(needed, nkb, min_blocks);
    anchor_blocks(sc.mass.data(), nkb, c.anchor_blocks, c.force_sink, c.force_local,
                  plan.index.anchors + (int64_t(seq) * hq + h) * c.anchor_blocks);
    if (ranked) std::copy_n(sc.mass.begin(), nkb, last_mass.begin() + h * nkb);
  });

  // Steps 2-4 and 6: proxies, then per (group, row) scores, one ordering, head prefixes.
  build_proxies(src, px);
  struct RowScratch {
    SoftmaxScratch softmax;
    std::vector<float> scores;
    std::vector<int32_t> rest, forced, ranks, order;
    std::vector<uint8_t> flags;
  };
  std::vector<RowScratch> rs(workers);
  if (ranked) {
    // Step 5 along the ranking: the group's anchor-free order of the last row (sink and
    // diagonal first, then by proxy score), each head's count along it raised to the target.
    const double target = ranked_target(c);
    parallel_for(g, [&](int w, int64_t j) {
      RowScratch& sc = rs[w];
      sc.scores.resize(nkb);
      sc.order.resize(nkb);
      proxy_block_scores(plan, px, int(j), nkb - 1, sc.scores.data(), sc.softmax);
      row_forced(nkb - 1, c.force_sink, c.force_local, nullptr, 0, sc.forced);
      write_order_row(sc.scores.data(), nkb - 1, sc.forced, sc.order.data(), sc.rest, sc.flags);
      for (int h = int(j) * plan.q_heads_per_group(); h < (int(j) + 1) * plan.q_heads_per_group(); ++h) {
        int32_t& needed = plan.index.needed[seq * hq + h];
        needed = std::max(needed, ranked_blocks(&last_mass[size_t(h) * nkb], sc.order.data(), nkb, target));
        plan.index.budget[seq * hq + h] = budget_blocks(needed, nkb, min_blocks);
      }
    });
  }
  const int anchor_count = plan.q_heads_per_group() * c.anchor_blocks;
  const int64_t items = int64_t(g) * span.num_qblocks;
  parallel_for(items, [&](int w, int64_t item) {
    // Longest rows first so that the dynamic schedule ends evenly.
    const int j = int(item % g);
    const int m = nkb - 1 - int(item / g);
    RowScratch& sc = rs[w];
    sc.scores.resize(nkb);
    proxy_block_scores(plan, px, j, m, sc.scores.data(), sc.softmax);
    row_forced(m, c.force_sink, c.force_local,
               group_anchors(plan.index.anchors, seq, j, hq, g, c.anchor_blocks), anchor_count,
               sc.forced);
    write_order_row(sc.scores.data(), m, sc.forced, plan.index.order + order_row(span, j, m),
                    sc.rest, sc.flags);
    sc.ranks.clear();
    if (c.anchor_mode == PA_ANCHORS_ON_TOP)
      anchor_ranks(sc.scores.data(), m, c.force_sink, c.force_local, sc.forced, sc.ranks);
    write_counts(plan, span, seq, j, m, sc.forced, sc.ranks, budget_kblocks);
  });
}

}  // namespace

size_t estimate_workspace_bytes(const PlanDesc& plan) {
  const int64_t ns = sampled_positions(plan.batch.max_kv_length, plan.config.stride);
  return sizeof(float) * 2 * size_t(plan.groups()) * size_t(ns) * size_t(plan.problem.head_dim);
}

pa_status estimate(const PlanDesc& plan, const pa_tensor& q, const pa_kv_cache& kv, void* workspace,
                   const GivenBudgets* given) {
  const int64_t max_ns = sampled_positions(plan.batch.max_kv_length, plan.config.stride);
  const int hq = plan.problem.num_q_heads, s = plan.config.stride;
  float* base = static_cast<float*>(workspace);
  for (size_t seq = 0; seq < plan.batch.seqs.size(); ++seq) {
    const SeqSpan& span = plan.batch.seqs[seq];
    const Sources src{&plan, &q, &kv, int(seq), &span};
    if (span.num_qblocks == 0) {  // no query: no block, no budget
      std::fill(plan.index.budget + seq * hq, plan.index.budget + (seq + 1) * hq, 0);
      std::fill(plan.index.needed + seq * hq, plan.index.needed + (seq + 1) * hq, 0);
      clear_anchors(plan, int(seq));
      continue;
    }
    if (given == nullptr && plan.runs_dense(span)) {
      estimate_dense(plan, span, int(seq));
      if (kv.proxy_state != nullptr) store_state(src);
      continue;
    }
    Proxies px;
    px.ns = sampled_positions(span.kv_length, s);
    px.q_first = int64_t(span.first_qblock) * (plan.config.block_size / s);
    px.q_begin = kv.proxy_state != nullptr ? px.q_first : first_own_sample(span, s);
    px.q = base;
    px.kt = base + size_t(plan.groups()) * max_ns * plan.problem.head_dim;
    estimate_sparse(src, px, given);
  }
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cpu
