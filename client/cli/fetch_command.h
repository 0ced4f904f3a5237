// `ckptctl fetch RUN [STEP]`: restores a step from the object store into a
// directory, every file checked against the step's manifest and placed
// atomically, model file last. With a daemon at --socket (and no --config,
// -o or --prefix), the daemon fetches it with its own tier settings into
// the run's directory and lists it at once (FetchRemote); without one, this
// process does, with [tier.s3] of the daemon's config file.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>

#include "client/cli/daemon_commands.h"

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
int RunFetch(const FetchArgs& args, const DaemonCommandArgs& daemon);

}  // namespace ckptd::cli
