// ALGORITHM.md step 7 on the CPU: per (sequence, head, query block), online softmax over
// a list of key blocks; the block-sparse and the dense paths differ only in that list.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/problem.hpp"
#include "cpu/backend.hpp"
#include "cpu/elements.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"

namespace proxyattn::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Operands {
  const pa_problem* problem;
  float scale;
  int block;
  const pa_tensor* q;
  const pa_kv_cache* kv;
  const pa_tensor* o;
  float* lse;  // [Hq, total_tokens] or null
};

struct Scratch {
  std::vector<float> q, kt, v, s, acc, row_max, row_sum, correction, row;
};

// The call's queries of query block m (absolute positions [q0, q0 + rows)) of one head
// against key blocks `blocks` (ascending). A row that sees no key at all gets O = 0 and
// LSE = -inf; a row whose logits or values hold a NaN gets NaN (softmax_fold keeps NaN in
// the row's sum).
void attend_block(const Operands& op, const SeqSpan& span, int seq, int h, int m,
                  const int32_t* blocks, int num_blocks, Scratch& sc) {
  const pa_problem& p = *op.problem;
  const int d = p.head_dim, b = op.block, bytes = dtype_bytes(p.dtype);
  const int kv = h / (p.num_q_heads / p.num_kv_heads);
  const int64_t q0 = std::max<int64_t>(int64_t(m) * b, span.query_offset());
  const int rows = int(std::min<int64_t>(span.kv_length, int64_t(m + 1) * b) - q0);
  const int64_t token0 = span.token_begin + q0 - span.query_offset();  // of row 0 in Q and O
  const int shift = int(q0 - int64_t(m) * b);  // row r is column r + shift of the diagonal block
  auto kv_row = [&](int64_t pos) {
    return proxyattn::kv_row(span, seq, pos, op.kv->block_table, p.page_size, p.max_pages_per_seq);
  };
  sc.q.resize(size_t(rows) * d);
  sc.kt.resize(size_t(d) * b);
  sc.v.resize(size_t(b) * d);
  sc.s.resize(size_t(rows) * b);
  sc.acc.assign(size_t(rows) * d, 0.0f);
  sc.row_max.assign(rows, kNegInf);
  sc.row_sum.assign(rows, 0.0f);
  sc.correction.resize(rows);
  sc.row.resize(d);
  for (int r = 0; r < rows; ++r) {
    float* qr = &sc.q[size_t(r) * d];
    load_row(row_ptr(*op.q, bytes, token0 + r, h), p.dtype, d, qr);
    for (int c = 0; c < d; ++c) qr[c] *= op.scale;
  }
  for (int e = 0; e < num_blocks; ++e) {
    const int n = blocks[e];
    const int64_t k0 = int64_t(n) * b;
    const int cols = int(std::min<int64_t>(span.kv_length, k0 + b) - k0);
    for (int c = 0; c < cols; ++c) {
      const int64_t row = kv_row(k0 + c);
      load_row(row_ptr(op.kv->k, bytes, row, kv), p.dtype, d, sc.row.data());
      for (int x = 0; x < d; ++x) sc.kt[size_t(x) * b + c] = sc.row[x];
      load_row(row_ptr(op.kv->v, bytes, row, kv), p.dtype, d, &sc.v[size_t(c) * d]);
    }
    // S = (scale Q) K^T, causal inside the diagonal block.
    std::fill(sc.s.begin(), sc.s.end(), 0.0f);
    gemm_accumulate(sc.q.data(), d, sc.kt.data(), b, sc.s.data(), b, rows, cols, d);
    if (n == m)  // causal inside the diagonal block: key column c after query column r + shift
      for (int r = 0; r < rows; ++r)
        std::fill(&sc.s[size_t(r) * b] + std::min(cols, r + shift + 1), &sc.s[size_t(r) * b] + cols,
                  kNegInf);
    // Online softmax: S becomes P, and what was accumulated is rescaled to the new max.
    softmax_fold(sc.s.data(), b, rows, cols, sc.row_max.data(), sc.row_sum.data(), sc.correction.data());
    for (int r = 0; r < rows; ++r) {
      float* acc = &sc.acc[size_t(r) * d];
      for (int x = 0; x < d; ++x) acc[x] *= sc.correction[r];
    }
    // acc += P V
    gemm_accumulate(sc.s.data(), b, sc.v.data(), d, sc.acc.data(), d, rows, d, cols);
  }
  for (int r = 0; r < rows; ++r) {
    float* acc = &sc.acc[size_t(r) * d];
    const float l = sc.row_sum[r];  // 0 (no key), > 0, or NaN (a NaN logit)
    const float inv = l == 0.0f ? 0.0f : 1.0f / l;
    for (int x = 0; x < d; ++x) acc[x] *= inv;
    store_row(acc, p.dtype, d, row_ptr_mut(*op.o, bytes, token0 + r, h));
    if (op.lse != nullptr)
      op.lse[int64_t(h) * p.total_tokens + token0 + r] = l == 0.0f ? kNegInf : sc.row_max[r] + std::log(l);
  }
}

