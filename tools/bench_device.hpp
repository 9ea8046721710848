// Where `proxyattn bench` runs: device memory, copies and timing on a CUDA GPU
// (bench_device_cuda.cpp) or host memory and a steady clock (bench_device_host.cpp).
// Failures throw std::runtime_error with the failing call named; the command reports them.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace proxyattn::tools {

class BenchDevice {
 public:
  virtual ~BenchDevice() = default;
  virtual std::string name() const = 0;
  virtual bool is_gpu() const = 0;
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void* stream() = 0;  // the cudaStream_t the library calls run on; nullptr on the host
  // Milliseconds of one call of fn: CUDA events around it on the stream, or the steady clock.
  virtual double time_ms(const std::function<void()>& fn) = 0;
};

std::unique_ptr<BenchDevice> make_host_device();
// nullptr with `why` set when there is no usable GPU (or the tool was built without CUDA).
std::unique_ptr<BenchDevice> make_cuda_device(std::string& why);

// Owns one allocation of a BenchDevice.
class DeviceBuffer {
 public:
  DeviceBuffer(BenchDevice& device, size_t bytes) : device_(device), data_(device.alloc(bytes)) {}
  ~DeviceBuffer() { device_.release(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return data_; }

 private:
  BenchDevice& device_;
  void* data_;
};

}  // namespace proxyattn::tools
