// GPU block-sparse and dense attention (issue 4) through the public C API, against the
// CPU backend and an independent fp64 reference over the same kept blocks.
//
// Tolerance, FlashAttention style: the kernel's max error against the fp64 reference must
// stay within 2x the error of a plain low-precision implementation (scores rounded to the
// input type, softmax in fp32, P rounded, fp32 accumulation, output rounded) plus kAtol.
// Outputs are poisoned (0xff: NaN) before every run, so an unwritten element fails.
//
// The suites Attention and AttentionSanitize run every case under each tuning of kTunings
// (parameterised tests): at the defaults, and with one speed setting changed that the
// defaults leave unexercised (few persistent CTAs, several row chunks, heads in order).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/block_index.hpp"
#include "core/problem.hpp"
#include "gpu_util.hpp"
#include "proxyattn/proxyattn.h"
#include "proxyattn/proxyattn_tuning.h"

namespace proxyattn::test {
namespace {

#define PA_ASSERT_OK(call) ASSERT_EQ((call), PA_STATUS_SUCCESS) << #call << ": " << pa_last_error()

constexpr double kAtol = 1e-4;      // absolute slack on O (inputs of magnitude ~1)
constexpr double kLseTol = 2e-3;    // LSE: fp32 sums of exp2 against fp64
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

enum class Inputs { kRandom, kStructured };

struct Case {
  std::vector<int32_t> lengths;
  int hq = 8, hkv = 2, d = 128;
  pa_dtype dtype = PA_DTYPE_BFLOAT16;
  int block = 128;
  int groups = 1;
  float gamma = 0.8f;
  int min_budget_tokens = 0;
  int dense_below = 0;
  bool force_blocks = true;
  Inputs inputs = Inputs::kRandom;
  bool with_lse = true;
  pa_tuning tuning = suite_tuning();  // of the GPU runs (run_gpu)
};

uint64_t fresh_seed() {
  static std::random_device device;
  return (uint64_t(device()) << 32) ^ device();
}

std::string describe(const Case& c, uint64_t seed) {
  std::string s = "lengths {";
  for (size_t i = 0; i < c.lengths.size(); ++i) s += (i ? "," : "") + std::to_string(c.lengths[i]);
  s += "} hq " + std::to_string(c.hq) + " hkv " + std::to_string(c.hkv) + " d " + std::to_string(c.d) +
       (c.dtype == PA_DTYPE_BFLOAT16 ? " bf16" : " fp16") + " block " + std::to_string(c.block) +
       " groups " + std::to_string(c.groups) + (c.inputs == Inputs::kStructured ? " structured" : " random") +
       " seed " + std::to_string(seed);
  return s;
}

// Host inputs of a case: contiguous [tokens, heads, d] in the case's dtype.
struct Host {
  std::vector<int32_t> cu;
  pa_problem problem{};
  std::vector<uint16_t> q, k, v;
  std::vector<float> qf, kf, vf;  // the same values as float
};

Host make_host(const Case& c, uint64_t seed) {
  Host h;
  h.cu.assign(c.lengths.size() + 1, 0);
  for (size_t i = 0; i < c.lengths.size(); ++i) h.cu[i + 1] = h.cu[i] + c.lengths[i];
  h.problem = {int32_t(c.lengths.size()), h.cu.data(), h.cu.back(), c.hq, c.hkv, c.d, c.dtype};
  const int64_t n = h.cu.back();
  h.q.resize(size_t(n) * c.hq * c.d);
  h.k.resize(size_t(n) * c.hkv * c.d);
  h.v.resize(h.k.size());
  if (c.inputs == Inputs::kStructured) {
    const pa_synth_params params = pa_synth_default(seed);
    EXPECT_EQ(pa_synth_generate(&h.problem, &params, h.q.data(), h.k.data(), h.v.data()), PA_STATUS_SUCCESS)
        << pa_last_error();
  } else {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto fill = [&](std::vector<uint16_t>& out, float gain) {
      std::vector<float> f(out.size());
      for (float& x : f) x = gain * normal(rng);
      pa_from_float32(c.dtype, f.data(), int64_t(f.size()), out.data());
    };
    fill(h.q, 1.5f);  // a little peakier than unit scores
    fill(h.k, 1.0f);
    fill(h.v, 1.0f);
  }
  auto to_float = [&](const std::vector<uint16_t>& in, std::vector<float>& out) {
    out.resize(in.size());
    pa_to_float32(c.dtype, in.data(), int64_t(in.size()), out.data());
  };
  to_float(h.q, h.qf);
  to_float(h.k, h.kf);
  to_float(h.v, h.vf);
  return h;
}

pa_config make_config(const Case& c) {
  pa_config config = pa_config_default(c.d);
  config.block_size = c.block;
  config.gamma = c.gamma;
  config.min_budget_tokens = c.min_budget_tokens;
  config.num_proxy_groups = c.groups;
  config.dense_below = c.dense_below;
  config.force_sink = c.force_blocks;
  config.force_local = c.force_blocks;
  return config;
}

// The block index in host arrays, with the layout to read it.
struct Index {
  BatchLayout batch;
  std::vector<int32_t> order, count;
  int hq = 0, groups = 1, block = 128;
  // Kept blocks of head h in row m of sequence s.
  std::vector<int> kept(int s, int h, int m) const {
    const SeqSpan& span = batch.seqs[s];
    const int j = group_of_head(h, hq, groups);
    const int32_t* row = order.data() + order_row(span, j, m);
    return std::vector<int>(row, row + count[(span.qblock_begin + m) * hq + h]);
  }
};

Index index_layout(const Case& c, const pa_problem& problem) {
  Index ix;
  ix.batch = make_batch_layout(problem, c.block, c.groups);
  ix.hq = c.hq, ix.groups = c.groups, ix.block = c.block;
  ix.order.assign(ix.batch.order_entries, 0);
  ix.count.assign(ix.batch.total_qblocks * c.hq, 0);
  return ix;
}

// Every causal block of every row, ascending: the dense mask as an index.
Index full_index(const Case& c, const pa_problem& problem) {
  Index ix = index_layout(c, problem);
  for (const SeqSpan& span : ix.batch.seqs)
    for (int j = 0; j < c.groups; ++j)
      for (int m = 0; m < span.num_qblocks; ++m) {
        for (int n = 0; n <= m; ++n) ix.order[order_row(span, j, m) + n] = n;
        for (int h = 0; h < c.hq; ++h) ix.count[(span.qblock_begin + m) * c.hq + h] = m + 1;
      }
  return ix;
}

// Outputs as float: O [tokens, Hq, d], LSE [Hq, tokens].
struct Output {
  std::vector<float> o, lse;
};

// ---- references ---------------------------------------------------------------------
struct Reference {
  std::vector<double> o, lse;  // fp64
  std::vector<float> o_plain;  // plain low-precision implementation
};

float round_to(pa_dtype dtype, float x) {
  uint16_t bits;
  pa_from_float32(dtype, &x, 1, &bits);
  float y;
  pa_to_float32(dtype, &bits, 1, &y);
  return y;
}

// Attention of every (sequence, head, query) over the keys of `blocks_of(s, h, m)` (block
// edge `block`) that are causal; a query without keys gets O = 0, LSE = -inf.
template <typename BlocksOf>
Reference reference(const Case& c, const Host& in, int block, const BlocksOf& blocks_of) {
  const int hq = c.hq, hkv = c.hkv, d = c.d;
  const int64_t total = in.cu.back();
  const double scale = 1.0 / std::sqrt(double(d));
  Reference r;
  r.o.assign(size_t(total) * hq * d, 0.0);
  r.lse.assign(size_t(hq) * total, kNegInf);
  r.o_plain.assign(r.o.size(), 0.0f);
  std::vector<int> keys;
  std::vector<double> s64;
  std::vector<float> s32, p32;
  for (size_t s = 0; s < c.lengths.size(); ++s) {
    const int n = c.lengths[s];
    const int64_t t0 = in.cu[s];
    for (int h = 0; h < hq; ++h) {
      const int kv = h / (hq / hkv);
      for (int t = 0; t < n; ++t) {
        keys.clear();
        for (int b : blocks_of(int(s), h, t / block))
          for (int key = b * block; key < std::min(n, (b + 1) * block); ++key)
            if (key <= t) keys.push_back(key);
        if (keys.empty()) continue;
        const float* q = &in.qf[((t0 + t) * hq + h) * d];
        s64.resize(keys.size());
        s32.resize(keys.size());
        for (size_t j = 0; j < keys.size(); ++j) {
          const float* k = &in.kf[((t0 + keys[j]) * hkv + kv) * d];
          double acc = 0.0;
          float acc32 = 0.0f;
          for (int x = 0; x < d; ++x) {
            acc += double(q[x]) * double(k[x]);
            acc32 += q[x] * k[x];
          }
          s64[j] = acc * scale;
          s32[j] = acc32 * float(scale);
        }
        // fp64
        const double mx = *std::max_element(s64.begin(), s64.end());
        double sum = 0.0;
        for (double& x : s64) sum += (x = std::exp(x - mx));
        double* o = &r.o[((t0 + t) * hq + h) * d];
        for (size_t j = 0; j < keys.size(); ++j) {
          const float* v = &in.vf[((t0 + keys[j]) * hkv + kv) * d];
          for (int x = 0; x < d; ++x) o[x] += s64[j] / sum * v[x];
        }
        r.lse[h * total + t0 + t] = mx + std::log(sum);
        // plain low precision
        for (float& x : s32) x = round_to(c.dtype, x);
        const float mx32 = *std::max_element(s32.begin(), s32.end());
        float sum32 = 0.0f;
        p32.resize(keys.size());
        for (size_t j = 0; j < keys.size(); ++j) sum32 += (p32[j] = std::exp(s32[j] - mx32));
        std::vector<float> acc(d, 0.0f);
        for (size_t j = 0; j < keys.size(); ++j) {
          const float p = round_to(c.dtype, p32[j] / sum32);
          const float* v = &in.vf[((t0 + keys[j]) * hkv + kv) * d];
          for (int x = 0; x < d; ++x) acc[x] += p * v[x];
        }
        float* op = &r.o_plain[((t0 + t) * hq + h) * d];
        for (int x = 0; x < d; ++x) op[x] = round_to(c.dtype, acc[x]);
      }
    }
  }
  return r;
}

Reference sparse_reference(const Case& c, const Host& in, const Index& ix) {
  return reference(c, in, c.block, [&](int s, int h, int m) { return ix.kept(s, h, m); });
}

Reference dense_reference(const Case& c, const Host& in) {
  return reference(c, in, c.block, [](int, int, int m) {
    std::vector<int> all(m + 1);
    for (int n = 0; n <= m; ++n) all[n] = n;
    return all;
  });
}

template <typename A, typename B>
double max_abs_diff(const std::vector<A>& a, const std::vector<B>& b) {
  double e = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = double(a[i]) - double(b[i]);
    e = std::isnan(x) ? std::numeric_limits<double>::infinity() : std::max(e, std::abs(x));
  }
  return e;
}

// ---- runs ---------------------------------------------------------------------------
// The CPU backend: estimation (unless `index` is given) and attention on the host plan.
struct CpuRun {
  Index index;
  Output out;
};

void run_cpu(const Case& c, const Host& in, const Index* given, CpuRun& run) {
  const pa_config config = make_config(c);
  size_t bytes = 0, workspace_bytes = 0;
  PA_ASSERT_OK(pa_plan_bytes(&in.problem, &config, &bytes));
  PA_ASSERT_OK(pa_workspace_bytes(&in.problem, &config, &workspace_bytes));
  std::vector<uint64_t> storage(bytes / sizeof(uint64_t) + 1);
  std::vector<uint64_t> workspace(workspace_bytes / sizeof(uint64_t) + 1);
  pa_plan* plan = nullptr;
  PA_ASSERT_OK(pa_plan_create(&in.problem, &config, storage.data(), bytes, &plan));
  run.index = index_layout(c, in.problem);
  auto q = pa_tensor_contiguous(const_cast<uint16_t*>(in.q.data()), c.hq, c.d);
  auto k = pa_tensor_contiguous(const_cast<uint16_t*>(in.k.data()), c.hkv, c.d);
  auto v = pa_tensor_contiguous(const_cast<uint16_t*>(in.v.data()), c.hkv, c.d);
  if (given != nullptr) {
    EXPECT_EQ(pa_plan_set_index(plan, given->order.data(), given->count.data(), nullptr, nullptr),
              PA_STATUS_SUCCESS) << pa_last_error();
    run.index = *given;
  } else {
    EXPECT_EQ(pa_estimate(plan, &q, &k, workspace.data(), workspace_bytes, nullptr), PA_STATUS_SUCCESS)
        << pa_last_error();
    EXPECT_EQ(pa_plan_get_index(plan, run.index.order.data(), run.index.count.data()), PA_STATUS_SUCCESS);
  }
  const int64_t total = in.cu.back();
  std::vector<uint16_t> o(size_t(total) * c.hq * c.d);
  run.out.lse.assign(size_t(c.hq) * total, 0.0f);
  auto ot = pa_tensor_contiguous(o.data(), c.hq, c.d);
  EXPECT_EQ(pa_attend(plan, &q, &k, &v, &ot, run.out.lse.data(), nullptr), PA_STATUS_SUCCESS) << pa_last_error();
  run.out.o.resize(o.size());
  pa_to_float32(c.dtype, o.data(), int64_t(o.size()), run.out.o.data());
  pa_plan_free(plan);
}

// Strides of the device views: contiguous, or padded (Q and O with 2 spare heads per
// token, K and V with every other head slot used) to exercise strided pa_tensor views.
struct Layout {
  bool padded = false;
  int64_t q_token(const Case& c) const { return int64_t(padded ? c.hq + 2 : c.hq) * c.d; }
  int64_t kv_head(const Case& c) const { return int64_t(padded ? 2 : 1) * c.d; }
  int64_t kv_token(const Case& c) const { return kv_head(c) * c.hkv; }
};

// Scatters contiguous [tokens, heads, d] rows into a strided buffer (zeros elsewhere).
std::vector<uint16_t> scatter(const std::vector<uint16_t>& src, int64_t tokens, int heads, int d,
                              int64_t token_stride, int64_t head_stride) {
  std::vector<uint16_t> out(size_t(tokens > 0 ? (tokens - 1) * token_stride + (heads - 1) * head_stride + d : 0), 0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int h = 0; h < heads; ++h)
      std::memcpy(&out[t * token_stride + h * head_stride], &src[(t * heads + h) * d], sizeof(uint16_t) * d);
  return out;
}

// Block-sparse attention on the GPU over `index` (dense attention when index is null), with
// the case's tuning; returns the API's status. O and LSE are poisoned first.
pa_status run_gpu(const Case& c, const Host& in, const Index* index, Output& out, Layout layout = {}) {
  const int64_t total = in.cu.back();
  const pa_config config = make_config(c);
  auto upload = [](const std::vector<uint16_t>& host) {
    DeviceBuffer buffer(std::max<size_t>(host.size(), 8) * sizeof(uint16_t));
    if (!host.empty()) EXPECT_EQ(cudaMemcpy(buffer.get(), host.data(), host.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    return buffer;
  };
  const int64_t qt = layout.q_token(c), kvh = layout.kv_head(c), kvt = layout.kv_token(c);
  DeviceBuffer q = upload(scatter(in.q, total, c.hq, c.d, qt, c.d));
  DeviceBuffer k = upload(scatter(in.k, total, c.hkv, c.d, kvt, kvh));
  DeviceBuffer v = upload(scatter(in.v, total, c.hkv, c.d, kvt, kvh));
  const size_t o_elements = size_t(std::max<int64_t>(total, 1)) * qt;
  DeviceBuffer o(o_elements * sizeof(uint16_t));
  DeviceBuffer lse(std::max<size_t>(size_t(c.hq) * total, 1) * sizeof(float));
  EXPECT_EQ(o.poison(), cudaSuccess);
  EXPECT_EQ(lse.poison(), cudaSuccess);
  pa_tensor qv{q.get(), qt, c.d}, kv{k.get(), kvt, kvh}, vv{v.get(), kvt, kvh}, ov{o.get(), qt, c.d};
  float* lse_ptr = c.with_lse ? lse.as<float>() : nullptr;

  pa_status status;
  if (index == nullptr) {
    status = pa_dense_attention_tuned(&in.problem, config.softmax_scale, &c.tuning, &qv, &kv, &vv, &ov, lse_ptr,
                                      nullptr);
  } else {
    size_t bytes = 0;
    if (pa_plan_bytes(&in.problem, &config, &bytes) != PA_STATUS_SUCCESS) return PA_STATUS_INTERNAL;
    DeviceBuffer storage(bytes);
    pa_plan* plan = nullptr;
    status = pa_plan_create(&in.problem, &config, storage.get(), bytes, &plan);
    if (status == PA_STATUS_SUCCESS) status = pa_plan_set_tuning(plan, &c.tuning);
    if (status == PA_STATUS_SUCCESS)
      status = pa_plan_set_index(plan, index->order.data(), index->count.data(), nullptr, nullptr);
    if (status == PA_STATUS_SUCCESS) status = pa_attend(plan, &qv, &kv, &vv, &ov, lse_ptr, nullptr);
    pa_plan_free(plan);
  }
  if (status != PA_STATUS_SUCCESS) return status;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  // Gather the valid rows of O back to a contiguous [tokens, Hq, d].
  std::vector<uint16_t> o_host(o_elements), o_dense(size_t(total) * c.hq * c.d);
  EXPECT_EQ(cudaMemcpy(o_host.data(), o.get(), o_elements * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int64_t t = 0; t < total; ++t)
    std::memcpy(&o_dense[t * c.hq * c.d], &o_host[t * qt], sizeof(uint16_t) * c.hq * c.d);
  out.o.resize(o_dense.size());
  pa_to_float32(c.dtype, o_dense.data(), int64_t(o_dense.size()), out.o.data());
  out.lse.assign(size_t(c.hq) * total, 0.0f);
  if (c.with_lse && total > 0)
    EXPECT_EQ(cudaMemcpy(out.lse.data(), lse.get(), out.lse.size() * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
  return status;
}

// ---- checks -------------------------------------------------------------------------
void expect_close(const char* what, const Case& c, const Output& gpu, const Reference& ref, const Output* cpu) {
  size_t unwritten = 0;
  for (float x : gpu.o) unwritten += !std::isfinite(x);
  EXPECT_EQ(unwritten, 0u) << what << ": O elements NaN or inf (unwritten?)";
  const double err_gpu = max_abs_diff(gpu.o, ref.o);
  const double err_plain = max_abs_diff(ref.o_plain, ref.o);
  EXPECT_LE(err_gpu, 2.0 * err_plain + kAtol) << what << ": max |O - O_fp64|, plain low precision "
                                              << err_plain;
  double err_cpu = 0.0;
  if (cpu != nullptr) {
    err_cpu = max_abs_diff(cpu->o, ref.o);
    EXPECT_LE(max_abs_diff(gpu.o, cpu->o), 2.0 * err_plain + err_cpu + kAtol) << what << ": GPU against CPU";
  }
  double err_lse = 0.0;
  if (c.with_lse) {
    for (size_t i = 0; i < ref.lse.size(); ++i) {
      if (ref.lse[i] == kNegInf) {
        EXPECT_EQ(double(gpu.lse[i]), kNegInf) << what << ": LSE of a row without keys, element " << i;
        continue;
      }
      const double e = std::abs(double(gpu.lse[i]) - ref.lse[i]);
      err_lse = std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(err_lse, e);
    }
    EXPECT_LE(err_lse, kLseTol) << what << ": max |LSE - LSE_fp64|";
  }
  std::printf("  %s: max|O-ref| gpu %.3g plain %.3g cpu %.3g; max|LSE-ref| %.3g\n", what, err_gpu, err_plain,
              err_cpu, err_lse);
}

// Estimation on the CPU, attention on the GPU, against the CPU backend and the reference.
void check_sparse_case(const Case& c) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(describe(c, seed));
  const Host in = make_host(c, seed);
  CpuRun cpu;
  run_cpu(c, in, nullptr, cpu);
  Output gpu;
  ASSERT_EQ(run_gpu(c, in, &cpu.index, gpu), PA_STATUS_SUCCESS) << pa_last_error();
  expect_close("sparse", c, gpu, sparse_reference(c, in, cpu.index), &cpu.out);
}

void check_dense_case(const Case& c) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(describe(c, seed));
  const Host in = make_host(c, seed);
  Output gpu;
  ASSERT_EQ(run_gpu(c, in, nullptr, gpu), PA_STATUS_SUCCESS) << pa_last_error();
  expect_close("dense", c, gpu, dense_reference(c, in), nullptr);
}

// check_sparse_case at the case's CTA packing and with the heads of a chunk packed together.
void check_sparse_case_both_packings(const Case& c) {
  check_sparse_case(c);
  Case packed = c;
  packed.tuning.attn_packing = PA_TUNING_PACKING_HEADS_OF_CHUNK;
  check_sparse_case(packed);
}

// ---- cases ---------------------------------------------------------------------------
// The tunings every case of the parameterised suites runs under (scripts/gpu-check once ran
// the whole program again under environment variables for these).
const NamedTuning kTunings[] = {
    {"default", pa_tuning_default()},
    // 3 persistent sm90 CTAs: every CTA runs many work items.
    tuned("max_ctas_3", [](pa_tuning& t) { t.attn_max_ctas = 3; }),
    // Chunks of 3 rows in the item order: several chunks, a shorter last one (both kernels).
    tuned("rows_per_chunk_3", [](pa_tuning& t) { t.attn_rows_per_chunk = 3; }),
    // d = 64 on sm90: a row's heads in order, not by count.
    tuned("heads_in_order", [](pa_tuning& t) { t.attn_rank_heads = 0; }),
};

class Attention : public TunedTest {};
class AttentionSanitize : public TunedTest {};
INSTANTIATE_TEST_SUITE_P(Tunings, Attention, ::testing::ValuesIn(kTunings), tuning_name);
INSTANTIATE_TEST_SUITE_P(Tunings, AttentionSanitize, ::testing::ValuesIn(kTunings), tuning_name);

// Small cases that scripts/gpu-check also runs under compute-sanitizer (memcheck, racecheck,
// synccheck), at the default tuning and with 3 CTAs.
TEST_P(AttentionSanitize, SparseVarlenBlock64) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {70, 1, 130};
  c.hq = 4, c.hkv = 2, c.d = 64, c.block = 64, c.gamma = 0.7f;
  check_sparse_case_both_packings(c);
}

// Block 128 with GQA 4: at the default packing a CTA's two consumer warpgroups share a
// head; packed by heads, they hold different heads with different counts (the sm90 kernel's
// per-warpgroup skipping of tiles another head keeps).
TEST_P(AttentionSanitize, SparseBlock128Gqa4BothPackings) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {300, 129};
  c.hq = 4, c.hkv = 1, c.d = 128, c.block = 128, c.gamma = 0.6f;
  check_sparse_case_both_packings(c);
}

// d = 64, block 128, GQA 4: the sm90 kernel's three consumer warpgroups hold 8 pairs per
// (row, KV head) in slots of 3, 3 and 2, so a CTA mixes two heads with different counts and
// the last one runs with a consumer idle.
TEST_P(AttentionSanitize, SparseD64ThreeConsumersBothPackings) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {390, 64};
  c.hq = 8, c.hkv = 2, c.d = 64, c.block = 128, c.gamma = 0.6f;
  check_sparse_case_both_packings(c);
}

// More work items than an H100 has SMs (132), so some persistent sm90 CTAs run several
// items (the ring, the Q hand-over and the O staging across items); under the tuning
// max_ctas_3 every CTA runs many.
TEST_P(AttentionSanitize, PersistentManyItemsPerCta) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {2500, 700};  // 51 rows x 4 KV heads = 204 items at block 64
  c.hq = 8, c.hkv = 4, c.d = 64, c.block = 64, c.gamma = 0.8f;
  check_sparse_case(c);
  Case d;
  d.lengths = {3000};  // 24 rows x 8 KV heads = 192 items at block 128
  d.hq = 8, d.hkv = 8, d.d = 128, d.block = 128, d.gamma = 0.8f;
  check_sparse_case(d);
}

