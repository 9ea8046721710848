// Chunked prefill on the GPU: a chunk of queries at the end of a longer key sequence, keys
// packed or in a paged cache, against the CPU backend, on the same index (the CPU plan's, set
// on the device plan with pa_plan_set_index) and end to end (pa_forward_kv with the GPU
// estimation), through both attention kernels (the sm90
// kernel takes pages of whole 64-key boxes, the sm80 kernel any page and the forced runs).
// Outputs are poisoned before the call: a row left unwritten shows up as NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_util.hpp"
#include "proxyattn/proxyattn.h"
#include "proxyattn/proxyattn_tuning.h"

namespace proxyattn::test {
namespace {

#define PA_OK(call) ASSERT_EQ((call), PA_STATUS_SUCCESS) << #call << ": " << pa_last_error()

struct ChunkCase {
  const char* name;
  std::vector<int> kv_lens;  // keys of each sequence
  std::vector<int> q_lens;   // the queries of each (the last positions)
  int hq = 8, hkv = 2, d = 128, block = 128;
  pa_dtype dtype = PA_DTYPE_BFLOAT16;
  int page_size = 0;  // 0: packed keys
  bool sm80 = false;  // force the sm80 kernel
};
void PrintTo(const ChunkCase& c, std::ostream* os) { *os << c.name; }

int elem_bytes(pa_dtype t) { return t == PA_DTYPE_FLOAT32 ? 4 : 2; }

// The host side of a case: the problem, its inputs (Q of the chunks, K and V of the whole
// sequences, packed or paged) and the CPU backend's run.
struct HostCase {
  std::vector<int32_t> cu_q, cu_k, table;
  pa_problem problem{};
  pa_config config{};
  std::vector<uint8_t> q, k, v;  // q [total_q, Hq, d]; k, v [kv rows, Hkv, d]
  std::vector<int32_t> order, count, budget, needed;
  std::vector<uint8_t> o;        // CPU output
  std::vector<float> lse;
  int64_t kv_rows = 0;
};

std::vector<uint8_t> to_dtype(const std::vector<float>& x, pa_dtype t) {
  std::vector<uint8_t> out(x.size() * elem_bytes(t));
  pa_from_float32(t, x.data(), int64_t(x.size()), out.data());
  return out;
}

std::vector<float> to_float(const std::vector<uint8_t>& x, pa_dtype t) {
  std::vector<float> out(x.size() / elem_bytes(t));
  pa_to_float32(t, x.data(), int64_t(out.size()), out.data());
  return out;
}

void make_host(const ChunkCase& c, HostCase& h) {
  const int seqs = int(c.kv_lens.size());
  h.cu_q.assign(1, 0), h.cu_k.assign(1, 0);
  for (int s = 0; s < seqs; ++s) h.cu_q.push_back(h.cu_q.back() + c.q_lens[s]), h.cu_k.push_back(h.cu_k.back() + c.kv_lens[s]);
  pa_problem& p = h.problem;
  p.num_seqs = seqs, p.cu_seqlens = h.cu_q.data(), p.total_tokens = h.cu_q.back();
  p.num_q_heads = c.hq, p.num_kv_heads = c.hkv, p.head_dim = c.d, p.dtype = c.dtype;
  p.cu_seqlens_k = h.cu_k.data(), p.total_kv_tokens = h.cu_k.back();
  h.config = pa_config_default(c.d);
  h.config.block_size = c.block;
  h.config.min_budget_tokens = 2 * c.block;
  h.config.dense_below = 4 * c.block;
  h.config.gamma = 0.9f;
  // Structured prompts (sinks, local band, needles): one per sequence, each its own seed.
  std::vector<float> q_all, k_all, v_all;  // whole sequences, packed
  for (int s = 0; s < seqs; ++s) {
    const int n = c.kv_lens[s];
    const int32_t cu[2] = {0, n};
    const pa_problem whole{1, cu, n, c.hq, c.hkv, c.d, PA_DTYPE_FLOAT32};
    std::vector<float> q(size_t(n) * c.hq * c.d), k(size_t(n) * c.hkv * c.d), v(k.size());
    const pa_synth_params params = pa_synth_default(uint64_t(17 + s));
    ASSERT_EQ(pa_synth_generate(&whole, &params, q.data(), k.data(), v.data()), PA_STATUS_SUCCESS);
    const size_t first = size_t(n - c.q_lens[s]) * c.hq * c.d;
    q_all.insert(q_all.end(), q.begin() + first, q.end());
    k_all.insert(k_all.end(), k.begin(), k.end());
    v_all.insert(v_all.end(), v.begin(), v.end());
  }
  h.q = to_dtype(q_all, c.dtype);
  const size_t row = size_t(c.hkv) * c.d;
  if (c.page_size == 0) {
    h.k = to_dtype(k_all, c.dtype), h.v = to_dtype(v_all, c.dtype);
    h.kv_rows = p.total_kv_tokens;
  } else {
    // Pages handed out shuffled; unused rows hold zeros (finite, as a cache's must).
    int max_pages = 0, used = 0;
    for (int n : c.kv_lens) max_pages = std::max(max_pages, (n + c.page_size - 1) / c.page_size), used += (n + c.page_size - 1) / c.page_size;
    const int num_pages = used + 2;
    std::vector<int32_t> pages(num_pages);
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), std::mt19937(5));
    h.table.assign(size_t(seqs) * max_pages, 0);
    std::vector<float> kc(size_t(num_pages) * c.page_size * row, 0.0f), vc(kc.size(), 0.0f);
    int next = 0;
    for (int s = 0; s < seqs; ++s)
      for (int t = 0; t < c.kv_lens[s]; ++t) {
        if (t % c.page_size == 0) h.table[size_t(s) * max_pages + t / c.page_size] = pages[next++];
        const size_t dst = (size_t(h.table[size_t(s) * max_pages + t / c.page_size]) * c.page_size + t % c.page_size) * row;
        std::copy_n(&k_all[(h.cu_k[s] + size_t(t)) * row], row, &kc[dst]);
        std::copy_n(&v_all[(h.cu_k[s] + size_t(t)) * row], row, &vc[dst]);
      }
    h.k = to_dtype(kc, c.dtype), h.v = to_dtype(vc, c.dtype);
    p.page_size = c.page_size, p.num_pages = num_pages, p.max_pages_per_seq = max_pages;
    h.kv_rows = int64_t(num_pages) * c.page_size;
  }
  // The CPU backend: estimate and attend, keep the index and the outputs.
  size_t plan_bytes = 0, work_bytes = 0;
  ASSERT_EQ(pa_plan_bytes(&p, &h.config, &plan_bytes), PA_STATUS_SUCCESS) << pa_last_error();
  ASSERT_EQ(pa_workspace_bytes(&p, &h.config, &work_bytes), PA_STATUS_SUCCESS);
  std::vector<uint8_t> storage(plan_bytes), work(work_bytes);
  pa_plan* plan = nullptr;
  ASSERT_EQ(pa_plan_create(&p, &h.config, storage.data(), plan_bytes, &plan), PA_STATUS_SUCCESS);
  h.o.assign(h.q.size(), 0);
  h.lse.assign(size_t(c.hq) * p.total_tokens, 0.0f);
  pa_tensor tq = pa_tensor_contiguous(h.q.data(), c.hq, c.d), to = pa_tensor_contiguous(h.o.data(), c.hq, c.d);
  const pa_kv_cache kv{pa_tensor_contiguous(h.k.data(), c.hkv, c.d), pa_tensor_contiguous(h.v.data(), c.hkv, c.d),
                       c.page_size ? h.table.data() : nullptr, nullptr};
  ASSERT_EQ(pa_forward_kv(plan, &tq, &kv, &to, h.lse.data(), work.data(), work_bytes, nullptr), PA_STATUS_SUCCESS)
      << pa_last_error();
  int64_t rows = 0, entries = 0;
  ASSERT_EQ(pa_plan_get_layout(plan, &rows, &entries), PA_STATUS_SUCCESS);
  h.order.resize(entries), h.count.resize(rows * c.hq);
  h.budget.resize(size_t(seqs) * c.hq), h.needed.resize(h.budget.size());
  ASSERT_EQ(pa_plan_get_index(plan, h.order.data(), h.count.data()), PA_STATUS_SUCCESS);
  ASSERT_EQ(pa_plan_get_heads(plan, h.budget.data(), h.needed.data(), nullptr), PA_STATUS_SUCCESS);
  pa_plan_free(plan);
}

