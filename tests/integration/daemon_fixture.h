// The black-box suites' fixture: a temp root for the real daemon, helpers to
// start it and to find a run's files.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/integration/daemon_process.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::testing {

class DaemonFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.Join("root");
    std::filesystem::create_directories(root_);
  }

  std::unique_ptr<DaemonProcess> StartDaemon(std::map<std::string, std::string> env = {},
                                             std::vector<std::string> args = {}) {
    auto d = std::make_unique<DaemonProcess>(DaemonOptions{root_, std::move(args), std::move(env)});
    d->Start();
    return d;
  }
  std::string Weights(const std::string& run) const { return root_ + "/" + run + "/weights"; }
  std::string Latest(const std::string& run) const {
    return std::filesystem::read_symlink(Weights(run) + "/latest");
  }
  // The names in a run's weights/, sorted.
  std::vector<std::string> Files(const std::string& run) const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(Weights(run)))
      out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }

  TempDir tmp_;
  std::string root_;
};

}  // namespace ckptd::testing
