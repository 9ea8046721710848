// Helpers of the GPU tests: device detection, device buffers, poisoning, suites run under
// several tunings.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>

#include "proxyattn/proxyattn_tuning.h"

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

// A tuning (include/proxyattn/proxyattn_tuning.h) that a parameterised suite runs each of its
// cases under; its name ends the test's ("Tunings/Attention.SingleToken/max_ctas_3").
struct NamedTuning {
  const char* name;
  pa_tuning tuning;
};
inline void PrintTo(const NamedTuning& t, std::ostream* os) { *os << t.name; }
inline std::string tuning_name(const ::testing::TestParamInfo<NamedTuning>& info) { return info.param.name; }

// The defaults with one change.
template <typename Change>
NamedTuning tuned(const char* name, Change change) {
  NamedTuning t{name, pa_tuning_default()};
  change(t.tuning);
  return t;
}

// The tuning of the running case: its suite's parameter (TunedTest), the defaults outside
// such a suite. A case that varies a field starts from it.
inline pa_tuning& suite_tuning() {
  static pa_tuning tuning = pa_tuning_default();
  return tuning;
}

// Fixture of the suites run under several tunings (INSTANTIATE_TEST_SUITE_P with tuning_name).
class TunedTest : public ::testing::TestWithParam<NamedTuning> {
 protected:
  void SetUp() override { suite_tuning() = GetParam().tuning; }
  void TearDown() override { suite_tuning() = pa_tuning_default(); }
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
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = o.ptr_, bytes_ = o.bytes_;
      o.ptr_ = nullptr;
    }
    return *this;
  }
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
