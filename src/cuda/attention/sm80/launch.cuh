// Launcher of one compiled variant of the sm80 attention kernel: shared memory attribute,
// launch on the caller's stream, launch check. Included by the instantiate_*.cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/params.hpp"
#include "attention/sm80/kernel.cuh"
#include "common/check.cuh"

namespace proxyattn::cuda::attention {

template <pa_dtype kDtype> struct ElementOf;
template <> struct ElementOf<PA_DTYPE_BFLOAT16> { using type = __nv_bfloat16; };
template <> struct ElementOf<PA_DTYPE_FLOAT16> { using type = __half; };

// One CTA per work item, the packed or the paged kernel; the tuning's fields read here are the sm90 launcher's only.
template <pa_dtype kDtype, int kHeadDim>
pa_status run_sm80(const Params& params, int64_t grid_size, const pa_tuning&, void* stream) {
  using Traits = sm80::KernelTraits<typename ElementOf<kDtype>::type, kHeadDim>;
  constexpr int kSharedBytes = int(sizeof(sm80::SharedStorage<Traits>));
  const auto kernel = params.block_table != nullptr ? sm80::attention_kernel<Traits, true>
                                                    : sm80::attention_kernel<Traits, false>;
  // Above 48 KiB a kernel must opt in to its dynamic shared memory (per device; cheap).
  PA_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  kernel<<<dim3(static_cast<unsigned>(grid_size)), Traits::kThreads, kSharedBytes,
           static_cast<cudaStream_t>(stream)>>>(params);
  PA_CUDA_CHECK_LAUNCH("the sm80 attention kernel");
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cuda::attention