TEST_P(AttentionSanitize, DenseFp16D128) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {100, 33};
  c.hq = 2, c.hkv = 1, c.d = 128, c.dtype = PA_DTYPE_FLOAT16;
  check_dense_case(c);
}

TEST_P(Attention, SingleToken) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {1};
  c.hq = 4, c.hkv = 1;
  check_sparse_case(c);
  check_dense_case(c);
}

TEST_P(Attention, ShorterThanBlock) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {50};
  c.hq = 8, c.hkv = 8, c.d = 64, c.dtype = PA_DTYPE_FLOAT16;
  check_sparse_case(c);
}

TEST_P(Attention, PartialLastBlockStructured) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {600};
  c.hq = 8, c.hkv = 2, c.gamma = 0.9f, c.inputs = Inputs::kStructured;
  check_sparse_case(c);
}

TEST_P(Attention, PartialLastBlockFp16D64Block64) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {700};
  c.hq = 4, c.hkv = 4, c.d = 64, c.dtype = PA_DTYPE_FLOAT16, c.block = 64, c.gamma = 0.6f;
  check_sparse_case(c);
}

TEST_P(Attention, GqaRatio8GroupPerKvHead) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {520};
  c.hq = 16, c.hkv = 2, c.groups = 2, c.block = 64, c.gamma = 0.75f;
  check_sparse_case(c);
}

