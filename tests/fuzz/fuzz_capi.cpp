// Fuzz target over the C API's descriptions: the problem (lengths, heads, head_dim, dtype, the
// chunked-prefill fields and the paged cache), the config, the tuning, the tensor views (strides,
// alignment, overlap), the block table and the estimation state, and the index given through
// pa_plan_set_index. An input is read as a stream of choices (Input below): each field is most
// often valid and sometimes any int, so that the fuzzer reaches both the checks and the compute
// behind them.
//
// What it checks beyond the sanitizers (a violation traps, which libFuzzer reports as a crash):
//   - every call returns a pa_status, and a failure leaves a message in pa_last_error();
//   - a failed call leaves its outputs as they were (sizes, O, LSE, the plan's inputs);
//   - buffers are allocated to the exact extent their description gives, so that a read or
//     write the library's checks should have stopped lands outside them (AddressSanitizer);
//   - an estimated plan passes pa_plan_check, and attention over finite inputs is finite
//     (NaN only where an input is NaN), equal to pa_dense_attention when every sequence runs
//     dense.
// Built as a libFuzzer target (clang, -fsanitize=fuzzer) or, with any compiler, linked with
// replay_main.cpp, which replays files and runs a bounded random-mutation loop.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "c_callers.h"
#include "proxyattn/proxyattn.h"
#include "proxyattn/proxyattn_tuning.h"

namespace {

[[noreturn]] void violated(const char* what, pa_status status) {
  std::fprintf(stderr, "fuzz_capi: invariant violated: %s (status %d %s, message \"%s\")\n", what, int(status),
               pa_status_string(status), pa_last_error());
  std::abort();
}
#define CHECK(cond, what, status) \
  do {                            \
    if (!(cond)) violated(what, status); \
  } while (0)

// The fuzzer's bytes as a stream of choices; zeros once they run out.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  uint8_t byte() { return n_ ? (--n_, *p_++) : 0; }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(byte()) << (8 * i);
    return v;
  }
  int32_t i32() { const uint32_t u = u32(); int32_t v; std::memcpy(&v, &u, 4); return v; }
  int64_t i64() { const uint64_t u = uint64_t(u32()) | uint64_t(u32()) << 32; int64_t v; std::memcpy(&v, &u, 8); return v; }
  float f32() { const uint32_t u = u32(); float f; std::memcpy(&f, &u, 4); return f; }
  // An int in [lo, hi].
  int32_t range(int32_t lo, int32_t hi) { return lo + int32_t(u32() % uint32_t(int64_t(hi) - lo + 1)); }
  // True with probability about n / 256.
  bool chance(int n) { return byte() < n; }
  // A value that breaks a field: limits, zero, negatives, or any int.
  int32_t weird32() {
    static const int32_t kEdges[] = {0, -1, 1, 2, 3, 7, 255, 256, 65536, INT32_MAX, INT32_MIN, INT32_MAX / 2 + 1, -65536};
    const uint8_t k = byte();
    return k < 200 ? kEdges[k % (sizeof kEdges / sizeof *kEdges)] : i32();
  }
  int64_t weird64() {
    static const int64_t kEdges[] = {0, -1, int64_t(INT32_MAX) + 1, INT64_MAX, INT64_MIN, int64_t(1) << 40, 3};
    const uint8_t k = byte();
    return k < 200 ? kEdges[k % (sizeof kEdges / sizeof *kEdges)] : i64();
  }
  size_t left() const { return n_; }

 private:
  const uint8_t* p_;
  size_t n_;
};

// Stores any int into a 32-bit enum field as a C caller can (C++ cannot assign it directly).
template <typename E>
void set_raw(E& field, int32_t value) {
  static_assert(sizeof(E) == sizeof(int32_t));
  std::memcpy(&field, &value, sizeof value);
}

int element_bytes(int32_t dtype) { return dtype == PA_DTYPE_FLOAT32 ? 4 : 2; }

bool valid_status(pa_status s) {
  int32_t raw;
  std::memcpy(&raw, &s, 4);
  return raw >= PA_STATUS_SUCCESS && raw <= PA_STATUS_MEMORY_SPACE;
}

// A failed call: a known status and a message.
void expect_reported(pa_status s, const char* call) {
  CHECK(valid_status(s), call, s);
  if (s != PA_STATUS_SUCCESS) CHECK(pa_last_error()[0] != '\0', call, s);
  CHECK(std::strcmp(pa_status_string(s), "PA_STATUS_UNKNOWN") != 0, call, s);
}

// Larger descriptions are validated only: an input stays well under a second with the
// sanitizers (a 16 MiB view took about one).
constexpr int64_t kMaxBufferBytes = int64_t(4) << 20;
constexpr int64_t kMaxGivenHeads = int64_t(1) << 16;  // (sequence, head) entries of a given-budgets call
constexpr double kMaxWork = 5e5;  // q x kv x Hq x d of a computed call

