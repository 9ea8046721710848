// Chunked prefill on the CPU backend (ALGORITHM.md, "Chunked prefill and queries at an
// offset"): a prompt prefilled chunk by chunk, with keys packed or in a paged cache, with and
// without an estimation state, against one-shot prefills of the prompt cut at each chunk's end
// and against the fp64 reference; decode steps; mixed batches; every refused input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "index_compare.hpp"
#include "reference.hpp"

namespace proxyattn::test {
namespace {

constexpr int kHq = 4, kHkv = 2, kD = 32;

pa_config small_config(int groups) {
  pa_config c = pa_config_default(kD);
  c.block_size = 64;
  c.min_budget_tokens = 256;
  c.dense_below = 512;
  c.gamma = 0.8f;
  c.num_proxy_groups = groups;
  return c;
}

// A whole prompt: Q [n, Hq, d], K and V [n, Hkv, d] in float32, structured.
struct Prompt {
  int n;
  HostQKV x;
};

Prompt make_prompt(int n, uint64_t seed) {
  const Batch batch({n}, kHq, kHkv, kD, PA_DTYPE_FLOAT32);
  return Prompt{n, structured_qkv(batch.problem(), seed)};
}

const float* row_of(const std::vector<uint8_t>& bytes, int64_t token, int heads) {
  return reinterpret_cast<const float*>(bytes.data()) + token * heads * kD;
}

// A paged cache of one prompt's K and V: pages in a shuffled order, as an engine hands them out.
struct PagedCache {
  int page_size, num_pages, max_pages;
  std::vector<float> k, v;        // [num_pages * page_size, Hkv, d]
  std::vector<int32_t> table;     // [1, max_pages]
  std::vector<uint8_t> state;     // pa_proxy_state_bytes
  pa_proxy_state proxy_state{};
};

PagedCache make_cache(int page_size, int n, uint64_t seed) {
  PagedCache c;
  c.page_size = page_size;
  c.max_pages = (n + page_size - 1) / page_size;
  c.num_pages = c.max_pages + 3;  // pages no sequence uses stay in the cache
  c.k.assign(size_t(c.num_pages) * page_size * kHkv * kD, std::numeric_limits<float>::quiet_NaN());
  c.v = c.k;
  std::vector<int32_t> pages(c.num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937_64(seed));
  c.table.assign(pages.begin(), pages.begin() + c.max_pages);
  return c;
}

// Writes positions [begin, end) of the prompt's K and V into the cache (the engine's append).
void append(PagedCache& c, const Prompt& p, int begin, int end) {
  for (int t = begin; t < end; ++t) {
    const int64_t row = int64_t(c.table[t / c.page_size]) * c.page_size + t % c.page_size;
    std::memcpy(&c.k[row * kHkv * kD], row_of(p.x.k, t, kHkv), sizeof(float) * kHkv * kD);
    std::memcpy(&c.v[row * kHkv * kD], row_of(p.x.v, t, kHkv), sizeof(float) * kHkv * kD);
  }
}

// What one call returned: its index rows [head][absolute row] (kept sets ascending, rows before
// the chunk empty), budgets and outputs of its queries.
struct CallResult {
  std::vector<std::vector<std::vector<int>>> kept;
  std::vector<int32_t> budget, needed;
  std::vector<float> o;    // [q_len, Hq, d]
  std::vector<float> lse;  // [Hq, q_len]
  pa_plan_stats stats{};
};

// A host plan of a problem with its storage and workspace (freed with it).
struct HostPlan {
  std::vector<uint8_t> storage, work;
  pa_plan* plan = nullptr;
  HostPlan(const pa_problem& prob, const pa_config& c) {
    size_t plan_bytes = 0, work_bytes = 0;
    check(pa_plan_bytes(&prob, &c, &plan_bytes));
    check(pa_workspace_bytes(&prob, &c, &work_bytes));
    storage.resize(plan_bytes), work.resize(work_bytes);
    check(pa_plan_create(&prob, &c, storage.data(), plan_bytes, &plan));
  }
  ~HostPlan() { pa_plan_free(plan); }
  HostPlan(const HostPlan&) = delete;
  HostPlan& operator=(const HostPlan&) = delete;
  pa_status forward(const pa_tensor& q, const pa_kv_cache& kv, pa_tensor o, float* lse) {
    return pa_forward_kv(plan, &q, &kv, &o, lse, work.data(), work.size(), nullptr);
  }
};

// The index of a one-sequence plan unpacked by docs/index_format.md: rows m0 .. Nkb - 1 of
// m + 1 entries, group after group.
void unpack_index(const pa_plan* plan, const pa_config& c, int q_len, int kv_len, CallResult& r) {
  int64_t rows = 0, entries = 0;
  ASSERT_EQ(pa_plan_get_layout(plan, &rows, &entries), PA_STATUS_SUCCESS);
  std::vector<int32_t> order(entries), count(rows * kHq);
  ASSERT_EQ(pa_plan_get_index(plan, order.data(), count.data()), PA_STATUS_SUCCESS);
  const int b = c.block_size, nkb = (kv_len + b - 1) / b, m0 = (kv_len - q_len) / b;
  ASSERT_EQ(rows, nkb - m0);
  const int64_t group_entries = int64_t(nkb) * (nkb + 1) / 2 - int64_t(m0) * (m0 + 1) / 2;
  ASSERT_EQ(entries, group_entries * c.num_proxy_groups);
  r.kept.assign(kHq, std::vector<std::vector<int>>(nkb));
  for (int h = 0; h < kHq; ++h) {
    const int j = h / (kHq / c.num_proxy_groups);
    for (int m = m0; m < nkb; ++m) {
      const int32_t* row = order.data() + j * group_entries + int64_t(m) * (m + 1) / 2 - int64_t(m0) * (m0 + 1) / 2;
      std::vector<int> kept(row, row + count[(m - m0) * kHq + h]);
      std::sort(kept.begin(), kept.end());
      r.kept[h][m] = kept;
    }
  }
  r.budget.resize(kHq);
  r.needed.resize(kHq);
  ASSERT_EQ(pa_plan_get_heads(plan, r.budget.data(), r.needed.data(), nullptr), PA_STATUS_SUCCESS);
  ASSERT_EQ(pa_plan_get_stats(plan, &r.stats), PA_STATUS_SUCCESS);
}

// One pa_forward_kv call for the chunk [begin, end) of the prompt. cache == nullptr: K and V
// packed [0, end). With a cache, the chunk's K and V are appended to it first.
CallResult run_chunk(const Prompt& p, const pa_config& c, int begin, int end, PagedCache* cache,
                     bool with_state) {
  const int q_len = end - begin;
  const int32_t cu_q[2] = {0, q_len}, cu_k[2] = {0, end};
  pa_problem prob{};
  prob.num_seqs = 1, prob.cu_seqlens = cu_q, prob.total_tokens = q_len;
  prob.num_q_heads = kHq, prob.num_kv_heads = kHkv, prob.head_dim = kD, prob.dtype = PA_DTYPE_FLOAT32;
  prob.cu_seqlens_k = cu_k, prob.total_kv_tokens = end;
  pa_kv_cache kv{};
  if (cache != nullptr) {
    append(*cache, p, begin, end);
    prob.page_size = cache->page_size, prob.num_pages = cache->num_pages;
    prob.max_pages_per_seq = cache->max_pages;
    kv.k = pa_tensor_contiguous(cache->k.data(), kHkv, kD);
    kv.v = pa_tensor_contiguous(cache->v.data(), kHkv, kD);
    kv.block_table = cache->table.data();
    if (with_state) {
      if (cache->state.empty()) {
        size_t bytes = 0;
        check(pa_proxy_state_bytes(&prob, &c, &bytes));
        cache->state.assign(bytes, 0xff);
        check(pa_proxy_state_make(&prob, &c, cache->state.data(), bytes, &cache->proxy_state));
      }
      kv.proxy_state = &cache->proxy_state;
    }
  } else {
    kv.k = pa_tensor_contiguous(const_cast<uint8_t*>(p.x.k.data()), kHkv, kD);
    kv.v = pa_tensor_contiguous(const_cast<uint8_t*>(p.x.v.data()), kHkv, kD);
  }
  pa_tensor q = pa_tensor_contiguous(const_cast<float*>(row_of(p.x.q, begin, kHq)), kHq, kD);
  CallResult r;
  r.o.assign(size_t(q_len) * kHq * kD, std::numeric_limits<float>::quiet_NaN());
  r.lse.assign(size_t(kHq) * q_len, std::numeric_limits<float>::quiet_NaN());
  pa_tensor o = pa_tensor_contiguous(r.o.data(), kHq, kD);
  HostPlan plan(prob, c);
  EXPECT_EQ(plan.forward(q, kv, o, r.lse.data()), PA_STATUS_SUCCESS) << pa_last_error();
  unpack_index(plan.plan, c, q_len, end, r);
  return r;
}

// A one-shot prefill of the prompt cut at `end` (the whole-prompt entry point).
CallResult run_one_shot(const Prompt& p, const pa_config& c, int end) {
  const Batch batch({end}, kHq, kHkv, kD, PA_DTYPE_FLOAT32);
  HostQKV x = p.x;
  Plan plan = Plan::on_host(batch.problem(), c);
  CallResult r;
  r.o.assign(size_t(end) * kHq * kD, 0.0f);
  r.lse.assign(size_t(kHq) * end, 0.0f);
  pa_tensor q = x.tq(), k = x.tk(), v = x.tv(), o = pa_tensor_contiguous(r.o.data(), kHq, kD);
  size_t work_bytes = 0;
  check(pa_workspace_bytes(&batch.problem(), &c, &work_bytes));
  std::vector<uint8_t> work(work_bytes);
  check(pa_forward(plan.get(), &q, &k, &v, &o, r.lse.data(), work.data(), work_bytes, nullptr));
  unpack_index(plan.get(), c, end, end, r);
  return r;
}

// Largest |a - b| / max(1, |b|) over the chunk's queries [begin, end): chunk outputs against the
// one-shot outputs of the same positions.
double output_difference(const CallResult& chunk, const CallResult& whole, int begin, int end) {
  double worst = 0;
  for (int t = begin; t < end; ++t)
    for (int e = 0; e < kHq * kD; ++e) {
      const double a = chunk.o[size_t(t - begin) * kHq * kD + e], b = whole.o[size_t(t) * kHq * kD + e];
      worst = std::max(worst, std::abs(a - b) / std::max(1.0, std::abs(b)));
    }
  for (int h = 0; h < kHq; ++h)
    for (int t = begin; t < end; ++t) {
      const double a = chunk.lse[size_t(h) * (end - begin) + t - begin], b = whole.lse[size_t(h) * end + t];
      worst = std::max(worst, std::abs(a - b) / std::max(1.0, std::abs(b)));
    }
  return worst;
}

std::vector<int> chunk_ends(int n, int chunk) {
  std::vector<int> ends;
  for (int e = chunk; e < n; e += chunk) ends.push_back(e);
  ends.push_back(n);
  return ends;
}

struct ChunkCase {
  int chunk;       // queries per call
  int page_size;   // 0: packed keys
  bool state;      // an estimation state beside the cache
  int groups;
};

std::string case_name(const testing::TestParamInfo<ChunkCase>& info) {
  const ChunkCase& c = info.param;
  return "chunk" + std::to_string(c.chunk) + (c.page_size ? "_page" + std::to_string(c.page_size) : "_packed") +
         (c.state ? "_state" : "") + "_g" + std::to_string(c.groups);
}

class ChunkedPrefill : public testing::TestWithParam<ChunkCase> {};

// Every chunk of at least a block gives the index rows and outputs of a one-shot prefill of the
// prompt cut at its end; rows wholly inside the chunk always, a chunk's partial first row when
// the state holds the block's earlier queries (or the chunk starts on a block boundary). A
// shorter chunk runs dense and matches the fp64 dense reference.
TEST_P(ChunkedPrefill, EveryChunkEqualsTheOneShotPrefillCutAtItsEnd) {
  const ChunkCase cc = GetParam();
  const pa_config c = small_config(cc.groups);
  const Prompt p = make_prompt(2600, 7);
  PagedCache cache = make_cache(cc.page_size > 0 ? cc.page_size : 16, p.n, 3);
  int begin = 0;
  for (int end : chunk_ends(p.n, cc.chunk)) {
    SCOPED_TRACE("chunk [" + std::to_string(begin) + ", " + std::to_string(end) + ")");
    const CallResult chunk = run_chunk(p, c, begin, end, cc.page_size > 0 ? &cache : nullptr, cc.state);
    const int m0 = begin / c.block_size, nkb = (end + c.block_size - 1) / c.block_size;
    if (end - begin < c.block_size && begin > 0) {  // a short chunk: dense attention
      EXPECT_EQ(chunk.stats.dense_seqs, 1);
      const Inputs in = read_inputs(p.x.q.data(), p.x.k.data(), p.x.v.data(), 0, end, kHq, kHkv, kD,
                                    PA_DTYPE_FLOAT32);
      const RefOutput ref = reference_attention(in, c.softmax_scale, c.block_size, nullptr, begin);
      for (int t = begin; t < end; ++t)
        for (int h = 0; h < kHq; ++h) {
          EXPECT_NEAR(chunk.lse[size_t(h) * (end - begin) + t - begin], ref.lse[size_t(h) * end + t], 1e-4);
          for (int e = 0; e < kD; ++e)
            EXPECT_NEAR(chunk.o[(size_t(t - begin) * kHq + h) * kD + e], ref.o[(size_t(t) * kHq + h) * kD + e], 1e-4);
        }
      begin = end;
      continue;
    }
    const CallResult whole = run_one_shot(p, c, end);
    if (end >= 1280) EXPECT_LT(chunk.stats.density, 0.9);  // the chunk really ran sparse
    const bool exact_first_row = cc.state || begin % c.block_size == 0;
    EXPECT_EQ(chunk.budget, whole.budget);
    EXPECT_EQ(chunk.needed, whole.needed);
    for (int h = 0; h < kHq; ++h)
      for (int m = exact_first_row ? m0 : m0 + 1; m < nkb; ++m)
        EXPECT_EQ(chunk.kept[h][m], whole.kept[h][m]) << "head " << h << " row " << m;
    if (exact_first_row) EXPECT_LT(output_difference(chunk, whole, begin, end), 1e-5);
    begin = end;
  }
}

INSTANTIATE_TEST_SUITE_P(Chunks, ChunkedPrefill,
                         testing::Values(ChunkCase{640, 0, false, 1}, ChunkCase{700, 0, false, 1},
                                         ChunkCase{640, 64, true, 1}, ChunkCase{700, 16, true, 2},
                                         ChunkCase{700, 128, false, 2}, ChunkCase{1000, 256, true, 1}),
                         case_name);

// A chunk's index against the independent fp64 reference of the prompt cut at its end, with
// the chunk's queries known from its start (no state) or from the sequence's start (a state).
TEST(ChunkedPrefillReference, ChunkIndexMatchesTheReference) {
  const pa_config c = small_config(1);
  const Prompt p = make_prompt(2000, 11);
  for (const bool state : {false, true}) {
    PagedCache cache = make_cache(64, p.n, 5);
    run_chunk(p, c, 0, 1100, &cache, state);                // the prefix, into the cache
    const CallResult r = run_chunk(p, c, 1100, 2000, &cache, state);  // starts inside block 17
    const Inputs in = read_inputs(p.x.q.data(), p.x.k.data(), p.x.v.data(), 0, 2000, kHq, kHkv, kD,
                                  PA_DTYPE_FLOAT32);
    const RefIndex ref = reference_index(in, c, Chunk{1100, state ? 0 : 1100});
    const IndexDiff diff = compare_index(r.kept, r.needed.data(), ref, in, c, 1e-4, 1e-4);
    EXPECT_GT(diff.rows, 0);
    EXPECT_LE(diff.tie_rows, 1) << "state " << state;
    // Outputs and LSE of the chunk's queries against fp64 attention over the reference's blocks.
    const RefOutput out = reference_attention(in, c.softmax_scale, c.block_size, &ref.kept, 1100);
    double worst = 0;
    for (int t = 1100; t < 2000; ++t)
      for (int e = 0; e < kHq * kD; ++e)
        worst = std::max(worst, std::abs(r.o[size_t(t - 1100) * kHq * kD + e] - out.o[size_t(t) * kHq * kD + e]));
    if (diff.tie_rows == 0) EXPECT_LT(worst, 1e-4) << "state " << state;
  }
}

// The same chunk through pages of every size gives the same bits as through packed keys.
TEST(ChunkedPrefillPaged, PagedEqualsPackedAtEveryPageSize) {
  const pa_config c = small_config(2);
  const Prompt p = make_prompt(1900, 13);
  const CallResult packed = run_chunk(p, c, 1000, 1900, nullptr, false);
  for (int page : {16, 32, 64, 128, 256}) {
    PagedCache cache = make_cache(page, p.n, uint64_t(page));
    append(cache, p, 0, 1000);
    const CallResult paged = run_chunk(p, c, 1000, 1900, &cache, false);
    EXPECT_EQ(paged.kept, packed.kept) << "page " << page;
    EXPECT_EQ(paged.o, packed.o) << "page " << page;
    EXPECT_EQ(paged.lse, packed.lse) << "page " << page;
  }
}

// Decode: one query at the end of a long cache runs dense through the same call.
TEST(ChunkedPrefillDecode, OneQueryAgainstTheCacheIsDenseAttention) {
  const pa_config c = small_config(1);
  const Prompt p = make_prompt(1500, 17);
  PagedCache cache = make_cache(16, p.n, 9);
  run_chunk(p, c, 0, 1499, &cache, true);
  const CallResult r = run_chunk(p, c, 1499, 1500, &cache, true);
  EXPECT_EQ(r.stats.dense_seqs, 1);
  const Inputs in = read_inputs(p.x.q.data(), p.x.k.data(), p.x.v.data(), 0, 1500, kHq, kHkv, kD,
                                PA_DTYPE_FLOAT32);
  const RefOutput ref = reference_attention(in, c.softmax_scale, c.block_size, nullptr, 1499);
  for (int h = 0; h < kHq; ++h) {
    EXPECT_NEAR(r.lse[h], ref.lse[size_t(h) * 1500 + 1499], 1e-4);
    for (int e = 0; e < kD; ++e) EXPECT_NEAR(r.o[h * kD + e], ref.o[(size_t(1499) * kHq + h) * kD + e], 1e-4);
  }
}

// A varlen batch of a chunk, a decode step, a whole short prompt and a sequence without new
// queries equals its sequences run one by one.
TEST(ChunkedPrefillBatch, MixedBatchEqualsSeparateCalls) {
  const pa_config c = small_config(1);
  const Prompt p = make_prompt(2200, 19);
  struct Seq { int begin, end; };
  const Seq seqs[] = {{1300, 2200}, {999, 1000}, {0, 300}, {500, 500}};
  std::vector<int32_t> cu_q{0}, cu_k{0};
  std::vector<float> q, k, v;
  for (const Seq& s : seqs) {
    cu_q.push_back(cu_q.back() + s.end - s.begin);
    cu_k.push_back(cu_k.back() + s.end);
    const float* qb = row_of(p.x.q, s.begin, kHq);
    q.insert(q.end(), qb, qb + size_t(s.end - s.begin) * kHq * kD);
    k.insert(k.end(), row_of(p.x.k, 0, kHkv), row_of(p.x.k, s.end, kHkv));
    v.insert(v.end(), row_of(p.x.v, 0, kHkv), row_of(p.x.v, s.end, kHkv));
  }
  pa_problem prob{};
  prob.num_seqs = 4, prob.cu_seqlens = cu_q.data(), prob.total_tokens = cu_q.back();
  prob.num_q_heads = kHq, prob.num_kv_heads = kHkv, prob.head_dim = kD, prob.dtype = PA_DTYPE_FLOAT32;
  prob.cu_seqlens_k = cu_k.data(), prob.total_kv_tokens = cu_k.back();
  HostPlan plan(prob, c);
  std::vector<float> o(q.size()), lse(size_t(kHq) * prob.total_tokens);
  pa_tensor tq = pa_tensor_contiguous(q.data(), kHq, kD), to = pa_tensor_contiguous(o.data(), kHq, kD);
  const pa_kv_cache kv{pa_tensor_contiguous(k.data(), kHkv, kD), pa_tensor_contiguous(v.data(), kHkv, kD),
                       nullptr, nullptr};
  ASSERT_EQ(plan.forward(tq, kv, to, lse.data()), PA_STATUS_SUCCESS) << pa_last_error();
  pa_plan_stats stats{};
  check(pa_plan_get_stats(plan.plan, &stats));
  EXPECT_EQ(stats.dense_seqs, 2);  // the decode step and the 300-token prompt
  for (int i = 0; i < 4; ++i) {
    const Seq s = seqs[i];
    if (s.end == s.begin) continue;
    const CallResult one = run_chunk(p, c, s.begin, s.end, nullptr, false);
    for (int t = 0; t < s.end - s.begin; ++t)
      for (int e = 0; e < kHq * kD; ++e)
        EXPECT_EQ(o[size_t(cu_q[i] + t) * kHq * kD + e], one.o[size_t(t) * kHq * kD + e]) << "seq " << i;
    for (int h = 0; h < kHq; ++h)
      for (int t = 0; t < s.end - s.begin; ++t)
        EXPECT_EQ(lse[size_t(h) * prob.total_tokens + cu_q[i] + t], one.lse[size_t(h) * (s.end - s.begin) + t]);
  }
}

// ---- refused inputs: a status naming the argument, nothing written -------------------
class ChunkedErrors : public testing::Test {
 protected:
  void SetUp() override {
    prob.num_seqs = 1, prob.cu_seqlens = cu_q, prob.total_tokens = 200;
    prob.num_q_heads = kHq, prob.num_kv_heads = kHkv, prob.head_dim = kD, prob.dtype = PA_DTYPE_FLOAT32;
    prob.cu_seqlens_k = cu_k, prob.total_kv_tokens = 1000;
    prob.page_size = 64, prob.num_pages = 20, prob.max_pages_per_seq = 16;
    q.assign(size_t(200) * kHq * kD, 1.0f);
    cache.assign(size_t(20) * 64 * kHkv * kD, 0.5f);
    o.assign(q.size(), 7.0f);
    lse.assign(size_t(kHq) * 200, 7.0f);
    for (int i = 0; i < 16; ++i) table[i] = 19 - i;
  }
  // Expects status from a whole call on the current problem and kv, outputs untouched.
  void expect_refused(pa_status want, const char* fragment, const pa_proxy_state* state = nullptr) {
    size_t plan_bytes = 0;
    pa_status s = pa_plan_bytes(&prob, &c, &plan_bytes);
    if (s == PA_STATUS_SUCCESS) {
      HostPlan plan(prob, c);
      s = plan.forward(pa_tensor_contiguous(q.data(), kHq, kD), kv(state), pa_tensor_contiguous(o.data(), kHq, kD),
                       lse.data());
    }
    EXPECT_EQ(s, want) << pa_last_error();
    EXPECT_NE(std::string(pa_last_error()).find(fragment), std::string::npos) << pa_last_error();
    EXPECT_TRUE(std::all_of(o.begin(), o.end(), [](float x) { return x == 7.0f; }));
    EXPECT_TRUE(std::all_of(lse.begin(), lse.end(), [](float x) { return x == 7.0f; }));
  }
  pa_kv_cache kv(const pa_proxy_state* state) {
    return pa_kv_cache{pa_tensor_contiguous(cache.data(), kHkv, kD), pa_tensor_contiguous(cache.data(), kHkv, kD),
                       table, state};
  }
  pa_config c = small_config(1);
  pa_problem prob{};
  int32_t cu_q[2] = {0, 200}, cu_k[2] = {0, 1000};
  int32_t table[16];
  std::vector<float> q, cache, o, lse;
};

TEST_F(ChunkedErrors, ValidCallSucceeds) {
  HostPlan plan(prob, c);
  pa_tensor tq = pa_tensor_contiguous(q.data(), kHq, kD), to = pa_tensor_contiguous(o.data(), kHq, kD);
  EXPECT_EQ(plan.forward(tq, kv(nullptr), to, lse.data()), PA_STATUS_SUCCESS) << pa_last_error();
  pa_tensor tk = kv(nullptr).k, tv = kv(nullptr).v;
  EXPECT_EQ(pa_forward(plan.plan, &tq, &tk, &tv, &to, lse.data(), plan.work.data(), plan.work.size(), nullptr),
            PA_STATUS_INVALID_SHAPE);  // a paged plan needs its block table
  EXPECT_NE(std::string(pa_last_error()).find("pa_forward_kv"), std::string::npos);
}

TEST_F(ChunkedErrors, MoreQueriesThanKeys) {
  cu_q[1] = 1001, prob.total_tokens = 1001;
  expect_refused(PA_STATUS_INVALID_SEQLENS, "exceeds kv_len");
}

TEST_F(ChunkedErrors, InconsistentKeyLengths) {
  cu_k[1] = 999;
  expect_refused(PA_STATUS_INVALID_SEQLENS, "total_kv_tokens");
  cu_k[0] = 1;
  expect_refused(PA_STATUS_INVALID_SEQLENS, "cu_seqlens_k[0]");
}

TEST_F(ChunkedErrors, PageOutsideTheCache) {
  table[3] = 20;
  expect_refused(PA_STATUS_INVALID_SHAPE, "kv.block_table[0][3] = 20");
  table[3] = -1;
  expect_refused(PA_STATUS_INVALID_SHAPE, "kv.block_table[0][3] = -1");
}

TEST_F(ChunkedErrors, PageSizeTheEstimationStateCannotHold) {
  prob.page_size = 30, prob.num_pages = 40, prob.max_pages_per_seq = 34;
  size_t bytes = 0;
  EXPECT_EQ(pa_proxy_state_bytes(&prob, &c, &bytes), PA_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(pa_last_error()).find("problem.page_size = 30"), std::string::npos) << pa_last_error();
}

// Pages of any size serve a call without a state (SGLang's token-level pool has pages of 1).
TEST(ChunkedPrefillPaged, PagesOfOneTokenWithoutAState) {
  const pa_config c = small_config(1);
  const Prompt p = make_prompt(1300, 23);
  const CallResult packed = run_chunk(p, c, 700, 1300, nullptr, false);
  PagedCache cache = make_cache(1, p.n, 29);
  append(cache, p, 0, 700);
  const CallResult paged = run_chunk(p, c, 700, 1300, &cache, false);
  EXPECT_EQ(paged.kept, packed.kept);
  EXPECT_EQ(paged.o, packed.o);
}

TEST_F(ChunkedErrors, BlockTableTooShort) {
  prob.max_pages_per_seq = 15;
  expect_refused(PA_STATUS_INVALID_SHAPE, "max_pages_per_seq = 15");
}

TEST_F(ChunkedErrors, StateMadeForOtherShapes) {
  pa_config other = c;
  other.num_proxy_groups = 2;
  size_t bytes = 0;
  check(pa_proxy_state_bytes(&prob, &other, &bytes));
  std::vector<uint8_t> data(bytes);
  pa_proxy_state state{};
  check(pa_proxy_state_make(&prob, &other, data.data(), bytes, &state));
  expect_refused(PA_STATUS_PLAN_MISMATCH, "kv.proxy_state.num_proxy_groups = 2", &state);
  pa_problem fewer = prob;
  fewer.num_pages = 19;
  check(pa_proxy_state_make(&fewer, &c, data.data(), bytes, &state));
  expect_refused(PA_STATUS_PLAN_MISMATCH, "kv.proxy_state.num_pages = 19", &state);
  EXPECT_EQ(pa_proxy_state_make(&prob, &c, data.data(), 10, &state), PA_STATUS_BUFFER_TOO_SMALL);
  // A dtype outside pa_dtype, stored as a C caller can: read as the int (issue 26, UBSan).
  check(pa_proxy_state_make(&prob, &c, data.data(), bytes, &state));
  const int32_t not_a_dtype = 9;
  std::memcpy(&state.dtype, &not_a_dtype, sizeof not_a_dtype);
  expect_refused(PA_STATUS_PLAN_MISMATCH, "kv.proxy_state.dtype = 9", &state);
}

TEST_F(ChunkedErrors, PagedFieldsWithoutKeyLengths) {
  prob.cu_seqlens_k = nullptr;
  expect_refused(PA_STATUS_NULL_POINTER, "cu_seqlens_k is NULL");
}

}  // namespace
}  // namespace proxyattn::test
