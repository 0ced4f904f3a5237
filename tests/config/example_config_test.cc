// The shipped example config loads, and documents every key the loader knows.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/base/strings.h"
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
  for (const std::string& key : Keys()) {
    ASSERT_TRUE(c->sources.contains(key)) << key;
    EXPECT_THAT(c->sources.at(key), ::testing::StartsWith(path + ":"))
        << key << " is not in the example";
  }
}

// --print-config shows every key, and what it prints loads back as the same
// configuration (so it can be saved as a config file).
TEST(ExampleConfigTest, PrintedConfigListsEveryKeyAndLoadsBack) {
  const std::string path = std::string(CKPTD_SOURCE_DIR) + "/config/ckptd.example.toml";
  auto c = LoadConfig(path, {}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string printed = Describe(*c);
  ckptd::testing::TempDir tmp;
  ckptd::testing::WriteFile(tmp.Join("printed.toml"), printed);
  auto again = LoadConfig(tmp.Join("printed.toml"), {}, {});
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << printed;
  // The same values (only the sources in the comments differ).
  auto values = [](const std::string& text) {
    std::string out;
    for (const std::string& line : ckptd::Split(text, '\n')) {
      out += line.substr(0, line.find(" #")) + "\n";
    }
    return out;
  };
  EXPECT_EQ(values(Describe(*again)), values(printed));
  for (const std::string& key : Keys()) {
    EXPECT_THAT(again->sources.at(key), ::testing::StartsWith(tmp.Join("printed.toml") + ":"))
        << key << " is missing from --print-config:\n"
        << printed;
  }
}

}  // namespace
}  // namespace ckptd::config
