// `ckptctl export`: applies an export profile to an existing GGUF file
// offline, with the same planner and writer the daemon uses at save time,
// so the result has the same tensor data and general.uuid as the export
// written with the checkpoint.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace ckptd::cli {

struct ExportArgs {
  std::string file;
  std::string profile;
  std::string out;
  std::string name;
  bool list = false;
  std::string show;
};

CLI::App* AddExportCommand(CLI::App* app, ExportArgs* args);
int RunExport(const ExportArgs& args);

}  // namespace ckptd::cli