// A case's tensors on the device (O and LSE poisoned), its plan (storage and workspace on the
// device, the sm80 kernel forced where the case asks) and the views of its calls.
struct DeviceCase {
  DeviceBuffer q, k, v, o, lse, table, storage, work;
  pa_plan* plan = nullptr;
  pa_tensor tq{}, to{};
  pa_kv_cache kv{};

  DeviceCase(const ChunkCase& c, const HostCase& h)
      : q(h.q.size()), k(h.k.size()), v(h.v.size()), o(h.q.size()), lse(sizeof(float) * h.lse.size()),
        table(sizeof(int32_t) * std::max<size_t>(1, h.table.size())) {}
  DeviceCase(const DeviceCase&) = delete;
  DeviceCase& operator=(const DeviceCase&) = delete;
  ~DeviceCase() { pa_plan_free(plan); }

  // Uploads, poisons and makes the plan; ASSERTs (the caller checks HasFatalFailure).
  void make(const ChunkCase& c, const HostCase& h) {
    PA_CUDA_ASSERT(q.upload(h.q.data()));
    PA_CUDA_ASSERT(k.upload(h.k.data()));
    PA_CUDA_ASSERT(v.upload(h.v.data()));
    if (!h.table.empty()) PA_CUDA_ASSERT(table.upload(h.table.data()));
    PA_CUDA_ASSERT(o.poison());
    PA_CUDA_ASSERT(lse.poison());
    size_t plan_bytes = 0, work_bytes = 0;
    PA_OK(pa_plan_bytes(&h.problem, &h.config, &plan_bytes));
    PA_OK(pa_workspace_bytes(&h.problem, &h.config, &work_bytes));
    storage = DeviceBuffer(plan_bytes);
    work = DeviceBuffer(work_bytes);
    PA_OK(pa_plan_create(&h.problem, &h.config, storage.get(), plan_bytes, &plan));
    if (c.sm80) {
      pa_tuning t = pa_tuning_default();
      t.attn_kernel = PA_TUNING_KERNEL_SM80;
      PA_OK(pa_plan_set_tuning(plan, &t));
    }
    tq = pa_tensor_contiguous(q.get(), c.hq, c.d), to = pa_tensor_contiguous(o.get(), c.hq, c.d);
    kv = pa_kv_cache{pa_tensor_contiguous(k.get(), c.hkv, c.d), pa_tensor_contiguous(v.get(), c.hkv, c.d),
                     c.page_size ? table.as<int32_t>() : nullptr, nullptr};
  }
  pa_status forward(void* stream = nullptr) {
    return pa_forward_kv(plan, &tq, &kv, &to, lse.as<float>(), work.get(), work.bytes(), stream);
  }
};

