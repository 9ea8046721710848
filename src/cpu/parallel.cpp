#include "cpu/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace proxyattn::cpu {
namespace {
std::atomic<int> g_num_threads{0};
}

void set_num_threads(int n) { g_num_threads.store(std::max(0, n)); }

int num_threads() {
  const int n = g_num_threads.load();
  if (n > 0) return n;
  return std::max(1u, std::thread::hardware_concurrency());
}

void parallel_for(int64_t n, const std::function<void(int, int64_t)>& body) {
  if (n <= 0) return;
  const int workers = static_cast<int>(std::min<int64_t>(num_threads(), n));
  std::atomic<int64_t> next{0};
  auto run = [&](int worker) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(worker, i);
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) threads.emplace_back(run, w);
  run(0);
  for (auto& t : threads) t.join();
}

}  // namespace proxyattn::cpu
