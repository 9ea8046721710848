// make_cuda_device of a build without CUDA.
#include "bench_device.hpp"

namespace proxyattn::tools {

std::unique_ptr<BenchDevice> make_cuda_device(std::string& why) {
  why = "this build has no CUDA backend (configure with -DPROXYATTN_CUDA=ON)";
  return nullptr;
}

}  // namespace proxyattn::tools
