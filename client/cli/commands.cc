// ckptctl: inspect and verify GGUF checkpoints.
#include "client/cli/commands.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "client/cli/daemon_commands.h"
#include "client/cli/export_command.h"
#include "client/cli/fetch_command.h"
#include "client/cli/gguf_json.h"
#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/gguf/reader.h"
#include "daemon/storage/merge.h"

namespace ckptd::cli {

int Fail(const std::string& what, const absl::Status& st) {
  std::fprintf(stderr, "ckptctl: %s: %s\n", what.c_str(), std::string(st.message()).c_str());
  return kExitFailed;
}

namespace {

int Inspect(const std::string& path, bool json) {
  auto file = env::Env::Default()->OpenForRead(path);
  if (!file.ok()) return Fail(path, file.status());
  auto header = gguf::ReadHeader(**file);
  if (!header.ok()) return Fail(path, header.status());
  if (json) {
    nlohmann::ordered_json j = FileToJson(*header);
    j["file"] = path;
    std::cout << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  } else {
    std::cout << path << ": " << FileToTable(*header, kTableArrayItems);
  }
  return kExitOk;
}

int Verify(const std::string& path) {
  auto file = env::Env::Default()->OpenForRead(path);
  if (!file.ok()) return Fail(path, file.status());
  auto header = gguf::ReadHeader(**file);
  if (!header.ok()) return Fail(path, header.status());
  auto report = gguf::Verify(**file, *header);
  if (!report.ok()) {
    std::fprintf(stderr, "FAILED %s: %s\n", path.c_str(),
                 std::string(report.status().message()).c_str());
    return kExitFailed;
  }
  std::cout << "ok " << path << " (" << header->tensors.size() << " tensors, " << header->file_size
            << " bytes, " << report->stored_content_digest << ", uuid " << report->computed.uuid
            << (report->metadata_covered
                    ? ", header under its digest"
                    : ", header not covered: written before ckptd recorded ckpt.metadata_digest")
            << ")\n";
  return kExitOk;
}

int Merge(const std::string& first, const std::string& out) {
  auto merged = storage::MergeParts(env::Env::Default(), first, out);
  if (!merged.ok()) {
    std::fprintf(stderr, "ckptctl merge: %s\n", std::string(merged.status().message()).c_str());
    return kExitFailed;
  }
  std::cout << "wrote " << out << " (step " << merged->step << ", " << merged->world_size
            << " parts, " << merged->tensors << " tensors of which " << merged->sliced_tensors
            << " reassembled from slices, " << merged->bytes << " bytes, uuid " << merged->uuid
            << ")\n";
  return kExitOk;
}

}  // namespace

int Main(int argc, char** argv) {
  CLI::App app{"ckptctl: inspect, verify and manage ckptd checkpoints"};
  app.require_subcommand(1);
  app.set_version_flag("--version", StrCat("ckptctl ", CKPTD_VERSION));

  std::string inspect_path;
  bool inspect_json = false;
  auto* inspect = app.add_subcommand("inspect", "Print a GGUF file's header: metadata and tensors");
  inspect->add_option("FILE", inspect_path, "GGUF file")->required();
  inspect->add_flag("--json", inspect_json, "Complete header as JSON (arrays unabridged)");

  std::string verify_path;
  auto* verify = app.add_subcommand("verify", "Re-read all tensor data and check its digests");
  verify->add_option("FILE", verify_path, "GGUF file written by ckptd")->required();

  std::string merge_first, merge_out;
  auto* merge = app.add_subcommand(
      "merge", "Join a multi-rank step's parts (slices reassembled) into one checkpoint file");
  merge->add_option("FIRST_PART", merge_first, "step_N-00001-of-WWWWW.gguf (the others beside it)")
      ->required();
  merge->add_option("-o,--out", merge_out, "Output file")->required();

  ExportArgs export_args;
  auto* export_cmd = AddExportCommand(&app, &export_args);
  FetchArgs fetch_args;
  auto* fetch_cmd = AddFetchCommand(&app, &fetch_args);

  DaemonCommandArgs daemon_args;
  const std::vector<DaemonCommand> daemon_commands = AddDaemonCommands(&app, &daemon_args);

  std::vector<std::string> help_topic;
  auto* help = app.add_subcommand("help", "Show the commands, or one command's options");
  help->add_option("COMMAND", help_topic, "A command (e.g. ls, or retention plan)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  if (*help) {
    const CLI::App* topic = &app;
    for (const std::string& name : help_topic) {
      const CLI::App* next = nullptr;
      for (const CLI::App* sub : topic->get_subcommands([](const CLI::App*) { return true; })) {
        if (sub->get_name() == name) next = sub;
      }
      if (next == nullptr) {
        std::fprintf(stderr, "ckptctl: help: no command '%s' (ckptctl help lists them)\n",
                     name.c_str());
        return kExitUsage;
      }
      topic = next;
    }
    // The formatter, not help(): that would describe the parsed `help` command.
    std::cout << topic->get_formatter()->make_help(
        topic, topic == &app ? "ckptctl" : topic->get_name(), CLI::AppFormatMode::Normal);
    return kExitOk;
  }
  if (*inspect) return Inspect(inspect_path, inspect_json);
  if (*verify) return Verify(verify_path);
  if (*merge) return Merge(merge_first, merge_out);
  if (*export_cmd) return RunExport(export_args);
  if (*fetch_cmd) return RunFetch(fetch_args, daemon_args);
  if (auto rc = RunDaemonCommand(daemon_commands, daemon_args)) return *rc;
  return kExitUsage;  // require_subcommand(1) makes this unreachable
}

}  // namespace ckptd::cli
