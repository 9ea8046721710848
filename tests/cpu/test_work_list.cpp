// The attention kernels' item order (cuda/attention/params.hpp, item_position): every item of
// a launch is one (row, KV head, slot), each exactly once, longest rows first chunk by chunk.
#include <gtest/gtest.h>

#include <set>
#include <tuple>

#include "cuda/attention/params.hpp"

namespace proxyattn::cuda::attention {
namespace {

Params launch(int64_t row_begin, int num_rows, int kv_heads, int slots, int rows_per_chunk) {
  Params p{};
  p.row_begin = row_begin;
  p.num_rows = num_rows;
  p.num_kv_heads = kv_heads;
  p.slots_per_row = slots;
  p.rows_per_chunk = rows_per_chunk;
  return p;
}

TEST(WorkList, EveryItemOnceAndLongestChunkFirst) {
  // (rows, KV heads, slots, rows per chunk): chunks that divide the rows, a shorter last
  // chunk, one chunk larger than the launch, one row per chunk.
  const int cases[][4] = {{64, 8, 4, 33}, {100, 8, 4, 33}, {7, 4, 7, 19}, {30, 2, 1, 64}, {13, 3, 2, 1}};
  for (const auto& c : cases) {
    const Params p = launch(5, c[0], c[1], c[2], c[3]);
    const int64_t items = int64_t(p.num_rows) * p.num_kv_heads * p.slots_per_row;
    std::set<std::tuple<int64_t, int, int>> seen;
    int64_t previous_chunk_row = p.row_begin + p.num_rows;
    for (int64_t item = 0; item < items; ++item) {
      const ItemPosition at = item_position(p, item);
      SCOPED_TRACE(testing::Message() << "rows " << c[0] << " kv " << c[1] << " slots " << c[2] << " chunk "
                                      << c[3] << " item " << item);
      ASSERT_GE(at.row, p.row_begin);
      ASSERT_LT(at.row, p.row_begin + p.num_rows);
      ASSERT_GE(at.kv_head, 0);
      ASSERT_LT(at.kv_head, p.num_kv_heads);
      ASSERT_GE(at.slot, 0);
      ASSERT_LT(at.slot, p.slots_per_row);
      ASSERT_TRUE(seen.emplace(at.row, at.kv_head, at.slot).second) << "item position taken twice";
      // Chunk by chunk the rows only get shorter: a chunk's first item starts at or below
      // the rows of every earlier chunk.
      const int64_t chunk_items = int64_t(p.rows_per_chunk) * p.num_kv_heads * p.slots_per_row;
      if (item % chunk_items == 0) {
        ASSERT_LT(at.row, previous_chunk_row);
        previous_chunk_row = at.row - p.rows_per_chunk + 1;
      }
    }
    EXPECT_EQ(int64_t(seen.size()), items);
  }
}

TEST(WorkList, OneRowPerChunkIsRowMajor) {
  // rows_per_chunk = 1: item = ((row' * Hkv) + kv_head) * slots + slot, row' from the longest.
  const Params p = launch(3, 9, 4, 3, 1);
  for (int64_t item = 0; item < 9 * 4 * 3; ++item) {
    const ItemPosition at = item_position(p, item);
    EXPECT_EQ(at.slot, item % 3);
    EXPECT_EQ(at.kv_head, (item / 3) % 4);
    EXPECT_EQ(at.row, 3 + (9 - 1 - item / 12));
  }
}

TEST(WorkList, AChunkRunsOneKvHeadAfterTheOther) {
  // Inside a full chunk, the items of KV head h are consecutive: R rows x slots of them.
  const Params p = launch(0, 66, 8, 4, 33);
  for (int64_t item = 0; item < 33 * 8 * 4; ++item) EXPECT_EQ(item_position(p, item).kv_head, item / (33 * 4));
}

}  // namespace
}  // namespace proxyattn::cuda::attention