// The case on the device, with the CPU's index (gpu_estimate false) or its own estimation
// (pa_forward_kv; near-ties may rank a block differently, within the output tolerance): O and
// LSE against the CPU backend's.
void run_case(const ChunkCase& c, bool gpu_estimate = false) {
  HostCase h;
  make_host(c, h);
  if (::testing::Test::HasFatalFailure()) return;
  DeviceCase dev(c, h);
  dev.make(c, h);
  if (::testing::Test::HasFatalFailure()) return;
  pa_status status = PA_STATUS_SUCCESS;
  if (gpu_estimate) {
    status = dev.forward();
  } else {
    PA_OK(pa_plan_set_index(dev.plan, h.order.data(), h.count.data(), h.budget.data(), h.needed.data()));
    status = pa_attend_kv(dev.plan, &dev.tq, &dev.kv, &dev.to, dev.lse.as<float>(), nullptr);
  }
  ASSERT_EQ(status, PA_STATUS_SUCCESS) << pa_last_error();
  PA_CUDA_ASSERT(cudaDeviceSynchronize());
  std::vector<uint8_t> o_gpu(h.o.size());
  std::vector<float> lse_gpu(h.lse.size());
  PA_CUDA_ASSERT(dev.o.download(o_gpu.data()));
  PA_CUDA_ASSERT(dev.lse.download(lse_gpu.data()));
  // Against the CPU backend (fp32 accumulation both; the GPU's products round P to the input
  // type): every row written and finite, L2 error within a few bf16 roundings.
  const std::vector<float> a = to_float(o_gpu, c.dtype), b = to_float(h.o, c.dtype);
  double num = 0, den = 0, worst = 0;
  int non_finite = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) { ++non_finite; continue; }
    num += double(a[i] - b[i]) * (a[i] - b[i]), den += double(b[i]) * b[i];
    worst = std::max(worst, double(std::abs(a[i] - b[i])));
  }
  EXPECT_EQ(non_finite, 0) << "outputs not written or not finite";
  EXPECT_LT(std::sqrt(num / std::max(den, 1e-30)), 1.5e-2) << "max abs diff " << worst;
  double lse_worst = 0;
  for (size_t i = 0; i < lse_gpu.size(); ++i) lse_worst = std::max(lse_worst, double(std::abs(lse_gpu[i] - h.lse[i])));
  EXPECT_LT(lse_worst, 2e-2);
}