// A [rows, heads, d] view over exactly the bytes its strides reach (AddressSanitizer reports any
// access past them), or no buffer when those bytes are not representable or too many.
struct View {
  pa_tensor t{};
  std::vector<uint8_t> bytes;
  bool allocated = false;  // t.data spans the view's full extent
  bool negative = false;   // a stride the library must refuse
};

View make_view(Input& in, int64_t rows, int32_t heads, int32_t d, int32_t dtype, std::mt19937& rng, bool fill,
               float special) {
  View v;
  const int eb = element_bytes(dtype);
  int64_t hs = d, ts = int64_t(heads) * d;
  switch (in.byte() % 8) {
    case 0: case 1: case 2: case 3: break;  // contiguous
    case 4: hs = d + in.range(0, 3), ts = int64_t(heads) * hs + in.range(0, 5); break;  // padded
    case 5: ts = d + in.range(0, 2), hs = std::max<int64_t>(rows, 1) * ts + in.range(0, 3); break;  // [H, T, d]
    case 6: ts = in.range(0, 3) * int64_t(d) + in.range(-1, 1), hs = d + in.range(-1, 1); break;    // near the overlap limits
    case 7: ts = in.chance(128) ? in.weird64() : ts, hs = in.chance(128) ? in.weird64() : hs; break;
  }
  v.t.token_stride = ts, v.t.head_stride = hs;
  v.negative = ts < 0 || hs < 0;
  const int misalign = in.chance(16) ? in.range(1, 3) : 0;
  if (v.negative || rows <= 0 || heads <= 0 || d <= 0) {
    v.bytes.assign(64 + misalign, 0);
    v.t.data = v.bytes.data() + misalign;
    v.allocated = rows <= 0;  // no token: nothing to reach
    return v;
  }
  const __int128 elements = __int128(rows - 1) * ts + __int128(heads - 1) * hs + d;
  if (elements * eb > kMaxBufferBytes) {  // the call is validated only, with a small buffer
    v.bytes.assign(64 + misalign, 0);
    v.t.data = v.bytes.data() + misalign;
    return v;
  }
  const size_t n = size_t(elements) * eb;
  v.bytes.assign(n + misalign, 0);
  v.t.data = v.bytes.data() + misalign;
  v.allocated = true;
  if (fill && misalign == 0) {
    std::vector<float> f(static_cast<size_t>(elements));
    for (auto& x : f) x = float(int32_t(rng() % 4001) - 2000) * 1e-3f;  // [-2, 2], cheaper than a normal
    if (special != 0.0f && !f.empty()) f[rng() % f.size()] = special;
    if (c_from_float32(dtype, f.data(), int64_t(f.size()), v.t.data) != PA_STATUS_SUCCESS)
      violated("pa_from_float32 of a valid dtype", PA_STATUS_INTERNAL);
  }
  return v;
}

// Not copyable: p points into cu, cu_k.
struct Description {
  Description() = default;
  Description(const Description&) = delete;
  pa_problem p{};
  pa_config c{};
  pa_tuning tuning{};
  std::vector<int32_t> cu, cu_k, block_table;
  int32_t dtype = 0;            // the raw int in p.dtype
  bool plausible = true;        // every field drawn from its valid range
  bool table_fits = true;       // block_table holds [num_seqs, max_pages_per_seq] entries
};

