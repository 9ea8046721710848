// Launcher of one compiled variant of the sm90 attention kernel: the tensor maps of Q, K and
// V (one TMA box = 64 tokens x 64 columns of one head, 128-byte swizzle), the shared
// memory attribute, the launch on the caller's stream and its check. Included by the
// instantiate_*.cu files only, which are compiled for sm_90a alone.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>

#include "attention/params.hpp"
#include "attention/sm90/item_counter.hpp"
#include "attention/sm90/kernel.cuh"
#include "common/check.cuh"
#include "common/device.cuh"

namespace proxyattn::cuda::attention {
namespace sm90 {

template <pa_dtype kDtype> struct ElementOf;
template <> struct ElementOf<PA_DTYPE_BFLOAT16> {
  using type = __nv_bfloat16;
  static constexpr CUtensorMapDataType kMapType = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
};
template <> struct ElementOf<PA_DTYPE_FLOAT16> {
  using type = __half;
  static constexpr CUtensorMapDataType kMapType = CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
};

// cuTensorMapEncodeTiled from the driver, found once through the runtime (no libcuda link).
using EncodeTiled = PFN_cuTensorMapEncodeTiled_v12000;
inline constexpr unsigned kEncodeTiledVersion = 12000;  // the CUDA version that introduced it

inline pa_status tensor_map_encoder(EncodeTiled* encode) {
  struct Lookup {
    EncodeTiled function = nullptr;
    cudaError_t error = cudaSuccess;
    cudaDriverEntryPointQueryResult query = cudaDriverEntryPointSymbolNotFound;
  };
  static const Lookup lookup = [] {
    Lookup l;
    void* function = nullptr;
    l.error = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, kEncodeTiledVersion,
                                               cudaEnableDefault, &l.query);
    l.function = reinterpret_cast<EncodeTiled>(function);
    return l;
  }();
  if (lookup.error != cudaSuccess)
    return fail(PA_STATUS_CUDA_ERROR, "sm90 attention: cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled): %s",
                cudaGetErrorString(lookup.error));
  if (lookup.query != cudaDriverEntryPointSuccess || lookup.function == nullptr)
    return fail(PA_STATUS_CUDA_ERROR, "sm90 attention: the driver has no cuTensorMapEncodeTiled (query result %d)",
                int(lookup.query));
  *encode = lookup.function;
  return PA_STATUS_SUCCESS;
}

// The tensor map of a [tokens, heads, head_dim] view: dimensions (head_dim, heads, tokens)
// innermost first, boxes of (kSwizzleElems, 1, kBoxRows).
template <pa_dtype kDtype>
pa_status make_tensor_map(EncodeTiled encode, CUtensorMap* map, const char* name, const void* data,
                          int64_t token_stride, int64_t head_stride, int heads, int64_t tokens, int head_dim) {
  constexpr int kRank = 3;
  constexpr int64_t kElementBytes = 2;
  // A dimension of extent 1 never steps; give it a stride the encoder accepts whatever the view says.
  const int64_t head_step = heads > 1 ? head_stride : head_dim;
  const cuuint64_t dims[kRank] = {cuuint64_t(head_dim), cuuint64_t(heads), cuuint64_t(tokens)};
  const cuuint64_t strides[kRank - 1] = {cuuint64_t(head_step * kElementBytes), cuuint64_t(token_stride * kElementBytes)};
  const cuuint32_t box[kRank] = {cuuint32_t(kSwizzleElems), 1u, cuuint32_t(kBoxRows)};
  const cuuint32_t element_strides[kRank] = {1u, 1u, 1u};
  const CUresult result =
      encode(map, ElementOf<kDtype>::kMapType, kRank, const_cast<void*>(data), dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS)
    return fail(PA_STATUS_CUDA_ERROR,
                "sm90 attention: cuTensorMapEncodeTiled for %s failed (CUresult %d; data %p, token_stride %lld, "
                "head_stride %lld, heads %d, tokens %lld)",
                name, int(result), data, (long long)token_stride, (long long)head_stride, heads, (long long)tokens);
  return PA_STATUS_SUCCESS;
}

// The launch's CTAs: one per SM when persistent (one CTA fits an SM; the default,
// tuning.attn_persistent), else one per item (to measure what persistence brings).
// tuning.attn_max_ctas = n > 0 (for tests) caps the persistent CTAs at n, so that every CTA
// runs many items whatever the problem size. The consumers' turns and the ranking of a
// row's heads are Params fields, set by the dispatcher from the tuning.
inline pa_status launch_grid(const pa_tuning& tuning, int64_t items, int64_t* grid) {
  *grid = items;
  if (!tuning.attn_persistent) return PA_STATUS_SUCCESS;
  int sms = 0;
  PA_TRY(current_sm_count(&sms));
  int64_t ctas = int64_t(kCtasPerSm) * sms;
  if (tuning.attn_max_ctas > 0) ctas = std::min<int64_t>(ctas, tuning.attn_max_ctas);
  *grid = std::min<int64_t>(items, ctas);
  return PA_STATUS_SUCCESS;
}

}  // namespace sm90

static_assert(sizeof(Params) + 3 * sizeof(CUtensorMap) + alignof(CUtensorMap) <= 4096,
              "Params and the three tensor maps within the classic 4 KiB of kernel parameters");

template <pa_dtype kDtype, int kHeadDim>
pa_status run_sm90(const Params& params, int64_t items, const pa_tuning& tuning, void* stream) {
  using Traits = sm90::KernelTraits<typename sm90::ElementOf<kDtype>::type, kHeadDim>;
  constexpr int kSharedBytes = int(sizeof(sm90::SharedStorage<Traits>));
  sm90::EncodeTiled encode = nullptr;
  PA_TRY(sm90::tensor_map_encoder(&encode));
  CUtensorMap q_map, k_map, v_map;
  PA_TRY(sm90::make_tensor_map<kDtype>(encode, &q_map, "q", params.q.data, params.q.token_stride,
                                       params.q.head_stride, params.num_q_heads, params.total_tokens, kHeadDim));
  PA_TRY(sm90::make_tensor_map<kDtype>(encode, &k_map, "k", params.k.data, params.k.token_stride,
                                       params.k.head_stride, params.num_kv_heads, params.total_kv_rows, kHeadDim));
  PA_TRY(sm90::make_tensor_map<kDtype>(encode, &v_map, "v", params.v.data, params.v.token_stride,
                                       params.v.head_stride, params.num_kv_heads, params.total_kv_rows, kHeadDim));
  const auto kernel = sm90::attention_kernel<Traits>;
  // Above 48 KiB a kernel must opt in to its dynamic shared memory (per device; cheap).
  PA_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  int64_t grid_size = 0;
  PA_TRY(sm90::launch_grid(tuning, items, &grid_size));
  Params launch_params = params;
  launch_params.item_counter = nullptr;
  if (tuning.attn_persistent) PA_TRY(sm90::zeroed_item_counter(stream, &launch_params.item_counter));
  kernel<<<dim3(static_cast<unsigned>(grid_size)), Traits::kThreads, kSharedBytes,
           static_cast<cudaStream_t>(stream)>>>(launch_params, q_map, k_map, v_map);
  PA_CUDA_CHECK_LAUNCH("the sm90 attention kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cuda::attention