TEST_P(Attention, VarlenMixedLengthsSomeDense) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {300, 40, 1, 517, 129};
  c.hq = 8, c.hkv = 2, c.dtype = PA_DTYPE_FLOAT16, c.block = 64, c.dense_below = 200,
  c.inputs = Inputs::kStructured;
  check_sparse_case(c);
}

TEST_P(Attention, VarlenMoreSequencesThanOneLaunch) {
  PA_REQUIRE_GPU();
  Case c;
  std::mt19937 rng(static_cast<unsigned>(fresh_seed()));
  for (int i = 0; i < 70; ++i) c.lengths.push_back(int32_t(rng() % 90));  // some empty
  c.hq = 4, c.hkv = 1, c.d = 64, c.block = 64, c.gamma = 0.5f;
  check_sparse_case(c);
  check_dense_case(c);
}

// Runs case c on the GPU at its tuning and at `switched` (`what` changed, a setting that must
// not change the arithmetic): identical bits (O and LSE), and the switched run within the
// reference's tolerance.
void expect_identical_with(const Case& c, uint64_t seed, const pa_tuning& switched, const char* what) {
  const Host in = make_host(c, seed);
  CpuRun cpu;
  run_cpu(c, in, nullptr, cpu);
  Case other_case = c;
  other_case.tuning = switched;
  Output base, other;
  ASSERT_EQ(run_gpu(c, in, &cpu.index, base), PA_STATUS_SUCCESS) << pa_last_error();
  ASSERT_EQ(run_gpu(other_case, in, &cpu.index, other), PA_STATUS_SUCCESS) << pa_last_error();
  EXPECT_EQ(max_abs_diff(base.o, other.o), 0.0);
  EXPECT_EQ(max_abs_diff(base.lse, other.lse), 0.0);
  expect_close(what, c, other, sparse_reference(c, in, cpu.index), &cpu.out);
}

