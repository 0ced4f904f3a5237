// ckptctl fetch: the object store's copy of a step, back on disk.
#include "client/cli/fetch_command.h"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>

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
  sub->add_option("RUN", args->run, "The run")->required();
  sub->add_option("STEP", args->step, "Step (default: the one the store's latest names)");
  sub->add_option("--config", args->config,
                  "The daemon's config, for [tier.s3] and storage.roots (default $CKPTD_CONFIG, "
                  "else /etc/ckptd/ckptd.toml)");
  sub->add_option("-o,--output", args->out,
                  "Directory for the files (default <first root>/<RUN>/weights; restart the "
                  "daemon afterwards for it to list them)");
  sub->add_option("--prefix", args->prefix,
                  "Key prefix of the run's objects, for a run opened with its own tier prefix "
                  "(default tier.s3.prefix)");
  sub->add_flag("--json", args->json, "Print what was fetched as JSON");
  return sub;
}

int RunFetch(const FetchArgs& args) {
  auto fail = [](const std::string& what, const absl::Status& st) {
    std::fprintf(stderr, "ckptctl: fetch: %s%s\n", what.c_str(), std::string(st.message()).c_str());
    return kExitFailed;
  };
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