// The problem and config: usually valid, one field at a time broken.
void describe(Input& in, Description& d) {
  pa_problem& p = d.p;
  // Sequences and lengths.
  const int32_t num_seqs = in.chance(8) ? in.weird32() : in.range(1, 4);
  const bool chunked = in.chance(110);
  const bool paged = chunked && in.chance(140);
  std::vector<int32_t> q_len, kv_len;
  const int32_t n_lengths = std::clamp(num_seqs, 0, 4);
  const int32_t long_seq = in.chance(30) ? 700 : 200;
  for (int s = 0; s < n_lengths; ++s) {
    const int32_t q = in.chance(20) ? 0 : in.range(0, long_seq);
    q_len.push_back(q);
    kv_len.push_back(chunked ? q + (in.chance(40) ? 0 : in.range(0, long_seq)) : q);
  }
  d.cu.push_back(0);
  for (int32_t q : q_len) d.cu.push_back(d.cu.back() + q);
  p.num_seqs = num_seqs;
  p.total_tokens = d.cu.back();
  p.cu_seqlens = d.cu.data();
  if (n_lengths == 1 && in.chance(40)) p.cu_seqlens = nullptr;
  if (in.chance(12)) {  // a broken offset or total
    d.plausible = false;
    if (in.chance(128)) d.cu[in.range(0, int32_t(d.cu.size()) - 1)] = in.weird32();
    else p.total_tokens = in.weird64();
  }
  if (num_seqs != n_lengths) {
    // num_seqs + 1 readable entries up to 64 sequences (empty ones); past that the 6th entry
    // decreases, where the library stops reading.
    d.plausible = false;
    d.cu.resize(size_t(std::clamp(num_seqs, 0, 64)) + 1, int32_t(p.total_tokens));
    if (num_seqs > 64) d.cu[n_lengths + 1] = -1;
    p.cu_seqlens = d.cu.data();
  }
  // Heads, head_dim, dtype.
  const int32_t hkv = in.range(1, 3), hq = hkv * in.range(1, 3);
  p.num_kv_heads = in.chance(6) ? (d.plausible = false, in.weird32()) : hkv;
  p.num_q_heads = in.chance(6) ? (d.plausible = false, in.weird32()) : hq;
  static const int32_t kDims[] = {1, 2, 3, 4, 8, 16, 17, 32, 64};
  p.head_dim = in.chance(6) ? (d.plausible = false, in.weird32()) : kDims[in.byte() % 9];
  d.dtype = in.chance(8) ? (d.plausible = false, in.weird32()) : in.range(0, 2);
  set_raw(p.dtype, d.dtype);
  // Chunked prefill: key lengths, and a paged cache.
  if (chunked) {
    d.cu_k.push_back(0);
    for (int32_t k : kv_len) d.cu_k.push_back(d.cu_k.back() + k);
    d.cu_k.resize(d.cu.size(), d.cu_k.back());
    p.cu_seqlens_k = d.cu_k.data();
    p.total_kv_tokens = d.cu_k.back();
    if (in.chance(12)) {
      d.plausible = false;
      if (in.chance(128)) d.cu_k[in.range(0, int32_t(d.cu_k.size()) - 1)] = in.weird32();
      else p.total_kv_tokens = in.weird64();
    }
  } else if (in.chance(4)) {
    d.plausible = false;
    p.total_kv_tokens = in.weird64();  // set without cu_seqlens_k
  }
  if (paged) {
    static const int32_t kPages[] = {1, 2, 4, 8, 16, 32, 64, 128, 3, 48};
    const int32_t page = kPages[in.byte() % 10];
    int32_t longest = 0, used = 0;
    for (int32_t k : kv_len) longest = std::max(longest, k), used += (k + page - 1) / page;
    p.page_size = page;
    p.max_pages_per_seq = std::max(1, (longest + page - 1) / page) + in.range(0, 2);
    p.num_pages = std::max(1, used) + in.range(0, 3);
    if (in.chance(16)) d.plausible = false, p.page_size = in.weird32();
    if (in.chance(16)) d.plausible = false, p.max_pages_per_seq = in.chance(128) ? in.weird32() : p.max_pages_per_seq - 1;
    if (in.chance(16)) d.plausible = false, p.num_pages = in.weird32();
    // The block table: distinct pages in a shuffled order, sometimes one outside the cache.
    const int32_t rows = std::clamp(num_seqs, 0, 64), cols = std::clamp(p.max_pages_per_seq, 0, 64);
    d.table_fits = rows == num_seqs && cols == p.max_pages_per_seq;
    d.block_table.resize(size_t(rows) * cols);
    std::vector<int32_t> ids(size_t(std::clamp(p.num_pages, 1, 4096)));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
    std::mt19937 shuffle(in.u32());
    std::shuffle(ids.begin(), ids.end(), shuffle);
    for (size_t i = 0; i < d.block_table.size(); ++i) d.block_table[i] = ids[i % ids.size()];
    if (!d.block_table.empty() && in.chance(30))
      d.block_table[in.range(0, int32_t(d.block_table.size()) - 1)] = in.chance(128) ? p.num_pages : in.weird32();
  } else if (in.chance(4)) {
    d.plausible = false;
    p.page_size = in.weird32(), p.num_pages = in.weird32(), p.max_pages_per_seq = in.weird32();
  }
  // Config.
  pa_config& c = d.c;
  c = pa_config_default(p.head_dim);
  c.block_size = in.chance(128) ? 64 : 128;
  c.stride = 1 << in.range(0, 4);
  c.gamma = 0.5f + 0.5f * float(in.byte()) / 255.0f;
  c.min_budget_tokens = in.range(0, 3) * 64;
  c.num_proxy_groups = hkv % 3 == 0 && in.chance(128) ? 3 : hkv % 2 == 0 && in.chance(128) ? 2 : 1;
  c.force_sink = in.byte() & 1, c.force_local = in.byte() & 1;
  set_raw(c.budget_mode, in.byte() & 1);
  c.dense_below = in.chance(200) ? 0 : in.range(0, 800);
  c.anchor_blocks = in.range(-1, PA_MAX_ANCHOR_BLOCKS);
  set_raw(c.anchor_mode, in.byte() & 1);
  c.budget_rows = in.chance(64) ? in.range(1, PA_MAX_BUDGET_ROWS) : 1;
  const uint8_t broken = in.chance(40) ? in.byte() % 13 : 255;
  switch (broken) {
    case 0: c.block_size = in.weird32(); break;
    case 1: c.stride = in.weird32(); break;
    case 2: c.gamma = in.f32(); break;
    case 3: c.min_budget_tokens = in.weird32(); break;
    case 4: c.num_proxy_groups = in.weird32(); break;
    case 5: c.force_sink = in.weird32(); break;
    case 6: c.force_local = in.weird32(); break;
    case 7: set_raw(c.budget_mode, in.weird32()); break;
    case 8: c.dense_below = in.weird32(); break;
    case 9: c.softmax_scale = in.f32(); break;
    case 10: c.anchor_blocks = in.weird32(); break;
    case 11: set_raw(c.anchor_mode, in.weird32()); break;
    case 12: c.budget_rows = in.weird32(); break;
  }
  if (broken != 255) d.plausible = false;
  // Tuning: the defaults, or one field of any value.
  d.tuning = pa_tuning_default();
  if (in.chance(16)) {
    int32_t* fields = &d.tuning.attn_kernel;
    fields[in.byte() % 8] = in.weird32();
  }
}