// Both CTA packings (params.hpp) run the same per-warp arithmetic: identical bits.
TEST_P(Attention, HeadPackingGivesIdenticalOutput) {
  PA_REQUIRE_GPU();
  for (int block : {128, 64}) {
    Case c;
    c.lengths = {450, 200};
    c.hq = 8, c.hkv = 2, c.block = block, c.gamma = 0.8f, c.inputs = Inputs::kStructured;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(describe(c, seed));
    pa_tuning packed = c.tuning;
    packed.attn_packing = PA_TUNING_PACKING_HEADS_OF_CHUNK;
    expect_identical_with(c, seed, packed, "heads of a chunk packed");
  }
}

// At d = 64 the sm90 kernel's slots take a row's heads by count (three consumers share two
// heads' pairs); which consumer runs a pair never changes what it computes: identical bits
// with the heads in order (tuning.attn_rank_heads = 0), at both block sizes and packings.
TEST_P(Attention, HeadRankingGivesIdenticalOutput) {
  PA_REQUIRE_GPU();
  for (int block : {128, 64}) {
    for (int32_t packing : {PA_TUNING_PACKING_CHUNKS_OF_HEAD, PA_TUNING_PACKING_HEADS_OF_CHUNK}) {
      Case c;
      c.lengths = {900, 260};
      c.hq = 14, c.hkv = 2, c.d = 64, c.block = block, c.gamma = 0.8f, c.inputs = Inputs::kStructured;
      c.tuning.attn_packing = packing;
      const uint64_t seed = fresh_seed();
      SCOPED_TRACE(describe(c, seed) + " packing " + std::to_string(packing));
      pa_tuning in_order = c.tuning;
      in_order.attn_rank_heads = 0;
      expect_identical_with(c, seed, in_order, "heads in order");
    }
  }
}

