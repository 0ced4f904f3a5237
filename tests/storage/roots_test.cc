// Root confinement of run directories (security-critical): every way out of
// the roots is refused, with the reason named.
#include "daemon/storage/roots.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::storage {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class RootsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::canonical(tmp_.path()).string() + "/root";
    outside_ = fs::canonical(tmp_.path()).string() + "/outside";
    fs::create_directories(root_ + "/existing/deeper");
    fs::create_directories(outside_);
    fs::create_directory_symlink(outside_, root_ + "/escape");
    fs::create_directory_symlink(root_ + "/existing", root_ + "/alias");
  }
  absl::StatusOr<std::string> Resolve(const std::string& requested) {
    return ResolveRunDir(env::Env::Default(), {root_}, "run", requested);
  }
  ckptd::testing::TempDir tmp_;
  std::string root_, outside_;
};

TEST_F(RootsTest, EmptyMeansTheFirstRoot) {
  auto r = ResolveRunDir(env::Env::Default(), {root_, outside_}, "run-7", "");
  ASSERT_OK(r);
  EXPECT_EQ(*r, root_ + "/run-7");
}

TEST_F(RootsTest, InsideARootIsAcceptedResolved) {
  EXPECT_EQ(*Resolve(root_ + "/new"), root_ + "/new");
  EXPECT_EQ(*Resolve(root_ + "/existing/deeper/new/newer"), root_ + "/existing/deeper/new/newer");
  // A symlink that stays inside resolves to its target.
  EXPECT_EQ(*Resolve(root_ + "/alias/x"), root_ + "/existing/x");
  EXPECT_EQ(*Resolve(root_ + "/existing/../existing/x"), root_ + "/existing/x");
}

TEST_F(RootsTest, EveryWayOutIsRefused) {
  for (const std::string& out :
       {outside_ + "/x", root_ + "/escape/x", root_ + "/escape", root_ + "/../outside/x",
        root_ + "/existing/../../outside", std::string("/etc/ckptd-run"), root_ + "2/x"}) {
    auto r = Resolve(out);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << out << ": " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("outside the configured roots"));
  }
}

TEST_F(RootsTest, UnusablePathsAreRefusedWithTheReason) {
  auto dots = Resolve(root_ + "/new/../../outside");
  EXPECT_EQ(dots.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(dots.status().message()), HasSubstr("'..' after its last existing"));
  auto nul = Resolve(root_ + std::string("/a\0b", 4));
  EXPECT_EQ(nul.status().code(), absl::StatusCode::kInvalidArgument);
  auto relative = Resolve("root/x");
  EXPECT_EQ(relative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(relative.status().message()), HasSubstr("relative"));
  auto itself = Resolve(root_);
  EXPECT_EQ(itself.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(itself.status().message()), HasSubstr("is the root"));
  EXPECT_THAT(std::string(Resolve(root_ + "/").status().message()), HasSubstr("is the root"));
}

}  // namespace
}  // namespace ckptd::storage
