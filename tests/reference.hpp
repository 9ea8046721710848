// Independent fp64 references of every ProxyAttn step (ALGORITHM.md), written naively
// and straight from the specification, for the CPU and GPU tests.
#pragma once

#include <cstdint>
#include <vector>

#include "proxyattn/proxyattn.h"

namespace proxyattn::test {

// One sequence's Q [N, Hq, d], K and V [N, Hkv, d] in double (read from any dtype).
struct Inputs {
  int n = 0, hq = 0, hkv = 0, d = 0;
  pa_dtype dtype = PA_DTYPE_FLOAT32;
  std::vector<double> q, k, v;
  double at_q(int t, int h, int c) const { return q[(size_t(t) * hq + h) * d + c]; }
  double at_k(int t, int h, int c) const { return k[(size_t(t) * hkv + h) * d + c]; }
  double at_v(int t, int h, int c) const { return v[(size_t(t) * hkv + h) * d + c]; }
};

// Reads sequence [begin, begin + n) of contiguous packed tensors of dtype.
Inputs read_inputs(const void* q, const void* k, const void* v, int64_t begin, int n, int hq,
                   int hkv, int d, pa_dtype dtype);

// Chunked prefill (ALGORITHM.md, "Chunked prefill"): the call's queries are positions
// [first_query, n) of the sequence in Inputs; the proxy scores see the sampled queries from
// known_from on (first_query for a call without an estimation state, 0 with one).
struct Chunk {
  int first_query = 0;
  int known_from = 0;
};

// Step 4: A [g][Nqb][Nqb] (entries n > m are 0), from proxies stored in dtype.
std::vector<double> proxy_block_scores(const Inputs& in, const pa_config& c, const Chunk& chunk = {});

// Step 5: per head the mass per key block of the last query block, averaged over rows.
std::vector<std::vector<double>> last_block_mass(const Inputs& in, const pa_config& c);

// Step 5 on query block qb: per head the mass per key block 0..qb, averaged over its rows.
std::vector<std::vector<double>> block_mass(const Inputs& in, const pa_config& c, int qb);

// count_i: smallest k with the k largest masses summing to >= gamma * total.
int needed_count(std::vector<double> mass, double gamma);

// Steps 5-6 assembled: kept block sets per (head, row) [Hq][Nqb][kept blocks ascending].
struct RefIndex {
  std::vector<int> budget, needed;                    // [Hq]
  std::vector<std::vector<int>> anchors;              // [Hq][<= anchor_blocks]
  std::vector<std::vector<std::vector<int>>> kept;    // [Hq][Nqb] sorted ascending
  std::vector<double> scores;                         // A, [g][Nqb][Nqb]
  std::vector<std::vector<int>> last_ranking;         // [g][Nqb]: PA_BUDGET_RULE_RANKED's order
                                                      //   of the last row (empty otherwise)
};
// Rows of the chunk's query blocks (first_query / b ..); kept rows before it stay empty.
RefIndex reference_index(const Inputs& in, const pa_config& c, const Chunk& chunk = {});

// Attention of every head with keys restricted to kept[h][m] (and causal); O [N, Hq, d],
// LSE [Hq, N]. kept == nullptr means dense causal. Rows without keys: O = 0, LSE = -inf.
// Only the queries from first_query on are computed (earlier rows stay 0 and -inf).
struct RefOutput {
  std::vector<double> o, lse;
};
RefOutput reference_attention(const Inputs& in, double scale, int block,
                              const std::vector<std::vector<std::vector<int>>>* kept,
                              int first_query = 0);

// ||a - b|| / ||b|| over all elements.
double relative_error(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace proxyattn::test