bool all_finite(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); });
}

std::vector<float> to_float(const pa_tensor& t, int64_t rows, int32_t heads, int32_t d, int32_t dtype) {
  std::vector<float> out(size_t(rows) * heads * d);
  const int eb = element_bytes(dtype);
  for (int64_t r = 0; r < rows; ++r)
    for (int h = 0; h < heads; ++h) {
      const char* src = static_cast<const char*>(t.data) + (r * t.token_stride + h * t.head_stride) * eb;
      c_to_float32(dtype, src, d, out.data() + (size_t(r) * heads + h) * d);
    }
  return out;
}

// Compares the bytes of a buffer before and after a failed call.
struct Snapshot {
  std::vector<uint8_t> before;
  const std::vector<uint8_t>* buffer;
  explicit Snapshot(const std::vector<uint8_t>& b) : before(b), buffer(&b) {}
  bool unchanged() const { return before == *buffer; }
};

// The size queries, each on its own output (left as it was on failure).
struct Sizes {
  pa_status plan, workspace, state;
  size_t plan_bytes = 0, workspace_bytes = 0, state_bytes = 0;
};

Sizes query_sizes(const Description& d) {
  Sizes s;
  constexpr size_t kSentinel = 0x5a5a5a5a;
  size_t b = kSentinel;
  s.plan = pa_plan_bytes(&d.p, &d.c, &b);
  expect_reported(s.plan, "pa_plan_bytes");
  if (s.plan != PA_STATUS_SUCCESS) CHECK(b == kSentinel, "pa_plan_bytes wrote its output on failure", s.plan);
  s.plan_bytes = b;
  b = kSentinel;
  s.workspace = pa_workspace_bytes_tuned(&d.p, &d.c, &d.tuning, &b);
  expect_reported(s.workspace, "pa_workspace_bytes_tuned");
  if (s.workspace != PA_STATUS_SUCCESS) CHECK(b == kSentinel, "pa_workspace_bytes_tuned wrote on failure", s.workspace);
  s.workspace_bytes = b;
  b = kSentinel;
  s.state = pa_proxy_state_bytes(&d.p, &d.c, &b);
  expect_reported(s.state, "pa_proxy_state_bytes");
  if (s.state != PA_STATUS_SUCCESS) CHECK(b == kSentinel, "pa_proxy_state_bytes wrote on failure", s.state);
  s.state_bytes = b;
  b = kSentinel;
  const pa_status untuned = pa_workspace_bytes(&d.p, &d.c, &b);
  expect_reported(untuned, "pa_workspace_bytes");
  CHECK(untuned == s.plan, "pa_workspace_bytes and pa_plan_bytes disagree on the description", untuned);
  // The problem and config alone.
  const pa_status v = pa_config_validate(&d.c, &d.p);
  expect_reported(v, "pa_config_validate");
  if (s.plan == PA_STATUS_SUCCESS) CHECK(v == PA_STATUS_SUCCESS, "plan bytes of an invalid config", v);
  return s;
}

