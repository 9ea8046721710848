// Memory-space queries and synchronous copies for plan creation and inspection.
#include "common/check.cuh"
#include "cuda/backend.hpp"

namespace proxyattn::cuda {

bool is_device_pointer(const void* p) {
  if (p == nullptr) return false;
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    cudaGetLastError();  // no device or unknown pointer: host memory, clear the sticky error
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

pa_status upload(void* device_dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return PA_STATUS_SUCCESS;
  PA_CUDA_TRY(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice));
  return PA_STATUS_SUCCESS;
}

pa_status download(void* host_dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return PA_STATUS_SUCCESS;
  PA_CUDA_TRY(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost));
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cuda