class ChunkedGpu : public ::testing::TestWithParam<ChunkCase> {};

TEST_P(ChunkedGpu, MatchesTheCpuBackend) {
  PA_REQUIRE_GPU();
  run_case(GetParam());
}

TEST_P(ChunkedGpu, ForwardWithGpuEstimationMatchesTheCpuBackend) {
  PA_REQUIRE_GPU();
  run_case(GetParam(), true);
}

const ChunkCase kCases[] = {
    {"PackedAligned", {3000}, {1976}},
    {"PackedUnalignedD64Block64Fp16", {2600}, {1600}, 8, 2, 64, 64, PA_DTYPE_FLOAT16},
    {"Paged16", {2500}, {1400}, 8, 2, 128, 128, PA_DTYPE_BFLOAT16, 16},
    {"Paged32D64", {2500}, {1300}, 6, 2, 64, 64, PA_DTYPE_BFLOAT16, 32},
    {"Paged64", {2600}, {1500}, 8, 2, 128, 128, PA_DTYPE_BFLOAT16, 64},
    {"Paged128D64Gqa1", {2600}, {1000}, 4, 4, 64, 128, PA_DTYPE_BFLOAT16, 128},
    {"Paged256", {3100}, {1700}, 8, 1, 128, 128, PA_DTYPE_BFLOAT16, 256},
    {"Paged128Sm80", {2600}, {1500}, 8, 2, 128, 128, PA_DTYPE_BFLOAT16, 128, true},
    {"PackedUnalignedSm80", {2600}, {1000}, 8, 2, 128, 64, PA_DTYPE_BFLOAT16, 0, true},
    {"DecodeStepPaged64", {2000}, {1}, 8, 2, 128, 128, PA_DTYPE_BFLOAT16, 64},
    {"VarlenChunkDecodePromptPaged128", {2300, 1800, 700, 900}, {1200, 1, 700, 0}, 8, 2, 128, 128,
     PA_DTYPE_BFLOAT16, 128},
    {"VarlenPackedD64", {2000, 1500, 600}, {900, 37, 600}, 8, 2, 64, 64, PA_DTYPE_BFLOAT16, 0},
};
INSTANTIATE_TEST_SUITE_P(Cases, ChunkedGpu, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<ChunkCase>& info) { return std::string(info.param.name); });

