#include "reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "ranked_rule.hpp"

namespace proxyattn::test {
namespace {
std::vector<double> to_double(const void* base, int64_t first, int64_t count, pa_dtype dtype) {
  const int bytes = dtype == PA_DTYPE_FLOAT32 ? 4 : 2;
  std::vector<float> f(count);
  pa_to_float32(dtype, static_cast<const char*>(base) + first * bytes, count, f.data());
  return std::vector<double>(f.begin(), f.end());
}

// The value x takes once stored in dtype (the library keeps proxies in the input type).
double round_to(double x, pa_dtype dtype) {
  float f = float(x);
  uint16_t h;
  if (dtype == PA_DTYPE_FLOAT32) return f;
  pa_from_float32(dtype, &f, 1, &h);
  pa_to_float32(dtype, &h, 1, &f);
  return f;
}

int ceil_div(int a, int b) { return (a + b - 1) / b; }
}  // namespace

Inputs read_inputs(const void* q, const void* k, const void* v, int64_t begin, int n, int hq,
                   int hkv, int d, pa_dtype dtype) {
  Inputs in;
  in.n = n, in.hq = hq, in.hkv = hkv, in.d = d, in.dtype = dtype;
  in.q = to_double(q, begin * hq * d, int64_t(n) * hq * d, dtype);
  in.k = to_double(k, begin * hkv * d, int64_t(n) * hkv * d, dtype);
  in.v = to_double(v, begin * hkv * d, int64_t(n) * hkv * d, dtype);
  return in;
}

std::vector<double> proxy_block_scores(const Inputs& in, const pa_config& c, const Chunk& chunk) {
  const int g = c.num_proxy_groups, s = c.stride, b = c.block_size, d = in.d;
  const int nqb = ceil_div(in.n, b), ns = ceil_div(in.n, s);
  const int qpg = in.hq / g, kpg = in.hkv / g;
  std::vector<double> A(size_t(g) * nqb * nqb, 0.0);
  for (int j = 0; j < g; ++j) {
    // Proxies at sampled positions.
    std::vector<double> qp(size_t(ns) * d), kp(size_t(ns) * d);
    for (int i = 0; i < ns; ++i)
      for (int x = 0; x < d; ++x) {
        double sq = 0, sk = 0;
        for (int h = j * qpg; h < (j + 1) * qpg; ++h) sq += in.at_q(i * s, h, x);
        for (int h = j * kpg; h < (j + 1) * kpg; ++h) sk += in.at_k(i * s, h, x);
        qp[size_t(i) * d + x] = round_to(sq / qpg, in.dtype);
        kp[size_t(i) * d + x] = round_to(sk / kpg, in.dtype);
      }
    for (int i = 0; i < ns; ++i) {
      if (i * s < chunk.known_from) continue;  // a query the call does not know
      std::vector<double> logit(i + 1);
      double mx = -std::numeric_limits<double>::infinity();
      for (int t = 0; t <= i; ++t) {
        double dot = 0;
        for (int x = 0; x < d; ++x) dot += qp[size_t(i) * d + x] * kp[size_t(t) * d + x];
        logit[t] = dot * c.softmax_scale;
        mx = std::max(mx, logit[t]);
      }
      double sum = 0;
      for (double l : logit) sum += std::exp(l - mx);
      const int m = i * s / b;
      for (int t = 0; t <= i; ++t) {
        const int n = t * s / b;
        double& a = A[(size_t(j) * nqb + m) * nqb + n];
        a = std::max(a, std::exp(logit[t] - mx) / sum);
      }
    }
  }
  return A;
}

std::vector<std::vector<double>> last_block_mass(const Inputs& in, const pa_config& c) {
  return block_mass(in, c, ceil_div(in.n, c.block_size) - 1);
}

std::vector<std::vector<double>> block_mass(const Inputs& in, const pa_config& c, int qb) {
  const int b = c.block_size, d = in.d;
  const int first = qb * b, last = std::min(in.n, first + b), rows = last - first;
  std::vector<std::vector<double>> mass(in.hq, std::vector<double>(qb + 1, 0.0));
  for (int h = 0; h < in.hq; ++h) {
    const int kv = h / (in.hq / in.hkv);
    for (int t = first; t < last; ++t) {
      std::vector<double> logit(t + 1);
      double mx = -std::numeric_limits<double>::infinity();
      for (int u = 0; u <= t; ++u) {
        double dot = 0;
        for (int x = 0; x < d; ++x) dot += in.at_q(t, h, x) * in.at_k(u, kv, x);
        logit[u] = dot * c.softmax_scale;
        mx = std::max(mx, logit[u]);
      }
      double sum = 0;
      for (double l : logit) sum += std::exp(l - mx);
      for (int u = 0; u <= t; ++u) mass[h][u / b] += std::exp(logit[u] - mx) / sum / rows;
    }
  }
  return mass;
}

int needed_count(std::vector<double> mass, double gamma) {
  std::sort(mass.begin(), mass.end(), std::greater<double>());
  const double total = std::accumulate(mass.begin(), mass.end(), 0.0);
  double prefix = 0;
  for (size_t i = 0; i < mass.size(); ++i) {
    prefix += mass[i];
    if (prefix >= gamma * total) return int(i) + 1;
  }
  return int(mass.size());
}

RefIndex reference_index(const Inputs& in, const pa_config& c, const Chunk& chunk) {
  RefIndex r;
  const int b = c.block_size, nqb = ceil_div(in.n, b), g = c.num_proxy_groups;
  const int kmin = ceil_div(c.min_budget_tokens, b);
  r.kept.assign(in.hq, std::vector<std::vector<int>>(nqb));
  r.budget.assign(in.hq, nqb);
  r.needed.assign(in.hq, nqb);
  r.anchors.assign(in.hq, {});
  if (in.n == 0 || chunk.first_query >= in.n) return r;
  // dense below dense_below keys, and for a chunk of fewer queries than a block
  const bool dense = in.n < c.dense_below || (chunk.first_query > 0 && in.n - chunk.first_query < b);
  // PA_ANCHOR_BLOCKS_AUTO: 32 anchor blocks per group at most, at least 1 per head
  const int anchor_blocks =
      c.anchor_blocks >= 0 ? c.anchor_blocks : std::min(8, std::max(1, 32 / (in.hq / g)));
  if (!dense) {
    r.scores = proxy_block_scores(in, c, chunk);
    const auto mass = last_block_mass(in, c);
    // budget_rows R: the query blocks ending at j / R of the prompt (Python's round: halves to
    // even), those the call holds whole; count_i the largest of their counts.
    std::vector<std::vector<std::vector<double>>> other_rows;
    for (int j = 1; j < c.budget_rows; ++j) {
      const int qb = std::max(0, int(std::nearbyint(double(nqb) * j / c.budget_rows)) - 1);
      if (qb * b >= chunk.first_query && qb != nqb - 1) other_rows.push_back(block_mass(in, c, qb));
    }
    for (int h = 0; h < in.hq; ++h) {
      r.needed[h] = needed_count(mass[h], c.gamma);
      for (const auto& row : other_rows) r.needed[h] = std::max(r.needed[h], needed_count(row[h], c.gamma));
      if (c.budget_rule == PA_BUDGET_RULE_RANKED) {
        // The group's ranking of the last row without anchors: sink, diagonal, then the
        // other blocks by score (ties to the lower block); the head's masses summed along it
        // until they reach 1 - s (1 - gamma) of their total.
        const int j = h / (in.hq / g), m = nqb - 1;
        const std::vector<int> ranking = anchor_free_ranking(&r.scores[(size_t(j) * nqb + m) * nqb], m, c);
        r.last_ranking.resize(g);
        r.last_ranking[j] = ranking;
        const double share = ranked_share(c);
        const double total = std::accumulate(mass[h].begin(), mass[h].end(), 0.0);
        double prefix = 0;
        int count = nqb;
        for (int i = 0; i < nqb; ++i) {
          prefix += mass[h][ranking[i]];
          if (prefix >= share * total) {
            count = i + 1;
            break;
          }
        }
        r.needed[h] = std::max(r.needed[h], count);
      }
      r.budget[h] = std::min(nqb, std::max(r.needed[h], kmin));
      // anchors: blocks by mass descending (stable: ties to the lower block), the last
      // row's forced blocks left out, the first T taken
      std::vector<int> by_mass(nqb);
      std::iota(by_mass.begin(), by_mass.end(), 0);
      std::stable_sort(by_mass.begin(), by_mass.end(),
                       [&](int a, int x) { return mass[h][a] > mass[h][x]; });
      for (int n : by_mass)
        if (int(r.anchors[h].size()) < anchor_blocks && !(c.force_sink && n == 0) &&
            !(c.force_local && n == nqb - 1))
          r.anchors[h].push_back(n);
    }
  }
  for (int h = 0; h < in.hq; ++h) {
    const int j = h / (in.hq / g);
    for (int m = chunk.first_query / b; m < nqb; ++m) {
      std::vector<int> order;  // forced blocks, ascending
      for (int n = 0; n <= m; ++n) {
        bool forced = (c.force_sink && n == 0) || (c.force_local && n == m);
        for (int o = j * (in.hq / g); o < (j + 1) * (in.hq / g); ++o)
          forced |= std::find(r.anchors[o].begin(), r.anchors[o].end(), n) != r.anchors[o].end();
        if (forced) order.push_back(n);
      }
      std::vector<int> rest;
      for (int n = 0; n <= m; ++n)
        if (std::find(order.begin(), order.end(), n) == order.end()) rest.push_back(n);
      if (!dense)
        std::stable_sort(rest.begin(), rest.end(), [&](int a, int x) {
          return r.scores[(size_t(j) * nqb + m) * nqb + a] > r.scores[(size_t(j) * nqb + m) * nqb + x];
        });
      const int forced = int(order.size());
      long keep = dense ? m + 1 : r.budget[h];
      if (!dense && c.budget_mode == PA_BUDGET_PROPORTIONAL)
        keep = std::max<long>(kmin, (long(r.needed[h]) * (m + 1) + nqb - 1) / nqb);
      std::vector<int> kept;
      if (c.anchor_mode == PA_ANCHORS_ON_TOP && !dense) {
        // The head's anchor-free kept set (only sink and diagonal forced: they come first,
        // then the other blocks by score, anchors ranked like any block), plus the anchors.
        const std::vector<int> ranking = anchor_free_ranking(&r.scores[(size_t(j) * nqb + m) * nqb], m, c);
        const long base_forced = forced_blocks(m, c);
        const long base = std::min<long>(m + 1, std::max<long>({keep, base_forced, 1}));
        kept = order;  // sink, diagonal and anchors
        for (long i = 0; i < base; ++i)
          if (std::find(kept.begin(), kept.end(), ranking[i]) == kept.end()) kept.push_back(ranking[i]);
      } else {
        order.insert(order.end(), rest.begin(), rest.end());
        keep = std::min<long>(m + 1, std::max<long>({keep, forced, 1}));
        kept.assign(order.begin(), order.begin() + keep);
      }
      std::sort(kept.begin(), kept.end());
      r.kept[h][m] = kept;
    }
  }
  return r;
}

RefOutput reference_attention(const Inputs& in, double scale, int block,
                              const std::vector<std::vector<std::vector<int>>>* kept, int first_query) {
  RefOutput out;
  out.o.assign(size_t(in.n) * in.hq * in.d, 0.0);
  out.lse.assign(size_t(in.hq) * in.n, -std::numeric_limits<double>::infinity());
  std::vector<char> allowed;
  for (int h = 0; h < in.hq; ++h) {
    const int kv = h / (in.hq / in.hkv);
    for (int t = first_query; t < in.n; ++t) {
      allowed.assign(t + 1, kept == nullptr ? 1 : 0);
      if (kept != nullptr)
        for (int n : (*kept)[h][t / block])
          for (int u = n * block; u < std::min(t + 1, (n + 1) * block); ++u) allowed[u] = 1;
      double mx = -std::numeric_limits<double>::infinity();
      std::vector<double> logit(t + 1);
      for (int u = 0; u <= t; ++u) {
        if (!allowed[u]) continue;
        double dot = 0;
        for (int x = 0; x < in.d; ++x) dot += in.at_q(t, h, x) * in.at_k(u, kv, x);
        logit[u] = dot * scale;
        mx = std::max(mx, logit[u]);
      }
      if (mx == -std::numeric_limits<double>::infinity()) continue;
      double sum = 0;
      for (int u = 0; u <= t; ++u)
        if (allowed[u]) sum += std::exp(logit[u] - mx);
      for (int u = 0; u <= t; ++u) {
        if (!allowed[u]) continue;
        const double p = std::exp(logit[u] - mx) / sum;
        for (int x = 0; x < in.d; ++x) out.o[(size_t(t) * in.hq + h) * in.d + x] += p * in.at_v(u, kv, x);
      }
      out.lse[size_t(h) * in.n + t] = mx + std::log(sum);
    }
  }
  return out;
}

double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace proxyattn::test
