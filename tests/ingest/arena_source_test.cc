// Arena sources: a region's digest is remembered only in an arena sealed
// against writes, where the kernel guarantees the bytes never change.
#include "daemon/ingest/arena_source.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "daemon/ingest/arena_registry.h"

namespace ckptd::ingest {
namespace {

// A memfd of `size` bytes holding `fill`, sealed against resizing, and
// against writes when `immutable`.
int SealedMemfd(size_t size, char fill, bool immutable) {
  int fd = ::memfd_create("arena-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  std::string bytes(size, fill);
  EXPECT_EQ(::pwrite(fd, bytes.data(), size, 0), static_cast<ssize_t>(size));
  int seals = F_SEAL_SHRINK | F_SEAL_GROW | (immutable ? F_SEAL_WRITE : 0);
  EXPECT_EQ(::fcntl(fd, F_ADD_SEALS, seals), 0);
  return fd;
}

std::unique_ptr<ArenaSource> Source(const std::shared_ptr<Arena>& arena) {
  std::vector<ArenaRegion> regions{{arena, 0, 4096}, {arena, 4096, 100}};
  auto s = ArenaSource::Create(regions, {"a", "b"}, std::nullopt, std::chrono::seconds(1));
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

TEST(ArenaSourceTest, OnlyAnArenaSealedAgainstWritesRemembersDigests) {
  ArenaRegistry registry(8);
  const std::string token = registry.TokenFor("run");
  auto sealed = registry.Register(token, SealedMemfd(8192, 'x', true), {.pid = 1, .uid = 0});
  auto open = registry.Register(token, SealedMemfd(8192, 'x', false), {.pid = 1, .uid = 0});
  ASSERT_TRUE(sealed.ok() && open.ok());
  EXPECT_TRUE((*sealed)->memory->immutable());
  EXPECT_FALSE((*open)->memory->immutable());
  // The kernel refuses a write to the sealed one: that is what the digests rest on.
  EXPECT_EQ(::pwrite((*sealed)->memory->fd(), "y", 1, 0), -1);
  EXPECT_EQ(errno, EPERM);

  const gguf::Digest128 da{.low = 1, .high = 2}, db{.low = 3, .high = 4};
  for (const auto& [arena, remembers] : {std::pair{*sealed, true}, std::pair{*open, false}}) {
    auto first = Source(arena);
    auto known = first->KnownDigests();
    ASSERT_EQ(known.size(), 2u);
    EXPECT_FALSE(known[0] || known[1]) << "nothing hashed yet";
    first->Learn(std::vector<gguf::Digest128>{da, db});
    // A later save naming the same regions: known only where writes are sealed.
    known = Source(arena)->KnownDigests();
    EXPECT_EQ(known[0].has_value(), remembers);
    EXPECT_EQ(known[1].has_value(), remembers);
    if (remembers) {
      EXPECT_EQ(*known[0], da);
      EXPECT_EQ(*known[1], db);
    }
    // Another region (same offset, other length) is not the region hashed.
    std::vector<ArenaRegion> other{{arena, 0, 4000}};
    auto s = ArenaSource::Create(other, {"a"}, std::nullopt, std::chrono::seconds(1));
    ASSERT_TRUE(s.ok());
    EXPECT_FALSE((*s)->KnownDigests()[0]);
  }
}

}  // namespace
}  // namespace ckptd::ingest
