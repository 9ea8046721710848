// BenchDevice on a CUDA GPU: cudaMalloc'd memory, one stream, CUDA events.
#include <cuda_runtime.h>

#include <stdexcept>

#include "bench_device.hpp"

namespace proxyattn::tools {
namespace {

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(status));
}

class CudaDevice final : public BenchDevice {
 public:
  CudaDevice() {
    cudaDeviceProp props{};
    check_cuda(cudaGetDeviceProperties(&props, 0), "cudaGetDeviceProperties");
    name_ = std::string(props.name) + " (sm_" + std::to_string(props.major) + std::to_string(props.minor) + ")";
    try {
      check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
      check_cuda(cudaEventCreate(&start_), "cudaEventCreate");
      check_cuda(cudaEventCreate(&stop_), "cudaEventCreate");
    } catch (...) {
      destroy();  // a throwing constructor runs no destructor
      throw;
    }
  }
  ~CudaDevice() override { destroy(); }
  std::string name() const override { return name_; }
  bool is_gpu() const override { return true; }
  void* alloc(size_t bytes) override {
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, bytes), "cudaMalloc");
    return p;
  }
  void release(void* p) override { cudaFree(p); }
  void upload(void* dst, const void* src, size_t bytes) override {
    check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (upload)");
  }
  void download(void* dst, const void* src, size_t bytes) override {
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (download)");
  }
  void* stream() override { return stream_; }
  double time_ms(const std::function<void()>& fn) override {
    check_cuda(cudaEventRecord(start_, stream_), "cudaEventRecord");
    fn();
    check_cuda(cudaEventRecord(stop_, stream_), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop_), "cudaEventSynchronize");
    float ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return ms;
  }

 private:
  void destroy() {
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string name_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Why cudaGetDeviceCount found no GPU, in words: on a machine without an NVIDIA driver the
// runtime says "CUDA driver version is insufficient for CUDA runtime version", which reads as
// if a driver update would help.
std::string no_gpu_reason(cudaError_t status) {
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);  // 0 when no driver is installed
  cudaRuntimeGetVersion(&runtime);
  auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  if (status == cudaSuccess || status == cudaErrorNoDevice) return "no CUDA GPU on this machine";
  if (driver == 0) return "no CUDA GPU on this machine (no NVIDIA driver is installed)";
  if (status == cudaErrorInsufficientDriver)
    return "the NVIDIA driver (CUDA " + version(driver) + ") is older than this build's CUDA runtime (" +
           version(runtime) + "): update the driver";
  return std::string("no usable CUDA GPU: ") + cudaGetErrorString(status);
}

}  // namespace

std::unique_ptr<BenchDevice> make_cuda_device(std::string& why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    why = no_gpu_reason(status);
    cudaGetLastError();  // reset the runtime's last-error state the failed query set
    return nullptr;
  }
  return std::make_unique<CudaDevice>();
}

}  // namespace proxyattn::tools
