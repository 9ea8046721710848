// Steps 2-3: proxy heads at sampled positions, one pass over Q and K.
//   Qp[j][i] = mean over the Q heads of group j of Q[i * s]   (fp32 sum, stored as T)
//   Kp[j][i] = mean over the KV heads of group j of K[i * s]
// Bit-identical to the CPU backend: the sum runs over heads in ascending order from 0 in
// fp32, is divided by the head count in IEEE fp32 and rounded to nearest even into T.
//
// Whole prompts (pool_proxies_kernel<.., false>): the rows' positions are the keys', pooled
// from the packed Q and K. The general instantiation (chunks, paged keys, a state) follows
// src/cpu/estimate.cpp's build_proxies and store_state: the call's own positions pooled from
// Q and K (and written to the state), a partial first block's earlier positions read from
// the state (keys pooled again without one, queries then unknown: zero, never scored), and
// the keys before the first row by pool_prefix_keys_kernel.
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

// Eight floats rounded to T, as stored.
template <typename T>
__device__ uint4 pack8(const float (&x)[kVecElems]) {
  T out[kVecElems];
#pragma unroll
  for (int e = 0; e < kVecElems; ++e) out[e] = Element<T>::from_float(x[e]);
  return *reinterpret_cast<const uint4*>(out);
}

// Eight stored elements to dst: one 16-byte store when `vector` (dst 16-byte aligned).
template <typename T>
__device__ void store8_raw(T* dst, uint4 raw, bool vector) {
  if (vector) {
    *reinterpret_cast<uint4*>(dst) = raw;
    return;
  }
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) dst[i] = e[i];
}

template <typename T>
__device__ void store8(T* dst, const float (&x)[kVecElems]) {
  store8_raw<T>(dst, pack8<T>(x), true);
}

// Mean of group j's KV heads at sequence position pos, as stored.
template <typename T>
__device__ uint4 pooled_key(const Geometry& geo, const KeyView& k, const SeqSpan& span, int seq,
                            int64_t pos, int j, int col) {
  const int kv_heads = geo.num_kv_heads / geo.groups;
  float kx[kVecElems];
  mean_of_heads<T>(k.k, k.row(span, seq, pos), j * kv_heads, kv_heads, col, kx);
  return pack8<T>(kx);
}

// The general case of one vector (group j, column col) of a sequence's sampled query row i
// (absolute) and of its key row i: the own positions pooled and written to the state, the
// earlier ones of the first block read from it; dense sequences (reached only with a state)
// write the state of their own positions and nothing else.
template <typename T, int D>
__device__ void pool_general(const Geometry& geo, const InputView& q, const KeyView& k,
                             const StateView& state, const SeqSpan& span, int seq, int64_t i, int j,
                             int col, T* query_out, T* key_out) {
  const bool dense = geo.dense(span);
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  uint4 query = zero, key = zero;  // past the sequence's end, and unknown queries: zero
  T* st = static_cast<T*>(state.data);
  const int64_t pos = i * geo.stride;
  if (i >= geo.sampled(span)) {
    if (dense) return;
  } else if (i >= geo.own_begin(span)) {
    const int q_heads = geo.num_q_heads / geo.groups;
    float qx[kVecElems];
    mean_of_heads<T>(q, span.token_begin + pos - span.query_offset(), j * q_heads, q_heads, col, qx);
    query = pack8<T>(qx);
    key = pooled_key<T>(geo, k, span, seq, pos, j, col);
    if (st != nullptr) {
      store8_raw<T>(st + state.row(k, geo, seq, pos, 0, j, D) + col, key, state.vector_ok);
      store8_raw<T>(st + state.row(k, geo, seq, pos, 1, j, D) + col, query, state.vector_ok);
    }
    if (dense) return;
  } else if (dense) {
    return;
  } else if (st != nullptr) {  // pooled by an earlier call
    key = load8_raw<T>(st + state.row(k, geo, seq, pos, 0, j, D) + col, state.vector_ok);
    query = load8_raw<T>(st + state.row(k, geo, seq, pos, 1, j, D) + col, state.vector_ok);
  } else {
    key = pooled_key<T>(geo, k, span, seq, pos, j, col);
  }
  store8_raw<T>(query_out, query, true);
  store8_raw<T>(key_out, key, true);
}

