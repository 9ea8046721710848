// BenchDevice on the host: plain memory, the library's CPU backend, a steady clock.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

#include "bench_device.hpp"
#include "proxyattn/proxyattn_tuning.h"

namespace proxyattn::tools {
namespace {

constexpr size_t kAlignment = 256;

class HostDevice final : public BenchDevice {
 public:
  std::string name() const override {
    return std::string("CPU (host memory, the library's CPU backend, ") + pa_cpu_kernels() + " kernels)";
  }
  bool is_gpu() const override { return false; }
  void* alloc(size_t bytes) override {
    void* p = std::aligned_alloc(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void release(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void* stream() override { return nullptr; }
  double time_ms(const std::function<void()>& fn) override {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
};

}  // namespace

std::unique_ptr<BenchDevice> make_host_device() { return std::make_unique<HostDevice>(); }

}  // namespace proxyattn::tools
