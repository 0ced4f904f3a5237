// The Checkpointer's copy into an arena, without a daemon: the layout, the
// bytes, and a progress counter that only ever covers bytes in place.
#include "client/cpp/staged_copy.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

namespace ckptd {
namespace {

struct Tensors {
  std::vector<std::string> data;
  std::vector<TensorView> views;
  explicit Tensors(std::vector<size_t> sizes) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::string d(sizes[i], '\0');
      for (size_t k = 0; k < d.size(); ++k) d[k] = static_cast<char>((k * 31 + i * 7) % 251);
      data.push_back(std::move(d));
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      views.push_back(
          {"t" + std::to_string(i), v1::TENSOR_TYPE_I8, {sizes[i]}, data[i].data(), sizes[i]});
    }
  }
};

TEST(StagedCopyTest, LayoutIsAlignedAndDisjointAfterTheCounter) {
  Tensors t({1, 0, 100, 64, 65, 3 << 20});
  const ArenaLayout layout = PlanArenaLayout(t.views);
  ASSERT_EQ(layout.offsets.size(), t.views.size());
  uint64_t end = 8;  // the counter
  for (size_t i = 0; i < t.views.size(); ++i) {
    EXPECT_EQ(layout.offsets[i] % kArenaTensorAlign, 0u) << i;
    EXPECT_GE(layout.offsets[i], end) << i;
    end = layout.offsets[i] + t.views[i].bytes;
  }
  EXPECT_GE(layout.bytes, end);
  EXPECT_EQ(layout.data_bytes, 1u + 100 + 64 + 65 + (3 << 20));
}

// Large tensors start at a page boundary, so the daemon (whose files put
// tensors at 4 KiB boundaries) can write them from the arena without a copy;
// small ones are packed at 64 bytes.
TEST(StagedCopyTest, LargeTensorsStartAtPageBoundariesSmallOnesArePacked) {
  Tensors t({100, kArenaPageAlignMin, 3, kArenaPageAlignMin - 1, (1 << 20) + 7, 5});
  const ArenaLayout layout = PlanArenaLayout(t.views);
  for (size_t i = 0; i < t.views.size(); ++i) {
    if (t.views[i].bytes >= kArenaPageAlignMin) {
      EXPECT_EQ(layout.offsets[i] % kArenaPageAlign, 0u) << i;
    }
  }
  // The small ones are not padded to a page: 100 bytes after the counter,
  // then 3 bytes right after the first large tensor.
  EXPECT_EQ(layout.offsets[0], kArenaTensorAlign);
  EXPECT_EQ(layout.offsets[2], layout.offsets[1] + kArenaPageAlignMin);
  EXPECT_LT(layout.offsets[3] - layout.offsets[2], kArenaPageAlign);
}

TEST(StagedCopyTest, BytesLandAndProgressOnlyCoversBytesInPlace) {
  Tensors t({30 << 20, 1, 17 << 20, 0, 5});
  const ArenaLayout layout = PlanArenaLayout(t.views);
  std::vector<char> arena(layout.bytes, '\x5a');
  auto* progress = reinterpret_cast<uint64_t*>(arena.data());
  *progress = 0;
  // A watcher samples the counter while the copy runs: it never goes back,
  // and every prefix it reports is already in place.
  std::atomic<bool> done{false};
  int bad = 0, samples = 0;
  uint64_t last = 0;
  std::thread watcher([&] {
    while (!done.load()) {
      const uint64_t seen = std::atomic_ref<uint64_t>(*progress).load(std::memory_order_acquire);
      if (seen < last) ++bad;
      last = seen;
      uint64_t left = seen;
      for (size_t i = 0; i < t.views.size() && left > 0; ++i) {
        const uint64_t n = std::min<uint64_t>(left, t.views[i].bytes);
        if (std::memcmp(arena.data() + layout.offsets[i], t.data[i].data(), n) != 0) ++bad;
        left -= n;
      }
      ++samples;
    }
  });
  CopyInOrder(arena.data(), progress, t.views, layout.offsets, 4);
  done = true;
  watcher.join();
  EXPECT_EQ(bad, 0) << samples << " samples";
  EXPECT_EQ(*progress, layout.data_bytes);
  for (size_t i = 0; i < t.views.size(); ++i) {
    EXPECT_EQ(std::memcmp(arena.data() + layout.offsets[i], t.data[i].data(), t.views[i].bytes), 0)
        << "tensor " << i;
  }
}

TEST(StagedCopyTest, OneThreadAndNoTensorsWork) {
  Tensors t({3, 4});
  const ArenaLayout layout = PlanArenaLayout(t.views);
  std::vector<char> arena(layout.bytes, 0);
  uint64_t* progress = reinterpret_cast<uint64_t*>(arena.data());
  CopyInOrder(arena.data(), progress, t.views, layout.offsets, 1);
  EXPECT_EQ(*progress, 7u);
  Tensors none({});
  uint64_t zero = 0;
  CopyInOrder(arena.data(), &zero, none.views, {}, 8);
  EXPECT_EQ(zero, 0u);
}

}  // namespace
}  // namespace ckptd