// Work items (sequence, head, query block), longest first for the dynamic schedule.
struct Item {
  int32_t seq, head, m;
  int64_t cost;
};

template <typename BlocksOf>
void run_items(const Operands& op, const BatchLayout& batch, const BlocksOf& blocks_of) {
  std::vector<Item> items;
  items.reserve(size_t(batch.total_qblocks) * op.problem->num_q_heads);
  for (size_t s = 0; s < batch.seqs.size(); ++s)
    for (int h = 0; h < op.problem->num_q_heads; ++h)
      for (int m = batch.seqs[s].first_qblock; m < batch.seqs[s].num_kblocks(); ++m)
        items.push_back({int32_t(s), h, m, blocks_of.count(int(s), h, m)});
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.cost > b.cost; });
  std::vector<Scratch> scratch(num_threads());
  std::vector<std::vector<int32_t>> lists(num_threads());
  parallel_for(int64_t(items.size()), [&](int w, int64_t i) {
    const Item& it = items[i];
    std::vector<int32_t>& list = lists[w];
    blocks_of.list(it.seq, it.head, it.m, list);
    attend_block(op, batch.seqs[it.seq], it.seq, it.head, it.m, list.data(), int(list.size()), scratch[w]);
  });
}

// Kept blocks from the plan's index, sorted ascending for locality.
struct SparseBlocks {
  const PlanDesc* plan;
  int64_t count(int s, int h, int m) const {
    return plan->index.count[count_row(plan->batch.seqs[s], m) * plan->problem.num_q_heads + h];
  }
  void list(int s, int h, int m, std::vector<int32_t>& out) const {
    const SeqSpan& span = plan->batch.seqs[s];
    const int j = group_of_head(h, plan->problem.num_q_heads, plan->groups());
    const int32_t* row = plan->index.order + order_row(span, j, m);
    out.assign(row, row + count(s, h, m));
    std::sort(out.begin(), out.end());
  }
};

// Every causal block.
struct DenseBlocks {
  int64_t count(int, int, int m) const { return m + 1; }
  void list(int, int, int m, std::vector<int32_t>& out) const {
    out.resize(m + 1);
    for (int n = 0; n <= m; ++n) out[n] = n;
  }
};

}  // namespace

pa_status attend(const PlanDesc& plan, const pa_tensor& q, const pa_kv_cache& kv, const pa_tensor& o,
                 float* lse) {
  const Operands op{&plan.problem, plan.config.softmax_scale, plan.config.block_size, &q, &kv, &o, lse};
  run_items(op, plan.batch, SparseBlocks{&plan});
  return PA_STATUS_SUCCESS;
}

pa_status dense_attention(const pa_problem& problem, float scale, const pa_tensor& q,
                          const pa_tensor& k, const pa_tensor& v, const pa_tensor& o, float* lse) {
  constexpr int kDenseTile = 128;  // tile edge of the dense path (any edge gives the same math)
  const BatchLayout batch = make_batch_layout(problem, kDenseTile, 1);
  const pa_kv_cache kv{k, v, nullptr, nullptr};
  const Operands op{&problem, scale, kDenseTile, &q, &kv, &o, lse};
  run_items(op, batch, DenseBlocks{});
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cpu
