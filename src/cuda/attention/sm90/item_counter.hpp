// The work-item counter of a persistent sm90 attention launch (item_counter.cu).
#pragma once

#include <cstdint>

#include "proxyattn/proxyattn.h"

namespace proxyattn::cuda::attention::sm90 {

// A device counter for a launch on `stream` (one per device and stream), zeroed on that
// stream; the kernel hands out its work items with atomicAdd on it.
pa_status zeroed_item_counter(void* stream, uint32_t** counter);

}  // namespace proxyattn::cuda::attention::sm90