// The calls of a plan over tensors of the description's extents.
void run_calls(Input& in, const Description& d, const Sizes& sizes) {
  const pa_problem& p = d.p;
  const int32_t dtype = d.dtype;
  // Work of a call, and the buffers' rows (as the library derives them).
  double work = 0;
  for (int s = 0; s < p.num_seqs; ++s) {
    const double q = p.cu_seqlens ? double(p.cu_seqlens[s + 1]) - p.cu_seqlens[s] : double(p.total_tokens);
    const double kv = p.cu_seqlens_k ? double(p.cu_seqlens_k[s + 1]) - p.cu_seqlens_k[s] : q;
    work += q * kv;
  }
  work *= double(p.num_q_heads) * p.head_dim;
  if (work > kMaxWork || sizes.plan_bytes > size_t(kMaxBufferBytes) || sizes.workspace_bytes > size_t(kMaxBufferBytes))
    return;
  const int64_t kv_rows = p.page_size > 0 ? int64_t(p.page_size) * p.num_pages
                                          : p.cu_seqlens_k ? p.total_kv_tokens : p.total_tokens;
  std::mt19937 rng(in.u32());
  const uint8_t special_pick = in.byte();
  const float special = special_pick < 8 ? std::numeric_limits<float>::quiet_NaN()
                        : special_pick < 12 ? std::numeric_limits<float>::infinity() : 0.0f;
  View q = make_view(in, p.total_tokens, p.num_q_heads, p.head_dim, dtype, rng, true, special);
  View k = make_view(in, kv_rows, p.num_kv_heads, p.head_dim, dtype, rng, true, 0.0f);
  View v = make_view(in, kv_rows, p.num_kv_heads, p.head_dim, dtype, rng, true, 0.0f);
  View o = make_view(in, p.total_tokens, p.num_q_heads, p.head_dim, dtype, rng, false, 0.0f);
  const bool computable = q.allocated && k.allocated && v.allocated && o.allocated;
  std::fill(o.bytes.begin(), o.bytes.end(), uint8_t(0xa5));
  // LSE [Hq, T] float32: exact, none, or misaligned (refused).
  const uint8_t lse_pick = in.byte() % 8;
  std::vector<uint8_t> lse_bytes(size_t(p.num_q_heads) * p.total_tokens * 4 + (lse_pick == 1 ? 6 : 0), 0xc3);
  float* lse = lse_pick == 0 || lse_bytes.empty() ? nullptr
               : lse_pick == 1 ? reinterpret_cast<float*>(lse_bytes.data() + 2)
                               : reinterpret_cast<float*>(lse_bytes.data());
  const bool lse_checked = lse_pick != 1;
  const bool with_lse = lse != nullptr && lse_checked;

  // The plan: storage of the size asked, or one byte short.
  const bool short_storage = in.chance(8) && sizes.plan_bytes > 0;
  std::vector<uint8_t> storage(std::max<size_t>(sizes.plan_bytes - (short_storage ? 1 : 0), 1));
  pa_plan* plan = nullptr;
  pa_status st = pa_plan_create(&p, &d.c, storage.data(), sizes.plan_bytes - (short_storage ? 1 : 0), &plan);
  expect_reported(st, "pa_plan_create");
  if (short_storage) CHECK(st == PA_STATUS_BUFFER_TOO_SMALL, "pa_plan_create took short storage", st);
  if (st != PA_STATUS_SUCCESS) {
    CHECK(plan == nullptr, "pa_plan_create set the plan on failure", st);
    return;
  }
  if (in.chance(16)) {
    const pa_status set = pa_plan_set_tuning(plan, &d.tuning);
    expect_reported(set, "pa_plan_set_tuning");
    pa_tuning now{};
    CHECK(pa_plan_get_tuning(plan, &now) == PA_STATUS_SUCCESS, "pa_plan_get_tuning", PA_STATUS_INTERNAL);
    const pa_tuning expected = set == PA_STATUS_SUCCESS ? d.tuning : pa_tuning_default();
    CHECK(std::memcmp(&now, &expected, sizeof now) == 0, "the plan's tuning after pa_plan_set_tuning", set);
  }

  // The estimation state of a paged cache: made by pa_proxy_state_make, sometimes altered.
  std::vector<uint8_t> state_bytes;
  pa_proxy_state state{};
  bool with_state = false;
  if (sizes.state == PA_STATUS_SUCCESS && sizes.state_bytes <= size_t(kMaxBufferBytes) && in.chance(128)) {
    state_bytes.assign(std::max<size_t>(sizes.state_bytes, 1), 0);
    st = pa_proxy_state_make(&p, &d.c, state_bytes.data(), sizes.state_bytes, &state);
    expect_reported(st, "pa_proxy_state_make");
    CHECK(st == PA_STATUS_SUCCESS, "pa_proxy_state_make after pa_proxy_state_bytes", st);
    with_state = true;
    if (in.chance(20)) {
      switch (in.byte() % 6) {
        case 0: state.num_pages = in.weird32(); break;
        case 1: state.page_size = in.weird32(); break;
        case 2: state.stride = in.weird32(); break;
        case 3: state.num_proxy_groups = in.weird32(); break;
        case 4: state.head_dim = in.weird32(); break;
        case 5: set_raw(state.dtype, in.weird32()); break;
      }
    }
  } else if (in.chance(8)) {  // a state by hand, over a small buffer: must be refused unless it matches
    state_bytes.assign(64, 0);
    state = pa_proxy_state{state_bytes.data(), in.weird32(), in.weird32(), in.weird32(), in.weird32(), in.weird32(),
                           PA_DTYPE_FLOAT32};
    set_raw(state.dtype, in.weird32());
    with_state = true;
  }
  const bool paged = p.page_size > 0;
  const int32_t stray_table[4] = {0, 0, 0, 0};  // a block table given with packed keys
  pa_kv_cache kv{k.t, v.t, paged ? d.block_table.data() : in.chance(4) ? stray_table : nullptr,
                 with_state ? &state : nullptr};

  // Workspace of the size asked, or short.
  const bool short_ws = in.chance(8) && sizes.workspace_bytes > 0;
  const size_t ws_bytes = sizes.workspace_bytes - (short_ws ? 1 : 0);
  std::vector<uint8_t> workspace(std::max<size_t>(ws_bytes, 1));

  // Structured inputs of the problem, into Q of total_tokens rows and K, V of its key rows.
  if (in.chance(24) && computable) {
    pa_synth_params params = pa_synth_default(in.u32());
    if (in.chance(64)) params.num_needles = in.chance(128) ? in.range(0, 40) : in.weird32();
    if (in.chance(32)) params.noise = in.f32();
    if (in.chance(32)) params.needle_strength = in.f32();
    std::vector<uint8_t> sq(size_t(p.total_tokens) * p.num_q_heads * p.head_dim * element_bytes(dtype));
    std::vector<uint8_t> sk(size_t(kv_rows) * p.num_kv_heads * p.head_dim * element_bytes(dtype)), sv(sk.size());
    expect_reported(pa_synth_generate(&p, &params, sq.data(), sk.data(), sv.data()), "pa_synth_generate");
  }
  if (!computable || !d.table_fits) {  // buffers too large to allocate: the calls must still refuse what is invalid
    pa_plan_free(plan);
    return;
  }
  const Snapshot q_before(q.bytes), k_before(k.bytes), v_before(v.bytes), o_before(o.bytes);
  const std::vector<uint8_t> lse_before = lse_bytes;
  // Step 5's results given by the caller (pa_estimate_kv_given): plausible values, sometimes
  // one entry out of range; anchors sized for the largest T whatever the plan resolved.
  // Batches of more heads than kMaxGivenHeads take pa_estimate_kv instead.
  const int64_t heads_total = int64_t(std::max(p.num_seqs, 0)) * std::max(p.num_q_heads, 0);
  uint8_t call = in.byte() % 7;
  if (call == 6 && heads_total > kMaxGivenHeads) call = 3;
  bool attended = false;
  std::vector<int32_t> given_needed, given_anchors, given_kblocks;
  if (call == 6) {
    given_needed.resize(size_t(heads_total) + 1);
    given_anchors.resize(given_needed.size() * PA_MAX_ANCHOR_BLOCKS);
    given_kblocks.resize(size_t(p.num_seqs) + 1);
    const int32_t* cu = p.cu_seqlens_k ? p.cu_seqlens_k : p.cu_seqlens;
    const int32_t block = std::max(d.c.block_size, 1);
    for (int s = 0; s < p.num_seqs; ++s) {
      const int64_t kv = cu ? int64_t(cu[s + 1]) - cu[s] : 0;
      given_kblocks[s] = int32_t((kv + block - 1) / block) + in.range(0, 2);
    }
    for (auto& x : given_needed) x = in.range(1, 4);
    for (auto& x : given_anchors) x = in.range(-1, 3);
    if (in.chance(32)) given_needed[in.range(0, int32_t(given_needed.size() - 1))] = in.weird32();
    if (in.chance(32)) given_anchors[in.range(0, int32_t(given_anchors.size() - 1))] = in.weird32();
    if (in.chance(32)) given_kblocks[in.range(0, int32_t(given_kblocks.size() - 1))] = in.weird32();
  }
  const pa_given_budgets given{given_needed.data(), in.chance(16) ? nullptr : given_anchors.data(),
                               given_kblocks.data()};
  switch (call) {
    case 0: st = pa_forward(plan, &q.t, &k.t, &v.t, &o.t, lse, workspace.data(), ws_bytes, nullptr); break;
    case 1: st = pa_forward_kv(plan, &q.t, &kv, &o.t, lse, workspace.data(), ws_bytes, nullptr); break;
    case 2:
      st = pa_estimate(plan, &q.t, &k.t, workspace.data(), ws_bytes, nullptr);
      expect_reported(st, "pa_estimate");
      if (st == PA_STATUS_SUCCESS) st = pa_attend(plan, &q.t, &k.t, &v.t, &o.t, lse, nullptr);
      break;
    case 3:
      st = pa_estimate_kv(plan, &q.t, &kv, workspace.data(), ws_bytes, nullptr);
      expect_reported(st, "pa_estimate_kv");
      if (st == PA_STATUS_SUCCESS) st = pa_attend_kv(plan, &q.t, &kv, &o.t, lse, nullptr);
      break;
    case 4: st = pa_attend_kv(plan, &q.t, &kv, &o.t, lse, nullptr); break;  // before any estimate
    case 5: st = pa_dense_attention_tuned(&p, d.c.softmax_scale, &d.tuning, &q.t, &k.t, &v.t, &o.t, lse, nullptr); break;
    case 6:
      st = pa_estimate_kv_given(plan, &q.t, &kv, &given, workspace.data(), ws_bytes, nullptr);
      expect_reported(st, "pa_estimate_kv_given");
      if (st == PA_STATUS_SUCCESS) st = pa_attend_kv(plan, &q.t, &kv, &o.t, lse, nullptr);
      break;
  }
  expect_reported(st, "attention call");
  if (call == 4) CHECK(st != PA_STATUS_SUCCESS, "pa_attend_kv before pa_estimate", st);
  (void)short_ws;  // a CUDA build's pa_workspace_bytes may exceed what the CPU needs
  CHECK(q_before.unchanged() && k_before.unchanged() && v_before.unchanged(), "an input was written", st);
  if (st != PA_STATUS_SUCCESS) {
    CHECK(o_before.unchanged(), "o written by a failed call", st);
    if (lse_checked) CHECK(lse_bytes == lse_before, "lse written by a failed call", st);
  } else {
    attended = true;
  }

  if (attended && call != 5) {
    CHECK(pa_plan_check(plan) == PA_STATUS_SUCCESS, "pa_plan_check after an estimate", PA_STATUS_INTERNAL);
  }
  if (attended) {
    // Finite inputs give finite outputs; LSE is -inf only for a row without keys (none here).
    const std::vector<float> out = to_float(o.t, p.total_tokens, p.num_q_heads, p.head_dim, dtype);
    if (special == 0.0f) {
      CHECK(all_finite(out), "attention over finite inputs is not finite", st);
      if (with_lse) {
        for (int64_t i = 0; i < int64_t(p.num_q_heads) * p.total_tokens; ++i)
          CHECK(std::isfinite(lse[i]), "LSE over finite inputs is not finite", st);
      }
    }
    // Every sequence below dense_below runs dense: the result is pa_dense_attention's.
    const int32_t longest_kv = [&] {
      int32_t m = 0;
      for (int s = 0; s < p.num_seqs; ++s) {
        const int32_t* cu = p.cu_seqlens_k ? p.cu_seqlens_k : p.cu_seqlens;
        m = std::max(m, cu ? cu[s + 1] - cu[s] : int32_t(p.total_tokens));
      }
      return m;
    }();
    // (Given budgets run every sequence sparse: dense_below is the caller's to apply.)
    if (call != 5 && call != 6 && !paged && special == 0.0f && d.c.dense_below > longest_kv &&
        dtype == PA_DTYPE_FLOAT32) {
      std::vector<uint8_t> o2(o.bytes.size(), 0);
      pa_tensor t2 = o.t;
      t2.data = o2.data() + (static_cast<uint8_t*>(o.t.data) - o.bytes.data());
      st = pa_dense_attention(&p, d.c.softmax_scale, &q.t, &k.t, &v.t, &t2, nullptr, nullptr);
      expect_reported(st, "pa_dense_attention");
      CHECK(st == PA_STATUS_SUCCESS, "pa_dense_attention where the plan ran dense", st);
      const std::vector<float> ref = to_float(t2, p.total_tokens, p.num_q_heads, p.head_dim, dtype);
      for (size_t i = 0; i < out.size(); ++i)
        CHECK(std::fabs(out[i] - ref[i]) <= 1e-4f * (1.0f + std::fabs(ref[i])), "dense plan differs from dense attention", st);
    }
  }

  // Inspection, each output exactly as large as documented.
  if (attended && call != 5) {
    pa_plan_stats stats;
    expect_reported(pa_plan_get_stats(plan, &stats), "pa_plan_get_stats");
    pa_config eff;
    CHECK(pa_plan_get_config(plan, &eff) == PA_STATUS_SUCCESS, "pa_plan_get_config", PA_STATUS_INTERNAL);
    const size_t heads = size_t(p.num_seqs) * p.num_q_heads;
    std::vector<int32_t> budget(heads), needed(heads), anchors(heads * size_t(eff.anchor_blocks));
    std::vector<double> density(heads);
    expect_reported(pa_plan_get_heads(plan, budget.data(), needed.data(), density.data()), "pa_plan_get_heads");
    expect_reported(pa_plan_get_anchors(plan, anchors.empty() ? nullptr : anchors.data()), "pa_plan_get_anchors");
    int64_t rows = -1, entries = -1;
    CHECK(pa_plan_get_layout(plan, &rows, &entries) == PA_STATUS_SUCCESS, "pa_plan_get_layout", PA_STATUS_INTERNAL);
    std::vector<int32_t> order(static_cast<size_t>(entries)), count(static_cast<size_t>(rows) * p.num_q_heads);
    CHECK(pa_plan_get_index(plan, order.data(), count.data()) == PA_STATUS_SUCCESS, "pa_plan_get_index",
          PA_STATUS_INTERNAL);
    // FlexAttention form of one sequence (any int: out of range is refused).
    const int32_t seq = in.chance(20) ? in.weird32() : in.range(0, p.num_seqs - 1);
    if (seq >= 0 && seq < p.num_seqs) {
      const int32_t* cu_k = p.cu_seqlens_k ? p.cu_seqlens_k : p.cu_seqlens;
      const int64_t q_len = p.cu_seqlens ? p.cu_seqlens[seq + 1] - p.cu_seqlens[seq] : p.total_tokens;
      const int64_t kv_len = cu_k ? cu_k[seq + 1] - cu_k[seq] : q_len;
      const int64_t b = eff.block_size, nkb = (kv_len + b - 1) / b;
      const int64_t nrows = q_len > 0 ? nkb - (kv_len - q_len) / b : 0;
      std::vector<int32_t> num(size_t(p.num_q_heads * nrows) + 0), idx(size_t(p.num_q_heads * nrows * nkb));
      int32_t dummy = 0;
      expect_reported(pa_plan_to_flex(plan, seq, num.empty() ? &dummy : num.data(), idx.empty() ? &dummy : idx.data()),
                      "pa_plan_to_flex");
    } else {
      int32_t dummy = 0;
      CHECK(pa_plan_to_flex(plan, seq, &dummy, &dummy) == PA_STATUS_INVALID_SHAPE, "pa_plan_to_flex of a bad seq",
            PA_STATUS_INTERNAL);
    }
    // A hand-made index: the plan's own with a few entries changed, then attention over it.
    if (in.chance(100) && !order.empty() && !count.empty()) {
      for (int i = in.range(1, 3); i > 0; --i) {
        if (in.byte() & 1) order[in.range(0, int32_t(order.size()) - 1)] = in.chance(128) ? in.range(-2, 20) : in.weird32();
        else count[in.range(0, int32_t(count.size()) - 1)] = in.chance(128) ? in.range(-2, 20) : in.weird32();
      }
      st = pa_plan_set_index(plan, order.data(), count.data(), in.chance(128) ? budget.data() : nullptr,
                             in.chance(128) ? needed.data() : nullptr);
      expect_reported(st, "pa_plan_set_index");
      if (st == PA_STATUS_SUCCESS) {
        expect_reported(pa_plan_check(plan), "pa_plan_check");
        st = paged ? pa_attend_kv(plan, &q.t, &kv, &o.t, lse, nullptr)
                   : pa_attend(plan, &q.t, &k.t, &v.t, &o.t, lse, nullptr);
        expect_reported(st, "attention over a set index");
      }
    }
  }
  pa_plan_free(plan);
}