// The order of the work items (params.hpp: chunks of rows) changes which CTA runs an item
// and when, never what it computes: both kernels give bit-identical outputs in row-major
// order, in chunks of 3 rows (several chunks, a shorter last one) and by default. A bad
// tuning.attn_rows_per_chunk is an error naming it.
TEST_P(Attention, ItemOrderGivesIdenticalOutput) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {1500, 700};
  c.hq = 8, c.hkv = 2, c.gamma = 0.8f, c.inputs = Inputs::kStructured;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(describe(c, seed));
  const Host in = make_host(c, seed);
  CpuRun cpu;
  run_cpu(c, in, nullptr, cpu);
  for (int32_t kernel : {PA_TUNING_KERNEL_AUTO, PA_TUNING_KERNEL_SM80}) {
    SCOPED_TRACE(kernel == PA_TUNING_KERNEL_SM80 ? "sm80" : "default kernel");
    Case chosen = c;
    chosen.tuning.attn_kernel = kernel;
    Output base;
    ASSERT_EQ(run_gpu(chosen, in, &cpu.index, base), PA_STATUS_SUCCESS) << pa_last_error();
    for (int32_t rows : {1, 3}) {
      Case chunked = chosen;
      chunked.tuning.attn_rows_per_chunk = rows;
      Output other;
      ASSERT_EQ(run_gpu(chunked, in, &cpu.index, other), PA_STATUS_SUCCESS) << pa_last_error();
      EXPECT_EQ(max_abs_diff(base.o, other.o), 0.0) << "rows per chunk " << rows;
      EXPECT_EQ(max_abs_diff(base.lse, other.lse), 0.0) << "rows per chunk " << rows;
    }
  }
  Case bad = c;
  bad.tuning.attn_rows_per_chunk = -3;
  Output unused;
  EXPECT_EQ(run_gpu(bad, in, &cpu.index, unused), PA_STATUS_INVALID_CONFIG);
  EXPECT_NE(std::strstr(pa_last_error(), "attn_rows_per_chunk"), nullptr) << pa_last_error();
}