// Grid (ceil(sampled_rows * D / 8 / kPoolThreads), g): thread t of group j writes vector
// t % (D / 8) of padded sampled row t / (D / 8) of both proxies (the layout of stages.cuh's
// Workspace: the query row and the key row of the same position); rows past a sequence's
// end are zero, dense sequences' rows are left alone.
template <typename T, int D, bool kGeneral>
__global__ void __launch_bounds__(kPoolThreads)
    pool_proxies_kernel(Geometry geo, InputView q, KeyView k, StateView state, T* proxy_q, T* proxy_k) {
  constexpr int kChunks = D / kVecElems;  // 16-byte vectors of one row
  const int64_t group_rows = geo.sampled_rows();
  const int64_t item = int64_t(blockIdx.x) * kPoolThreads + threadIdx.x;
  if (item >= group_rows * kChunks) return;
  const int j = blockIdx.y;
  const int64_t row = item / kChunks;  // padded sampled row: block gb's rows come in order
  const int col = int(item % kChunks) * kVecElems;
  const int64_t gb = row / geo.per_block;
  const int seq = geo.qblock_seq[gb];
  const SeqSpan span = geo.seqs[seq];
  const int64_t out = (int64_t(j) * group_rows + row) * D + col;
  if constexpr (kGeneral) {
    const int64_t i = row - geo.row_base(span);  // sampled index in the sequence
    const int64_t key_out = (int64_t(j) * geo.key_rows() + geo.key_block0(span, seq) * geo.per_block + i) * D + col;
    pool_general<T, D>(geo, q, k, state, span, seq, i, j, col, proxy_q + out, proxy_k + key_out);
    return;
  }
  if (geo.dense<false>(span)) return;
  const int64_t i = (gb - span.qblock_begin) * geo.per_block + row % geo.per_block;  // sampled index in the sequence
  const int q_heads = geo.num_q_heads / geo.groups, kv_heads = geo.num_kv_heads / geo.groups;
  float qx[kVecElems], kx[kVecElems];
  if (i < geo.sampled(span)) {
    const int64_t token = span.token_begin + i * geo.stride;
    mean_of_heads<T>(q, token, j * q_heads, q_heads, col, qx);
    mean_of_heads<T>(k.k, token, j * kv_heads, kv_heads, col, kx);
  } else {
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) qx[e] = kx[e] = 0.0f;
  }
  store8<T>(proxy_q + out, qx);
  store8<T>(proxy_k + out, kx);
}

// Grid (ceil(key_rows * D / 8 / kPoolThreads), g): vector t % (D / 8) of key row t / (D / 8)
// where it lies before its sequence's first row (a chunk's prefix): read from the state when
// there is one (pooled there by an earlier call), else pooled from K again. Other rows are
// pool_proxies_kernel's.
template <typename T, int D>
__global__ void __launch_bounds__(kPoolThreads)
    pool_prefix_keys_kernel(Geometry geo, KeyView k, StateView state, T* proxy_k) {
  constexpr int kChunks = D / kVecElems;
  const int64_t group_rows = geo.key_rows();
  const int64_t item = int64_t(blockIdx.x) * kPoolThreads + threadIdx.x;
  if (item >= group_rows * kChunks) return;
  const int j = blockIdx.y;
  const int64_t row = item / kChunks;
  const int col = int(item % kChunks) * kVecElems;
  const int seq = geo.kblock_seq[row / geo.per_block];
  const SeqSpan span = geo.seqs[seq];
  const int64_t i = row - geo.key_block0(span, seq) * geo.per_block;  // sampled index in the sequence
  if (geo.dense(span) || i >= int64_t(span.first_qblock) * geo.per_block) return;
  const int64_t pos = i * geo.stride;
  T* st = static_cast<T*>(state.data);
  const uint4 key = st != nullptr ? load8_raw<T>(st + state.row(k, geo, seq, pos, 0, j, D) + col, state.vector_ok)
                                  : pooled_key<T>(geo, k, span, seq, pos, j, col);
  store8_raw<T>(proxy_k + (int64_t(j) * group_rows + row) * D + col, key, true);
}

template <typename T, int D>
pa_status launch(const Launch& l, const InputView& q, const KeyView& k, const StateView& state,
                 const Workspace& ws) {
  constexpr int64_t kChunks = D / kVecElems;
  auto grid = [&](int64_t rows) {
    return dim3(unsigned((rows * kChunks + kPoolThreads - 1) / kPoolThreads), unsigned(l.geo.groups));
  };
  T* proxy_q = static_cast<T*>(ws.proxy_q);
  T* proxy_k = static_cast<T*>(ws.proxy_k);
  if (l.general)
    pool_proxies_kernel<T, D, true><<<grid(l.geo.sampled_rows()), kPoolThreads, 0, l.stream>>>(
        l.geo, q, k, state, proxy_q, proxy_k);
  else
    pool_proxies_kernel<T, D, false><<<grid(l.geo.sampled_rows()), kPoolThreads, 0, l.stream>>>(
        l.geo, q, k, state, proxy_q, proxy_k);
  PA_CUDA_CHECK_LAUNCH("pool_proxies_kernel");
  if (!l.prefix_keys) return PA_STATUS_SUCCESS;
  pool_prefix_keys_kernel<T, D><<<grid(l.geo.key_rows()), kPoolThreads, 0, l.stream>>>(l.geo, k, state, proxy_k);
  PA_CUDA_CHECK_LAUNCH("pool_prefix_keys_kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace

pa_status launch_pool_proxies(const Launch& l, const InputView& q, const KeyView& k,
                              const StateView& state, const Workspace& ws) {
  const bool bf16 = l.dtype == PA_DTYPE_BFLOAT16;
  if (l.head_dim == 64)
    return bf16 ? launch<__nv_bfloat16, 64>(l, q, k, state, ws) : launch<__half, 64>(l, q, k, state, ws);
  return bf16 ? launch<__nv_bfloat16, 128>(l, q, k, state, ws) : launch<__half, 128>(l, q, k, state, ws);
}

}  // namespace proxyattn::cuda::est
