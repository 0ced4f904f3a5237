// The shipped example config loads, and documents every key the loader knows.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/config/config.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::config {
namespace {

TEST(ExampleConfigTest, LoadsAndCoversEveryKey) {
  const std::string path = std::string(CKPTD_SOURCE_DIR) + "/config/ckptd.example.toml";
  auto c = LoadConfig(path, {}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "unix:/run/ckptd/ckptd.sock");
  EXPECT_EQ(c->roots, std::vector<std::string>{"/var/lib/ckptd/runs"});
  for (const auto& [key, source] : c->sources) {
    EXPECT_THAT(source, ::testing::StartsWith(path + ":")) << key << " is not in the example";
  }
}

}  // namespace
}  // namespace ckptd::config
