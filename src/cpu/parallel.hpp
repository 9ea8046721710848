// Parallel loops of the CPU backend.
#pragma once

#include <cstdint>
#include <functional>

namespace proxyattn::cpu {

// Threads used by parallel_for (0 = hardware concurrency).
void set_num_threads(int num_threads);
int num_threads();

// Calls body(worker, i) for every i in [0, n), items handed out one at a time to
// num_threads() workers (dynamic scheduling, so uneven items balance). worker lies in
// [0, num_threads()) and indexes per-worker scratch. The caller's thread is a worker.
void parallel_for(int64_t n, const std::function<void(int worker, int64_t i)>& body);

}  // namespace proxyattn::cpu
