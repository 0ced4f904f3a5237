// `ckptctl fetch RUN [STEP]`: restores a step from the object store
// ([tier.s3] of the daemon's config) into a directory, every file checked
// against the step's manifest and placed atomically, model file last.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>

namespace ckptd::cli {

struct FetchArgs {
  std::string run;
  int64_t step = -1;  // -1: the step `latest` names
  std::string config;
  std::string out;
  std::optional<std::string> prefix;  // the run's own tier prefix
  bool json = false;
};

CLI::App* AddFetchCommand(CLI::App* app, FetchArgs* args);
int RunFetch(const FetchArgs& args);

}  // namespace ckptd::cli
