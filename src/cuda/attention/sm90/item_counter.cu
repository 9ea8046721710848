// Work-item counters of the persistent sm90 attention kernel (Params::item_counter): one
// per (device, stream), so that launches on one stream, which run one after the other,
// reuse theirs and launches on different streams, which may overlap, do not share one.
// Each is zeroed on its stream just before its kernel. Limits: kItemCounters streams per
// process get a counter of their own (more share counters round robin); a CUDA graph keeps
// the counter of the stream it was captured on, so it must not replay while that stream
// runs other attention launches.
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "attention/sm90/item_counter.hpp"
#include "common/check.cuh"

namespace proxyattn::cuda::attention::sm90 {
namespace {

constexpr uint32_t kItemCounters = 256;
__device__ uint32_t item_counters[kItemCounters];

std::mutex slots_mutex;
std::map<std::pair<int, void*>, uint32_t> slot_of_stream;  // (device, stream) -> counter

uint32_t slot_for(int device, void* stream) {
  const std::lock_guard<std::mutex> lock(slots_mutex);
  const auto key = std::make_pair(device, stream);
  const auto found = slot_of_stream.find(key);
  if (found != slot_of_stream.end()) return found->second;
  const uint32_t slot = uint32_t(slot_of_stream.size() % kItemCounters);
  slot_of_stream.emplace(key, slot);
  return slot;
}

}  // namespace

pa_status zeroed_item_counter(void* stream, uint32_t** counter) {
  int device = 0;
  void* base = nullptr;
  PA_CUDA_TRY(cudaGetDevice(&device));
  PA_CUDA_TRY(cudaGetSymbolAddress(&base, item_counters));
  *counter = static_cast<uint32_t*>(base) + slot_for(device, stream);
  PA_CUDA_TRY(cudaMemsetAsync(*counter, 0, sizeof(uint32_t), static_cast<cudaStream_t>(stream)));
  return PA_STATUS_SUCCESS;
}

}  // namespace proxyattn::cuda::attention::sm90
