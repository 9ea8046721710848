// The attention kernels' item order (cuda/attention/params.hpp, item_position): every item of
// a launch is one (row, KV head, slot), each exactly once, in the order params.hpp describes.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <tuple>
#include <vector>

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

// The order params.hpp describes, built by plain loops: chunk by chunk (rows' from the
// launch's last row down), inside a chunk KV head by KV head, each head's rows in order, each
// row's slots in order.
std::vector<ItemPosition> described_order(const Params& p) {
  std::vector<ItemPosition> order;
  for (int first = 0; first < p.num_rows; first += p.rows_per_chunk) {
    const int rows = std::min(p.rows_per_chunk, p.num_rows - first);
    for (int kv = 0; kv < p.num_kv_heads; ++kv)
      for (int r = first; r < first + rows; ++r)
        for (int slot = 0; slot < p.slots_per_row; ++slot)
          order.push_back({p.row_begin + (p.num_rows - 1 - r), kv, slot});
  }
  return order;
}

TEST(WorkList, ItemPositionIsTheDescribedOrder) {
  // (rows, KV heads, slots, rows per chunk): chunks that divide the rows, a shorter last
  // chunk, one chunk larger than the launch, one row per chunk.
  const int cases[][4] = {{64, 8, 4, 33}, {100, 8, 4, 33}, {64, 8, 4, 8}, {7, 4, 7, 19}, {30, 2, 1, 64}, {13, 3, 2, 1}};
  for (const auto& c : cases) {
    const Params p = launch(5, c[0], c[1], c[2], c[3]);
    const std::vector<ItemPosition> expected = described_order(p);
    ASSERT_EQ(int64_t(expected.size()), int64_t(p.num_rows) * p.num_kv_heads * p.slots_per_row);
    std::set<std::tuple<int64_t, int, int>> seen;
    for (int64_t item = 0; item < int64_t(expected.size()); ++item) {
      SCOPED_TRACE(testing::Message() << "rows " << c[0] << " kv " << c[1] << " slots " << c[2] << " chunk "
                                      << c[3] << " item " << item);
      const ItemPosition at = item_position(p, item);
      ASSERT_EQ(at.row, expected[item].row);
      ASSERT_EQ(at.kv_head, expected[item].kv_head);
      ASSERT_EQ(at.slot, expected[item].slot);
      ASSERT_TRUE(seen.emplace(at.row, at.kv_head, at.slot).second) << "item position taken twice";
    }
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
