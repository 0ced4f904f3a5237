// ckptctl subcommands that talk to a running daemon: runs, ls, latest,
// show, import. Each prints a table, or with --json the API's own messages
// in protobuf's JSON mapping.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace ckptd::cli {

struct DaemonCommandArgs {
  std::string socket;  // unix:PATH, PATH or HOST:PORT
  bool json = false;
  std::string run;
  uint64_t step = 0;
  std::string file;
  std::vector<std::string> metrics;  // k=v
  std::string reason;                // pin
};

// Adds the subcommands to `app`; `*args` receives their options. After
// parsing, RunDaemonCommand runs whichever was chosen (or returns -1).
void AddDaemonCommands(CLI::App* app, DaemonCommandArgs* args);
int RunDaemonCommand(const CLI::App& app, const DaemonCommandArgs& args);

}  // namespace ckptd::cli