// An index keeping every causal block in ascending order visits the same tiles in the same
// order as dense attention (block 128): the outputs are bit-identical.
TEST_P(Attention, AllBlocksEqualsDense) {
  PA_REQUIRE_GPU();
  for (pa_dtype dtype : {PA_DTYPE_BFLOAT16, PA_DTYPE_FLOAT16}) {
    Case c;
    c.lengths = {300, 129, 7};
    c.hq = 4, c.hkv = 2, c.dtype = dtype;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(describe(c, seed));
    const Host in = make_host(c, seed);
    const Index all = full_index(c, in.problem);
    Output sparse, dense;
    ASSERT_EQ(run_gpu(c, in, &all, sparse), PA_STATUS_SUCCESS) << pa_last_error();
    ASSERT_EQ(run_gpu(c, in, nullptr, dense), PA_STATUS_SUCCESS) << pa_last_error();
    EXPECT_EQ(max_abs_diff(sparse.o, dense.o), 0.0);
    EXPECT_EQ(max_abs_diff(sparse.lse, dense.lse), 0.0);
    expect_close("all blocks", c, sparse, dense_reference(c, in), nullptr);
  }
}

// Rows whose count is 0 attend to nothing: O = 0 and LSE = -inf; other rows keep random
// prefixes of a shuffled order.
TEST_P(Attention, EmptyRowsGiveZeroAndMinusInf) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {333, 90};
  c.hq = 4, c.hkv = 2, c.block = 64, c.force_blocks = false;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(describe(c, seed));
  const Host in = make_host(c, seed);
  Index ix = index_layout(c, in.problem);
  std::mt19937 rng(static_cast<unsigned>(seed));
  for (const SeqSpan& span : ix.batch.seqs)
    for (int m = 0; m < span.num_qblocks; ++m) {
      int32_t* row = ix.order.data() + order_row(span, 0, m);
      for (int n = 0; n <= m; ++n) row[n] = n;
      std::shuffle(row, row + m + 1, rng);
      for (int h = 0; h < c.hq; ++h) ix.count[(span.qblock_begin + m) * c.hq + h] = int32_t(rng() % (m + 2));
    }
  ix.count[0] = 0;  // at least one empty row
  CpuRun cpu;
  run_cpu(c, in, &ix, cpu);
  Output gpu;
  ASSERT_EQ(run_gpu(c, in, &ix, gpu), PA_STATUS_SUCCESS) << pa_last_error();
  const Reference ref = sparse_reference(c, in, ix);
  expect_close("empty rows", c, gpu, ref, &cpu.out);
  size_t empty_rows = 0;
  for (size_t i = 0; i < ref.lse.size(); ++i)
    if (ref.lse[i] == kNegInf) {
      ++empty_rows;
      const int h = int(i / in.cu.back());
      const int64_t t = int64_t(i % in.cu.back());
      for (int x = 0; x < c.d; ++x) ASSERT_EQ(gpu.o[(t * c.hq + h) * c.d + x], 0.0f);
    }
  EXPECT_GT(empty_rows, 0u);
}

