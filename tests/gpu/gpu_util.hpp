// Helpers of the GPU tests: device detection, device buffers, poisoning.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace proxyattn::test {

inline bool has_gpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

// Skips the current test (reported as skipped by ctest) when no CUDA device is present.
#define PA_REQUIRE_GPU()                                       \
  do {                                                         \
    if (!::proxyattn::test::has_gpu()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

#define PA_CUDA_ASSERT(call) ASSERT_EQ((call), cudaSuccess) << #call

// Sets an environment variable for one scope (the library reads its PROXYATTN_* switches at
// each call).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

// Owning device buffer.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0 && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  ~DeviceBuffer() { if (ptr_) cudaFree(ptr_); }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }

  cudaError_t upload(const void* host) { return cudaMemcpy(ptr_, host, bytes_, cudaMemcpyHostToDevice); }
  cudaError_t download(void* host) const { return cudaMemcpy(host, ptr_, bytes_, cudaMemcpyDeviceToHost); }
  // Fills every byte with `byte` (0xff makes bf16/fp16/fp32 NaN, int32 -1): unwritten
  // outputs then show up as NaN or out-of-range indices.
  cudaError_t poison(int byte = 0xff) { return cudaMemset(ptr_, byte, bytes_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace proxyattn::test
