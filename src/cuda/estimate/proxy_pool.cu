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

constexpr int kPoolThreads = 128;

// Mean over `heads` consecutive heads of 8 elements of one token row.
template <typename T>
__device__ void mean_of_heads(const InputView& in, int64_t token, int first_head, int heads,
                              int col, float (&sum)[kVecElems]) {
#pragma unroll
  for (int e = 0; e < kVecElems; ++e) sum[e] = 0.0f;
  const T* base = static_cast<const T*>(in.data) + token * in.token_stride + col;
  for (int h = first_head; h < first_head + heads; ++h) {
    float x[kVecElems];
    load8<T>(base + int64_t(h) * in.head_stride, in.vector_ok, x);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) sum[e] += x[e];
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

// Grid (total_qblocks, g): one CTA per (global query block, group) writes the block's
// per_block sampled rows of both proxies; rows past the sequence's end are zero.
template <typename T, int D>
__global__ void __launch_bounds__(kPoolThreads) pool_proxies_kernel(Geometry geo, InputView q,
                                                                    InputView k, T* proxy_q,
                                                                    T* proxy_k) {
  const int64_t gb = blockIdx.x;
  const int j = blockIdx.y;
  const SeqSpan span = geo.seqs[geo.qblock_seq[gb]];
  if (geo.dense(span)) return;
  const int m = int(gb - span.qblock_begin);
  const int64_t ns = geo.sampled(span);
  const int q_heads = geo.num_q_heads / geo.groups, kv_heads = geo.num_kv_heads / geo.groups;
  constexpr int kChunks = D / kVecElems;  // 16-byte chunks of one row
  const int64_t group_rows = geo.sampled_rows();
  for (int item = threadIdx.x; item < geo.per_block * kChunks; item += blockDim.x) {
    const int r = item / kChunks, col = (item % kChunks) * kVecElems;
    const int64_t i = int64_t(m) * geo.per_block + r;               // sampled index in the sequence
    const int64_t out = (int64_t(j) * group_rows + gb * geo.per_block + r) * D + col;
    float qx[kVecElems], kx[kVecElems];
    if (i < ns) {
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
}

template <typename T, int D>
pa_status launch(const Launch& l, const InputView& q, const InputView& k, const Workspace& ws) {
  const dim3 grid(unsigned(l.geo.total_qblocks), unsigned(l.geo.groups));
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