// The two kernels (sm90 where the device has it, sm80 forced by tuning.attn_kernel) on
// the same inputs and index: each within tolerance of the fp64 reference, and of each other.
// On a device without the sm90 kernel both runs use sm80 and agree exactly.
TEST_P(Attention, KernelsAgree) {
  PA_REQUIRE_GPU();
  struct Shape {
    int d;
    pa_dtype dtype;
    int block;
    int hq, hkv;
    Inputs inputs;
  };
  const Shape shapes[] = {{128, PA_DTYPE_BFLOAT16, 128, 8, 2, Inputs::kStructured},
                          {64, PA_DTYPE_FLOAT16, 128, 4, 1, Inputs::kRandom},
                          {128, PA_DTYPE_FLOAT16, 64, 6, 2, Inputs::kRandom},
                          {64, PA_DTYPE_BFLOAT16, 64, 8, 1, Inputs::kStructured}};
  for (const Shape& shape : shapes) {
    Case c;
    c.lengths = {700, 65, 258};
    c.d = shape.d, c.dtype = shape.dtype, c.block = shape.block, c.hq = shape.hq, c.hkv = shape.hkv;
    c.gamma = 0.7f, c.inputs = shape.inputs;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(describe(c, seed));
    const Host in = make_host(c, seed);
    CpuRun cpu;
    run_cpu(c, in, nullptr, cpu);
    const Reference ref = sparse_reference(c, in, cpu.index);
    Case forced = c;
    forced.tuning.attn_kernel = PA_TUNING_KERNEL_SM80;
    Output fast, sm80;
    ASSERT_EQ(run_gpu(c, in, &cpu.index, fast), PA_STATUS_SUCCESS) << pa_last_error();
    ASSERT_EQ(run_gpu(forced, in, &cpu.index, sm80), PA_STATUS_SUCCESS) << pa_last_error();
    expect_close("default kernel", c, fast, ref, &cpu.out);
    expect_close("sm80 kernel", c, sm80, ref, &cpu.out);
    const double err_plain = max_abs_diff(ref.o_plain, ref.o);
    EXPECT_LE(max_abs_diff(fast.o, sm80.o), 2.0 * err_plain + kAtol) << "default kernel against sm80";
    EXPECT_LE(max_abs_diff(fast.lse, sm80.lse), kLseTol) << "LSE, default kernel against sm80";
  }
}

TEST_P(Attention, StridedViews) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {260, 77};
  c.hq = 8, c.hkv = 2, c.d = 64, c.block = 64;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(describe(c, seed));
  const Host in = make_host(c, seed);
  CpuRun cpu;
  run_cpu(c, in, nullptr, cpu);
  Output gpu, dense;
  ASSERT_EQ(run_gpu(c, in, &cpu.index, gpu, Layout{true}), PA_STATUS_SUCCESS) << pa_last_error();
  expect_close("strided sparse", c, gpu, sparse_reference(c, in, cpu.index), &cpu.out);
  ASSERT_EQ(run_gpu(c, in, nullptr, dense, Layout{true}), PA_STATUS_SUCCESS) << pa_last_error();
  expect_close("strided dense", c, dense, dense_reference(c, in), nullptr);
}

TEST_P(Attention, LseMayBeNull) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {200};
  c.with_lse = false;
  check_sparse_case(c);
  check_dense_case(c);
}

TEST_P(Attention, DenseMatchesReference) {
  PA_REQUIRE_GPU();
  Case a;
  a.lengths = {257, 640};
  a.hq = 4, a.hkv = 2, a.d = 64;
  check_dense_case(a);
  Case b;
  b.lengths = {513};
  b.hq = 8, b.hkv = 1, b.d = 128, b.dtype = PA_DTYPE_FLOAT16, b.inputs = Inputs::kStructured;
  check_dense_case(b);
}

