// Size classes of the per-row radix sort of the selection: a row of L <= threads * items
// blocks is sorted by one CTA with cub::BlockRadixSort. Few classes keep the
// instantiations countable; each row uses the smallest class that holds it (a class
// wastes at most 4x its row's length).
#pragma once

#include <cstddef>
#include <cstdint>

namespace proxyattn::cuda::est {

struct SortClass {
  int threads;
  int items;  // per thread
  constexpr int32_t capacity() const { return threads * items; }
};

// Capacities 256, 1024, 4096, 16384 blocks (the last = kMaxSortedBlocks).
inline constexpr SortClass kSortClasses[] = {{128, 2}, {256, 4}, {512, 8}, {512, 32}};

// Blocks beyond the 48 KB of static shared memory need an opt-in per kernel.
inline constexpr size_t kDefaultSmemLimit = 48 * 1024;

}  // namespace proxyattn::cuda::est
