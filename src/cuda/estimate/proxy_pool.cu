// Steps 2-3: proxy heads at sampled positions, one pass over Q and K.
//   Qp[j][i] = mean over the Q heads of group j of Q[i * s]   (fp32 sum, stored as T)
//   Kp[j][i] = mean over the KV heads of group j of K[i * s]
// Bit-identical to the CPU backend: the sum runs over heads in ascending order from 0 in
// fp32, is divided by the head count in IEEE fp32 and rounded to nearest even into T.
#include "common/check.cuh"
#include "estimate/device_utils.cuh"
#include "estimate/stages.cuh"

namespace proxyattn::cuda::est {
namespace {

// Speed settings. One thread per 16-byte vector of a proxy row (no loop: at short lengths
// a CTA per query block with a loop over its rows left too few loads in flight: Llama-3.1-8B,
// g = 1, 8K, 0.071 ms to read 20 MB, 2026-11-24); each thread issues the loads of kHeadBatch
// heads before it sums them.
constexpr int kPoolThreads = 128;
constexpr int kHeadBatch = 8;

// Mean over `heads` consecutive heads of 8 elements of one token row.
template <typename T>
__device__ void mean_of_heads(const InputView& in, int64_t token, int first_head, int heads,
                              int col, float (&sum)[kVecElems]) {
#pragma unroll
  for (int e = 0; e < kVecElems; ++e) sum[e] = 0.0f;
  const T* base = static_cast<const T*>(in.data) + token * in.token_stride + col;
  const int end = first_head + heads;
  for (int h0 = first_head; h0 < end; h0 += kHeadBatch) {
    uint4 raw[kHeadBatch];
#pragma unroll
    for (int i = 0; i < kHeadBatch; ++i)
      if (h0 + i < end) raw[i] = load8_raw<T>(base + int64_t(h0 + i) * in.head_stride, in.vector_ok);
#pragma unroll
    for (int i = 0; i < kHeadBatch; ++i)  // the sum in ascending head order, as the CPU's
      if (h0 + i < end) {
        const T* x = reinterpret_cast<const T*>(&raw[i]);
#pragma unroll
        for (int e = 0; e < kVecElems; ++e) sum[e] += Element<T>::to_float(x[e]);
      }
  }
  const float count = float(heads);
#pragma unroll
  for (int e = 0; e < kVecElems; ++e) sum[e] = sum[e] / count;  // IEEE division, as the CPU
}

template <typename T>
__device__ void store8(T* dst, const float (&x)[kVecElems]) {
  T out[kVecElems];
#pragma unroll
  for (int e = 0; e < kVecElems; ++e) out[e] = Element<T>::from_float(x[e]);
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(out);
}

// Grid (ceil(sampled_rows * D / 8 / kPoolThreads), g): thread t of group j writes vector
// t % (D / 8) of padded sampled row t / (D / 8) of both proxies (the layout of stages.cuh's
// Workspace); rows past a sequence's end are zero, dense sequences' rows are left alone.
template <typename T, int D>
__global__ void __launch_bounds__(kPoolThreads) pool_proxies_kernel(Geometry geo, InputView q,
                                                                    InputView k, T* proxy_q,
                                                                    T* proxy_k) {
  constexpr int kChunks = D / kVecElems;  // 16-byte vectors of one row
  const int64_t group_rows = geo.sampled_rows();
  const int64_t item = int64_t(blockIdx.x) * kPoolThreads + threadIdx.x;
  if (item >= group_rows * kChunks) return;
  const int j = blockIdx.y;
  const int64_t row = item / kChunks;  // padded sampled row: block gb's rows come in order
  const int col = int(item % kChunks) * kVecElems;
  const int64_t gb = row / geo.per_block;
  const SeqSpan span = geo.seqs[geo.qblock_seq[gb]];
  if (geo.dense(span)) return;
  const int64_t i = (gb - span.qblock_begin) * geo.per_block + row % geo.per_block;  // sampled index in the sequence
  const int q_heads = geo.num_q_heads / geo.groups, kv_heads = geo.num_kv_heads / geo.groups;
  const int64_t out = (int64_t(j) * group_rows + row) * D + col;
  float qx[kVecElems], kx[kVecElems];
  if (i < geo.sampled(span)) {
    const int64_t token = span.token_begin + i * geo.stride;
    mean_of_heads<T>(q, token, j * q_heads, q_heads, col, qx);
    mean_of_heads<T>(k, token, j * kv_heads, kv_heads, col, kx);
  } else {
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) qx[e] = kx[e] = 0.0f;
  }
  store8<T>(proxy_q + out, qx);
  store8<T>(proxy_k + out, kx);
}

template <typename T, int D>
pa_status launch(const Launch& l, const InputView& q, const InputView& k, const Workspace& ws) {
  constexpr int64_t kChunks = D / kVecElems;
  const dim3 grid(unsigned((l.geo.sampled_rows() * kChunks + kPoolThreads - 1) / kPoolThreads),
                  unsigned(l.geo.groups));
  pool_proxies_kernel<T, D><<<grid, kPoolThreads, 0, l.stream>>>(
      l.geo, q, k, static_cast<T*>(ws.proxy_q), static_cast<T*>(ws.proxy_k));
  PA_CUDA_CHECK_LAUNCH("pool_proxies_kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace

pa_status launch_pool_proxies(const Launch& l, const InputView& q, const InputView& k,
                              const Workspace& ws) {
  const bool bf16 = l.dtype == PA_DTYPE_BFLOAT16;
  if (l.head_dim == 64)
    return bf16 ? launch<__nv_bfloat16, 64>(l, q, k, ws) : launch<__half, 64>(l, q, k, ws);
  return bf16 ? launch<__nv_bfloat16, 128>(l, q, k, ws) : launch<__half, 128>(l, q, k, ws);
}

}  // namespace proxyattn::cuda::est
