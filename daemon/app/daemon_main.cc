// ckptd's entry point: the command line, the config, logging, signals.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>
#include <string>

#include "daemon/app/daemon.h"
#include "daemon/base/strings.h"
#include "daemon/config/config.h"
#include "daemon/env/fault_env.h"

extern char** environ;

namespace ckptd::app {
namespace {

struct Args {
  std::string config_file;
  config::CommandLine cli;
  bool print_config = false;
};

std::map<std::string, std::string> Environment() {
  std::map<std::string, std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv = *e;
    size_t eq = kv.find('=');
    if (eq != std::string_view::npos) out.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return out;
}

void SetupLogging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("ckptd");
  // journald stamps lines itself; elsewhere, a UTC timestamp leads each line.
  logger->set_pattern(std::getenv("JOURNAL_STREAM") ? "%l: %v" : "%Y-%m-%dT%H:%M:%S.%eZ %l %v",
                      spdlog::pattern_time_type::utc);
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(logger);
}

}  // namespace

int DaemonMain(int argc, char** argv) {
  // Block the signals we handle before gRPC starts threads, so only the
  // sigwait loop below sees them.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Args args;
  CLI::App app{"ckptd: checkpoint sidecar daemon for training runs"};
  app.add_option("--config", args.config_file, "TOML config file (default: built-in dev config)");
  app.add_option("--listen", args.cli.listen, "unix:PATH or HOST:PORT");
  app.add_option("--root", args.cli.roots, "Checkpoint root directory (repeatable)");
  app.add_option("--log-level", args.cli.log_level, "trace|debug|info|warn|error|off");
  app.add_option("--http-listen", args.cli.http_listen, "HOST:PORT for HTTP, \"\" for off");
  app.add_flag("--insecure", args.cli.insecure,
               "Serve a HOST:PORT listen without TLS (server.insecure)");
  app.add_flag("--print-config", args.print_config, "Print the effective config and exit");
  app.set_version_flag("--version", "ckptd " CKPTD_VERSION);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitConfig;
  }

  auto cfg = config::LoadConfig(args.config_file, Environment(), args.cli);
  if (!cfg.ok()) {
    std::fprintf(stderr, "ckptd: %s\n", std::string(cfg.status().message()).c_str());
    return kExitConfig;
  }
  if (args.print_config) {
    std::fputs(config::Describe(*cfg).c_str(), stdout);
    return kExitOk;
  }
  SetupLogging(cfg->log_level);

  env::Env* env = env::Env::Default();
  std::unique_ptr<env::Env> fault_env;
  if (const char* spec = std::getenv("CKPTD_TEST_FAULTS")) {
    auto f = env::NewFaultInjectionEnv(env, spec);
    if (!f.ok()) {
      std::fprintf(stderr, "ckptd: CKPTD_TEST_FAULTS: %s\n",
                   std::string(f.status().message()).c_str());
      return kExitConfig;
    }
    fault_env = std::move(*f);
    env = fault_env.get();
    spdlog::warn("fault injection active: {}", spec);
  }
  int exit_code = kExitOk;
  auto daemon = Daemon::Start(*cfg, env, &exit_code);
  if (!daemon.ok()) {
    if (exit_code == kExitConfig) {
      std::fprintf(stderr, "ckptd: %s\n", std::string(daemon.status().message()).c_str());
    } else {
      spdlog::error("{}", ToStd(daemon.status().message()));
    }
    return exit_code;
  }
  while (true) {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig != SIGHUP) break;
    auto fresh = config::LoadConfig(args.config_file, Environment(), args.cli);
    if (!fresh.ok()) {
      spdlog::error("reload failed, keeping the running config: {}",
                    ToStd(fresh.status().message()));
      continue;
    }
    (*daemon)->Reload(*fresh);
  }
  (*daemon)->Stop();
  return kExitOk;
}

}  // namespace ckptd::app
