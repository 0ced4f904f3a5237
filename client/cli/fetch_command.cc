// ckptctl fetch: the object store's copy of a step, back on disk.
#include "client/cli/fetch_command.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>

#include "ckptd/client.h"
#include "client/cli/commands.h"
#include "daemon/base/strings.h"
#include "daemon/config/config.h"
#include "daemon/env/env.h"
#include "daemon/tier/fetch.h"
#include "daemon/tier/store_factory.h"

namespace ckptd::cli {

CLI::App* AddFetchCommand(CLI::App* app, FetchArgs* args) {
  CLI::App* sub = app->add_subcommand(
      "fetch", "Restore a step from the object store ([tier.s3]) into a directory");
  sub->fallthrough();  // --socket and the TLS flags, after the command too
  sub->add_option("RUN", args->run, "The run")->required();
  sub->add_option("STEP", args->step, "Step (default: the one the store's latest names)");
  sub->add_option("--config", args->config,
                  "Fetch here, with this daemon config's [tier.s3] and storage.roots (default: "
                  "through the daemon at --socket when one answers, else $CKPTD_CONFIG or "
                  "/etc/ckptd/ckptd.toml)");
  sub->add_option("-o,--output", args->out,
                  "Directory for the files (default <first root>/<RUN>/weights; restart the "
                  "daemon afterwards for it to list them)");
  sub->add_option("--prefix", args->prefix,
                  "Key prefix of the run's objects, for a run opened with its own tier prefix "
                  "(default tier.s3.prefix)");
  sub->add_flag("--json", args->json, "Print what was fetched as JSON");
  return sub;
}

namespace {

// Through the daemon: nullopt when none answers at the socket (then this
// process fetches), else the exit code.
std::optional<int> FetchThroughDaemon(const FetchArgs& args, const DaemonCommandArgs& daemon) {
  auto client = ConnectDaemon(daemon);
  if (!client.ok()) return std::nullopt;
  v1::FetchRemoteRequest req;
  req.set_run_id(args.run);
  if (args.step >= 0) req.set_step(static_cast<uint64_t>(args.step));
  grpc::ClientContext ctx;
  v1::CheckpointInfo info;
  const auto started = std::chrono::steady_clock::now();
  grpc::Status st = (*client)->stub().FetchRemote(&ctx, req, &info);
  // No daemon there (or not one this user may reach): fetch here.
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE &&
      !st.error_message().starts_with("object store: ")) {
    return std::nullopt;
  }
  if (!st.ok())
    return Fail(StrCat("fetch ", args.run, " (through the daemon at ", DaemonSocket(daemon), ")"),
                st);
  std::vector<std::string> files;
  if (!info.train_file().empty()) files.push_back(info.train_file());
  files.push_back(info.file());
  const uint64_t bytes = info.size_bytes() + info.train_size_bytes();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (args.json) {
    nlohmann::json j = {{"run_id", args.run},
                        {"step", info.step()},
                        {"uuid", info.uuid()},
                        {"files", files},
                        {"bytes", bytes},
                        {"seconds", seconds},
                        {"from", info.fetched_from()},
                        {"through", DaemonSocket(daemon)}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << fmt::format(
        "fetched step {} of run {} ({} files, {} bytes, {:.2f} s) through the daemon at {} (its "
        "tier settings; from {}), which lists it now\n",
        info.step(), args.run, files.size(), bytes, seconds, DaemonSocket(daemon),
        info.fetched_from().empty() ? "its own disk" : info.fetched_from());
    for (const std::string& f : files) std::cout << "  " << f << "\n";
  }
  return kExitOk;
}

}  // namespace

int RunFetch(const FetchArgs& args, const DaemonCommandArgs& daemon) {
  auto fail = [](const std::string& what, const absl::Status& st) {
    std::fprintf(stderr, "ckptctl: fetch: %s%s\n", what.c_str(), std::string(st.message()).c_str());
    return kExitFailed;
  };
  // A running daemon knows its store and lists what it fetches; a config
  // file, an output directory or a prefix asks for this process to fetch.
  if (args.config.empty() && args.out.empty() && !args.prefix) {
    if (auto rc = FetchThroughDaemon(args, daemon)) return *rc;
  }
  std::string config_path = args.config;
  if (config_path.empty()) {
    const char* env = std::getenv("CKPTD_CONFIG");
    config_path = env && *env ? env : "/etc/ckptd/ckptd.toml";
  }
  auto cfg = config::LoadConfig(config_path, {}, {});
  if (!cfg.ok()) return fail("", cfg.status());
  if (cfg->s3_endpoint.empty()) {
    return fail("", absl::FailedPreconditionError(
                        StrCat(config_path, " has no [tier.s3] endpoint: nothing to fetch from")));
  }
  env::Env* env = env::Env::Default();
  auto store = tier::OpenStore(env, *cfg);
  if (!store.ok()) return fail("", store.status());
  const std::string out = !args.out.empty() ? args.out
                          : cfg->roots.empty()
                              ? std::string()
                              : StrCat(cfg->roots.front(), "/", args.run, "/weights");
  std::optional<uint64_t> step;
  if (args.step >= 0) step = static_cast<uint64_t>(args.step);
  if (args.prefix) {
    if (std::string problem = KeyPrefixProblem(*args.prefix); !problem.empty()) {
      return fail("", absl::InvalidArgumentError(
                          StrCat("--prefix '", Printable(*args.prefix), "' ", problem)));
    }
  }
  auto got = tier::FetchStep(env, **store,
                             {.prefix = args.prefix.value_or(cfg->s3_prefix),
                              .parallel = static_cast<int>(cfg->s3_parallel_parts),
                              .max_memory_bytes = cfg->s3_max_memory_bytes},
                             args.run, step, out);
  if (!got.ok()) return fail(StrCat(args.run, ": "), got.status());
  if (args.json) {
    nlohmann::json j = {{"run_id", args.run},  {"step", got->step},   {"uuid", got->uuid},
                        {"files", got->files}, {"bytes", got->bytes}, {"seconds", got->seconds}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << fmt::format("fetched step {} of run {} ({} files, {} bytes, {:.2f} s) into {}\n",
                             got->step, args.run, got->files.size(), got->bytes, got->seconds, out);
    for (const std::string& f : got->files) std::cout << "  " << f << "\n";
  }
  return kExitOk;
}

}  // namespace ckptd::cli
