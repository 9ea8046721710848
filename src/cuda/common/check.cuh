// CUDA error checks that return a pa_status with a message instead of aborting.
#pragma once

#include <cuda_runtime.h>

#include "core/status.hpp"

// Evaluates a CUDA runtime call; on failure records "<call>: <cuda error>" and returns
// PA_STATUS_CUDA_ERROR from the enclosing function.
#define PA_CUDA_TRY(call)                                                                   \
  do {                                                                                      \
    const cudaError_t pa_cuda_err_ = (call);                                                \
    if (pa_cuda_err_ != cudaSuccess)                                                        \
      return ::proxyattn::fail(PA_STATUS_CUDA_ERROR, "%s: %s (%s:%d)", #call,               \
                               cudaGetErrorString(pa_cuda_err_), __FILE__, __LINE__);       \
  } while (0)

// Checks the launch just made (configuration errors surface here, not at the next sync).
#define PA_CUDA_CHECK_LAUNCH(what)                                                          \
  do {                                                                                      \
    const cudaError_t pa_cuda_err_ = cudaGetLastError();                                    \
    if (pa_cuda_err_ != cudaSuccess)                                                        \
      return ::proxyattn::fail(PA_STATUS_CUDA_ERROR, "launch of %s: %s", what,              \
                               cudaGetErrorString(pa_cuda_err_));                           \
  } while (0)