// CUDA graphs: a plan made outside capture, then pa_forward_kv (estimation and attention)
// captured on a stream and replayed. The replay must equal an eager call bit for bit, on the
// captured inputs and after new inputs are written into the same buffers (the graph reads
// device memory only; nothing in the call synchronises with or allocates on the host).
void run_graph_case(const ChunkCase& c) {
  HostCase h;
  make_host(c, h);
  if (::testing::Test::HasFatalFailure()) return;
  const pa_problem& p = h.problem;
  DeviceCase dev(c, h);
  dev.make(c, h);
  if (::testing::Test::HasFatalFailure()) return;
  cudaStream_t stream = nullptr;
  PA_CUDA_ASSERT(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::unique_ptr<CUstream_st, decltype(&cudaStreamDestroy)> stream_owner(stream, cudaStreamDestroy);
  const auto forward = [&] { return dev.forward(stream); };
  DeviceBuffer &q = dev.q, &o = dev.o, &lse = dev.lse;
  // O and LSE of the last run, after poisoning them before it.
  const auto outputs = [&](std::vector<uint8_t>* o_host, std::vector<float>* lse_host) {
    PA_CUDA_ASSERT(cudaStreamSynchronize(stream));
    o_host->resize(h.o.size()), lse_host->resize(h.lse.size());
    PA_CUDA_ASSERT(o.download(o_host->data()));
    PA_CUDA_ASSERT(lse.download(lse_host->data()));
  };
  std::vector<uint8_t> o_eager, o_replay;
  std::vector<float> lse_eager, lse_replay;
  PA_CUDA_ASSERT(o.poison());
  PA_OK(forward());  // the first call outside capture (as for any CUDA library: modules load)
  outputs(&o_eager, &lse_eager);

  cudaGraph_t graph = nullptr;
  PA_CUDA_ASSERT(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const pa_status captured = forward();
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  std::unique_ptr<CUgraph_st, decltype(&cudaGraphDestroy)> graph_owner(graph, cudaGraphDestroy);
  ASSERT_EQ(captured, PA_STATUS_SUCCESS) << "pa_forward_kv under capture: " << pa_last_error();
  ASSERT_EQ(ended, cudaSuccess) << cudaGetErrorString(ended);
  cudaGraphExec_t exec = nullptr;
  PA_CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
  std::unique_ptr<CUgraphExec_st, decltype(&cudaGraphExecDestroy)> exec_owner(exec, cudaGraphExecDestroy);

  PA_CUDA_ASSERT(o.poison());
  PA_CUDA_ASSERT(lse.poison());
  PA_CUDA_ASSERT(cudaGraphLaunch(exec, stream));
  outputs(&o_replay, &lse_replay);
  EXPECT_TRUE(o_replay == o_eager) << "the replay's output differs from the eager call's";
  EXPECT_TRUE(std::memcmp(lse_replay.data(), lse_eager.data(), lse_eager.size() * sizeof(float)) == 0);

  // New queries in the captured buffer (the tokens in reverse order): replay, then eager.
  std::vector<uint8_t> q_new(h.q.size());
  const size_t token_bytes = h.q.size() / size_t(p.total_tokens);
  for (int64_t t = 0; t < p.total_tokens; ++t)
    std::memcpy(&q_new[t * token_bytes], &h.q[(p.total_tokens - 1 - t) * token_bytes], token_bytes);
  PA_CUDA_ASSERT(q.upload(q_new.data()));
  PA_CUDA_ASSERT(o.poison());
  PA_CUDA_ASSERT(cudaGraphLaunch(exec, stream));
  outputs(&o_replay, &lse_replay);
  PA_CUDA_ASSERT(o.poison());
  PA_OK(forward());
  outputs(&o_eager, &lse_eager);
  EXPECT_TRUE(o_replay == o_eager) << "after new inputs, the replay's output differs from the eager call's";
  EXPECT_TRUE(std::memcmp(lse_replay.data(), lse_eager.data(), lse_eager.size() * sizeof(float)) == 0);
  EXPECT_FALSE(o_replay == h.o) << "the new queries did not change the output";
}

TEST(ChunkedGpuGraph, CapturedForwardReplaysWithNewInputs) {
  PA_REQUIRE_GPU();
  run_graph_case({"GraphPaged64", {2600}, {1500}, 8, 2, 128, 128, PA_DTYPE_BFLOAT16, 64});
  run_graph_case({"GraphPackedVarlen", {2300, 1800, 700}, {1200, 1, 700}, 8, 2, 128, 128});
  run_graph_case({"GraphPaged16Sm80", {2500}, {1400}, 8, 2, 64, 64, PA_DTYPE_FLOAT16, 16, true});
}

// Small cases for compute-sanitizer (gpu-check's sanitize step: --gtest_filter=*Sanitize*).
TEST(ChunkedGpuSanitize, PagedAndPackedChunks) {
  PA_REQUIRE_GPU();
  run_case({"SanitizePaged64", {700}, {300}, 4, 2, 128, 64, PA_DTYPE_BFLOAT16, 64});
  run_case({"SanitizePaged16", {700}, {300}, 4, 2, 64, 64, PA_DTYPE_BFLOAT16, 16});
  run_case({"SanitizePackedUnaligned", {800}, {333}, 4, 1, 64, 128, PA_DTYPE_BFLOAT16, 0});
}

}  // namespace
}  // namespace proxyattn::test
