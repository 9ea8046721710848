// Properties of the current CUDA device that size launches.
#pragma once

#include <cuda_runtime.h>

#include "common/check.cuh"

namespace proxyattn::cuda {

// Streaming multiprocessors of the current device: a wave of a grid is this many times its
// CTAs per SM.
inline pa_status current_sm_count(int* sms) {
  int device = 0;
  PA_CUDA_TRY(cudaGetDevice(&device));
  PA_CUDA_TRY(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device));
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cuda