// The utilities that take a dtype argument and a count.
void run_conversions(Input& in) {
  const int32_t raw = in.chance(200) ? in.range(0, 2) : in.weird32();
  const int64_t count = in.chance(200) ? in.range(0, 16) : in.weird64();
  float src[16] = {1.0f, -2.0f, 65504.0f, 1e-8f, std::numeric_limits<float>::quiet_NaN()};
  uint8_t dst[64];
  float back[16];
  std::memset(dst, 0x77, sizeof dst);
  const bool valid = raw >= 0 && raw <= 2 && count >= 0 && count <= 16;
  if (!valid && count >= 0 && count <= 16 && (raw < 0 || raw > 2)) {
    // An invalid dtype through a C-style call: passed as the int a C caller would pass.
    const pa_status st = c_from_float32(raw, src, count, dst);
    CHECK(st == PA_STATUS_INVALID_SHAPE, "pa_from_float32 of an unknown dtype", st);
    expect_reported(st, "pa_from_float32");
    for (uint8_t b : dst) CHECK(b == 0x77, "pa_from_float32 wrote on failure", st);
    CHECK(c_to_float32(raw, dst, count, back) == PA_STATUS_INVALID_SHAPE, "pa_to_float32 of an unknown dtype", st);
  } else if (count < 0) {
    CHECK(c_from_float32(raw, src, count, dst) != PA_STATUS_SUCCESS, "pa_from_float32 of a negative count",
          PA_STATUS_INTERNAL);
  } else if (valid) {
    CHECK(c_from_float32(raw, src, count, dst) == PA_STATUS_SUCCESS, "pa_from_float32", PA_STATUS_INTERNAL);
    CHECK(c_to_float32(raw, dst, count, back) == PA_STATUS_SUCCESS, "pa_to_float32", PA_STATUS_INTERNAL);
  }
  const int32_t any = in.weird32();
  const char* name = c_status_string(any);
  CHECK(name != nullptr && (any < 0 || any > PA_STATUS_MEMORY_SPACE) == (std::strcmp(name, "PA_STATUS_UNKNOWN") == 0),
        "pa_status_string of any int", PA_STATUS_INTERNAL);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  pa_set_num_threads(1);  // one core per fuzzing process, reproducible runs
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const uint8_t what = in.byte();
  if (what < 16) {
    run_conversions(in);
    return 0;
  }
  Description d;
  describe(in, d);
  const Sizes sizes = query_sizes(d);
  if (d.plausible && d.p.num_seqs >= 1 && sizes.plan != PA_STATUS_SUCCESS) {
    // Fields drawn from their valid ranges may still combine into a refusal (page sizes that
    // an estimation state cannot hold, groups that do not divide): named, never a crash.
    expect_reported(sizes.plan, "a plausible description refused");
  }
  if (sizes.plan == PA_STATUS_SUCCESS && sizes.workspace == PA_STATUS_SUCCESS) run_calls(in, d, sizes);
  return 0;
}
