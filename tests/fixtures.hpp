// Inputs and plan helpers shared by the tests: random or structured packed batches, and
// the host plan's index unpacked per (sequence, head, row).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "proxyattn/proxyattn.hpp"

namespace proxyattn::test {

inline int element_bytes(pa_dtype dtype) { return dtype == PA_DTYPE_FLOAT32 ? 4 : 2; }

// Packed Q, K, V of a batch on the host, in the batch's dtype.
struct HostQKV {
  std::vector<uint8_t> q, k, v;
  pa_tensor tq() { return pa_tensor_contiguous(q.data(), hq, d); }
  pa_tensor tk() { return pa_tensor_contiguous(k.data(), hkv, d); }
  pa_tensor tv() { return pa_tensor_contiguous(v.data(), hkv, d); }
  int hq = 0, hkv = 0, d = 0;
};

inline void fill_normal(std::vector<uint8_t>& out, int64_t count, pa_dtype dtype, std::mt19937_64& rng,
                        double stddev) {
  std::normal_distribution<float> normal(0.0f, float(stddev));
  std::vector<float> f(count);
  for (auto& x : f) x = normal(rng);
  out.resize(count * element_bytes(dtype));
  check(pa_from_float32(dtype, f.data(), count, out.data()));
}

// Gaussian Q and K of standard deviation `scale_qk` (logit spread grows with it), V ~ N(0, 1).
inline HostQKV random_qkv(const pa_problem& p, uint64_t seed, double scale_qk = 1.5) {
  HostQKV x;
  x.hq = p.num_q_heads, x.hkv = p.num_kv_heads, x.d = p.head_dim;
  std::mt19937_64 rng(seed);
  fill_normal(x.q, p.total_tokens * p.num_q_heads * p.head_dim, p.dtype, rng, scale_qk);
  fill_normal(x.k, p.total_tokens * p.num_kv_heads * p.head_dim, p.dtype, rng, scale_qk);
  fill_normal(x.v, p.total_tokens * p.num_kv_heads * p.head_dim, p.dtype, rng, 1.0);
  return x;
}

inline HostQKV structured_qkv(const pa_problem& p, uint64_t seed) {
  HostQKV x;
  x.hq = p.num_q_heads, x.hkv = p.num_kv_heads, x.d = p.head_dim;
  const int b = element_bytes(p.dtype);
  x.q.resize(p.total_tokens * p.num_q_heads * p.head_dim * b);
  x.k.resize(p.total_tokens * p.num_kv_heads * p.head_dim * b);
  x.v.resize(x.k.size());
  const pa_synth_params params = pa_synth_default(seed);
  check(pa_synth_generate(&p, &params, x.q.data(), x.k.data(), x.v.data()));
  return x;
}

// One sequence's chunk: queries [begin, end) at the end of keys [0, end) (a whole prompt when
// begin == 0); the problem points at this object's lengths, so it is neither copied nor moved.
struct ChunkProblem {
  int32_t cu_q[2], cu_k[2];
  pa_problem problem{};
  ChunkProblem(int begin, int end, int hq, int hkv, int d, pa_dtype dtype) : cu_q{0, end - begin}, cu_k{0, end} {
    problem.num_seqs = 1;
    problem.cu_seqlens = cu_q;
    problem.total_tokens = end - begin;
    problem.num_q_heads = hq;
    problem.num_kv_heads = hkv;
    problem.head_dim = d;
    problem.dtype = dtype;
    if (begin > 0) {
      problem.cu_seqlens_k = cu_k;
      problem.total_kv_tokens = end;
    }
  }
  ChunkProblem(const ChunkProblem&) = delete;
  ChunkProblem& operator=(const ChunkProblem&) = delete;
};

// The given-budgets tests' settings (CPU and GPU): sparse from 512 keys, a 128-token floor.
inline pa_config given_budgets_config(int head_dim, int block_size, int groups, pa_budget_mode mode) {
  pa_config c = pa_config_default(head_dim);
  c.block_size = block_size;
  c.min_budget_tokens = 128;
  c.dense_below = 512;
  c.gamma = 0.9f;
  c.num_proxy_groups = groups;
  c.budget_mode = mode;
  return c;
}

// Rows [first_row, num_kblocks) of a one-sequence plan's index (a chunk's rows), each as the
// g groups' order rows followed by the Hq counts: what two plans of the same rows agree on.
inline std::vector<std::vector<int32_t>> index_rows(const pa_plan* plan, int first_row, int num_kblocks,
                                                     int groups, int num_q_heads) {
  int64_t nrows = 0, entries = 0;
  check(pa_plan_get_layout(plan, &nrows, &entries));
  std::vector<int32_t> order(entries), count(nrows * num_q_heads);
  check(pa_plan_get_index(plan, order.data(), count.data()));
  const auto tri = [](int64_t m) { return m * (m + 1) / 2; };
  const int64_t per_group = tri(num_kblocks) - tri(first_row);
  std::vector<std::vector<int32_t>> out;
  for (int m = first_row; m < num_kblocks; ++m) {
    std::vector<int32_t> row;
    for (int j = 0; j < groups; ++j) {
      const int32_t* at = order.data() + j * per_group + tri(m) - tri(first_row);
      row.insert(row.end(), at, at + m + 1);
    }
    const auto counts = count.begin() + int64_t(m - first_row) * num_q_heads;
    row.insert(row.end(), counts, counts + num_q_heads);
    out.push_back(row);
  }
  return out;
}

// The index of an estimated plan, as kept sets [seq][head][row] (ascending).
struct KeptSets {
  std::vector<std::vector<std::vector<std::vector<int>>>> kept;
  std::vector<int32_t> budget, needed;  // [num_seqs, Hq]
};

inline KeptSets kept_sets(const Plan& plan, const Batch& batch, const pa_config& c) {
  const pa_problem& p = batch.problem();
  int64_t rows = 0, entries = 0;
  check(pa_plan_get_layout(plan.get(), &rows, &entries));
  std::vector<int32_t> order(entries), count(rows * p.num_q_heads);
  check(pa_plan_get_index(plan.get(), order.data(), count.data()));
  KeptSets out;
  out.budget.resize(size_t(p.num_seqs) * p.num_q_heads);
  out.needed.resize(out.budget.size());
  check(pa_plan_get_heads(plan.get(), out.budget.data(), out.needed.data(), nullptr));
  const int g = c.num_proxy_groups;
  int64_t qblock = 0, base = 0;
  for (int32_t len : batch.lengths()) {
    const int nqb = (len + c.block_size - 1) / c.block_size;
    std::vector<std::vector<std::vector<int>>> seq(p.num_q_heads, std::vector<std::vector<int>>(nqb));
    for (int h = 0; h < p.num_q_heads; ++h) {
      const int j = h / (p.num_q_heads / g);
      for (int m = 0; m < nqb; ++m) {
        const int32_t* row = order.data() + base + int64_t(j) * nqb * (nqb + 1) / 2 + int64_t(m) * (m + 1) / 2;
        const int32_t c_hm = count[(qblock + m) * p.num_q_heads + h];
        std::vector<int> kept(row, row + c_hm);
        std::sort(kept.begin(), kept.end());
        seq[h][m] = kept;
      }
    }
    out.kept.push_back(seq);
    qblock += nqb;
    base += int64_t(g) * nqb * (nqb + 1) / 2;
  }
  return out;
}

}  // namespace proxyattn::test