// Several random shapes with fresh seeds: head_dim, dtype, block, GQA ratio 1, 4, 8.
TEST_P(Attention, RandomShapesFreshSeeds) {
  PA_REQUIRE_GPU();
  std::mt19937 rng(static_cast<unsigned>(fresh_seed()));
  const int ratios[] = {1, 4, 8};
  for (int trial = 0; trial < 4; ++trial) {
    Case c;
    c.d = rng() % 2 ? 64 : 128;
    c.dtype = rng() % 2 ? PA_DTYPE_BFLOAT16 : PA_DTYPE_FLOAT16;
    c.block = rng() % 2 ? 64 : 128;
    c.hkv = 1 + int(rng() % 2);
    c.hq = c.hkv * ratios[rng() % 3];
    c.groups = rng() % 2 ? c.hkv : 1;
    c.gamma = 0.5f + 0.4f * float(rng() % 100) / 100.0f;
    c.inputs = rng() % 2 ? Inputs::kStructured : Inputs::kRandom;
    const int seqs = 1 + int(rng() % 3);
    for (int s = 0; s < seqs; ++s) c.lengths.push_back(1 + int32_t(rng() % 400));
    check_sparse_case(c);
  }
}

// A plan in device memory that the GPU cannot run is refused when it is made, not at its
// first call: PA_STATUS_UNSUPPORTED, an error naming `reason`, the handle untouched.
void expect_device_plan_refused(const pa_problem& problem, const pa_config& config, const char* reason) {
  size_t bytes = 0;
  PA_ASSERT_OK(pa_plan_bytes(&problem, &config, &bytes));
  DeviceBuffer storage(bytes);
  pa_plan* plan = nullptr;
  EXPECT_EQ(pa_plan_create(&problem, &config, storage.get(), bytes, &plan), PA_STATUS_UNSUPPORTED);
  EXPECT_NE(std::strstr(pa_last_error(), reason), nullptr) << pa_last_error();
  EXPECT_EQ(plan, nullptr);
}

TEST(AttentionRefusal, Float32IsUnsupported) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {64};
  c.hq = 2, c.hkv = 1, c.d = 64;
  c.dtype = PA_DTYPE_FLOAT32;
  int32_t cu[2] = {0, 64};
  const pa_problem problem{1, cu, 64, c.hq, c.hkv, c.d, PA_DTYPE_FLOAT32};
  DeviceBuffer q(64 * 2 * 64 * 4), kv(64 * 64 * 4), o(64 * 2 * 64 * 4);
  pa_tensor qt = pa_tensor_contiguous(q.get(), 2, 64), kt = pa_tensor_contiguous(kv.get(), 1, 64),
            ot = pa_tensor_contiguous(o.get(), 2, 64);
  EXPECT_EQ(pa_dense_attention(&problem, 0.125f, &qt, &kt, &kt, &ot, nullptr, nullptr), PA_STATUS_UNSUPPORTED);
  EXPECT_NE(std::strstr(pa_last_error(), "float32"), nullptr) << pa_last_error();

  expect_device_plan_refused(problem, make_config(c), "pa_plan_create: float32");
}

TEST(AttentionRefusal, DevicePlanOfUnsupportedHeadDimIsRefused) {
  PA_REQUIRE_GPU();
  int32_t cu[2] = {0, 256};
  const pa_problem problem{1, cu, 256, 2, 1, 96, PA_DTYPE_BFLOAT16};
  const pa_config config = pa_config_default(96);
  expect_device_plan_refused(problem, config, "head_dim = 96");
  // The same problem in host memory is a CPU plan, which runs any head_dim.
  size_t bytes = 0;
  PA_ASSERT_OK(pa_plan_bytes(&problem, &config, &bytes));
  std::vector<unsigned char> host(bytes);
  pa_plan* plan = nullptr;
  PA_ASSERT_OK(pa_plan_create(&problem, &config, host.data(), bytes, &plan));
  pa_plan_free(plan);
}

TEST(AttentionRefusal, SetIndexRejectsOutOfRangeEntries) {
  PA_REQUIRE_GPU();
  Case c;
  c.lengths = {300};
  c.hq = 2, c.hkv = 1, c.d = 64;
  const Host in = make_host(c, 1);
  Index ix = full_index(c, in.problem);
  ix.order[order_row(ix.batch.seqs[0], 0, 1)] = 2;  // row 1 may keep blocks 0 and 1 only
  const pa_config config = make_config(c);
  size_t bytes = 0;
  PA_ASSERT_OK(pa_plan_bytes(&in.problem, &config, &bytes));
  DeviceBuffer storage(bytes);
  pa_plan* plan = nullptr;
  PA_ASSERT_OK(pa_plan_create(&in.problem, &config, storage.get(), bytes, &plan));
  EXPECT_EQ(pa_plan_set_index(plan, ix.order.data(), ix.count.data(), nullptr, nullptr), PA_STATUS_INVALID_SHAPE);
  ix = full_index(c, in.problem);
  ix.count[1 * c.hq] = 3;  // row 1 has 2 causal blocks
  EXPECT_EQ(pa_plan_set_index(plan, ix.order.data(), ix.count.data(), nullptr, nullptr), PA_STATUS_INVALID_SHAPE);
  pa_plan_free(plan);
}

}  // namespace
}  // namespace proxyattn::test
