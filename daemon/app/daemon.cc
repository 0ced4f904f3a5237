// Wiring of the daemon.
#include "daemon/app/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "daemon/base/strings.h"
#include "daemon/config/config.h"
#include "daemon/env/fault_env.h"
#include "daemon/http/server.h"
#include "daemon/ingest/arena_server.h"
#include "daemon/query/queries.h"
#include "daemon/rpc/service.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_queue.h"

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

void Notify(const std::string& state) { sd_notify(0, state.c_str()); }

std::string Hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// Creates and resolves each root; errors name the config value's source.
absl::StatusOr<std::vector<std::string>> PrepareRoots(env::Env* env, const config::Config& c) {
  std::vector<std::string> out;
  const std::string& source = c.sources.at("storage.roots");
  for (const std::string& root : c.roots) {
    absl::Status st = env->CreateDirs(root);
    if (!st.ok())
      return absl::InvalidArgumentError(StrCat(source, ": storage.roots: ", st.message()));
    auto real = env->RealPath(root);
    if (!real.ok())
      return absl::InvalidArgumentError(
          StrCat(source, ": storage.roots: ", real.status().message()));
    out.push_back(*real);
  }
  return out;
}

// "unix:PATH" -> makes PATH's directory and removes a stale socket file.
absl::Status PrepareListen(env::Env* env, const std::string& listen) {
  if (!listen.starts_with("unix:")) return absl::OkStatus();
  std::string path = listen.substr(5);
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    absl::Status st = env->CreateDirs(path.substr(0, slash));
    if (!st.ok()) return st;
  }
  auto st = env->Stat(path);
  if (st.ok() && !st->is_regular && !st->is_dir && !st->is_symlink) {
    // A socket left by a previous run; gRPC cannot bind over it.
    return env->RemoveFile(path);
  }
  return absl::OkStatus();
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
  app.add_flag("--print-config", args.print_config, "Print the effective config and exit");
  app.set_version_flag("--version", CKPTD_VERSION);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
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
  auto roots = PrepareRoots(env, *cfg);
  if (!roots.ok()) {
    std::fprintf(stderr, "ckptd: %s\n", std::string(roots.status().message()).c_str());
    return kExitConfig;
  }

  scheduler::DaemonFacts facts{
      CKPTD_VERSION, Hostname(), cfg->alignment,
      cfg->direct_io == "off" ? env::DirectIo::kOff : env::DirectIo::kAuto,
      cfg->uuid_scheme == "gguf-hash" ? gguf::UuidScheme::kGgufHash : gguf::UuidScheme::kContent};
  scheduler::RunRegistry registry(env, *roots, cfg->schedule, facts, cfg->retention,
                                  cfg->disk_guard);
  for (const std::string& w : registry.Scan()) spdlog::warn("startup: {}", w);
  spdlog::info("ckptd {} starting: roots={} runs={} listen={}", CKPTD_VERSION,
               fmt::format("{}", fmt::join(*roots, ",")), registry.List().size(), cfg->listen);

  if (absl::Status st = PrepareListen(env, cfg->listen); !st.ok()) {
    spdlog::error("cannot prepare {}: {}", cfg->listen, ToStd(st.message()));
    return kExitRuntime;
  }
  query::Queries queries(&registry, *roots);
  rpc::CheckpointdService service(
      &registry, &queries,
      std::chrono::milliseconds(static_cast<int64_t>(cfg->save_idle_timeout_seconds * 1000)));
  // The shm path: arenas registered on their own socket, saves written by
  // per-run workers. Declared after the registry, so destroyed before it.
  ingest::ArenaRegistry arenas(cfg->shm_max_arenas);
  scheduler::SaveQueue shared_saves(&registry, cfg->shm_max_pending_saves);
  std::unique_ptr<ingest::ArenaServer> arena_server;
  if (const std::string path = config::ArenaSocketPath(*cfg); !path.empty()) {
    arena_server = std::make_unique<ingest::ArenaServer>(
        std::filesystem::absolute(path).lexically_normal().string(), &arenas,
        cfg->shm_allowed_uids);
    absl::Status st = PrepareListen(env, "unix:" + arena_server->path());
    if (st.ok()) st = arena_server->Start(env);
    if (!st.ok()) {
      spdlog::error("cannot open the arena socket {} (shm.socket): {}", path, ToStd(st.message()));
      return kExitRuntime;
    }
    // Advertised to trainers, whose working directory may differ: absolute.
    service.EnableSharedMemory(
        &arenas, &shared_saves, arena_server->path(),
        std::chrono::milliseconds(static_cast<int64_t>(cfg->shm_staging_timeout_seconds * 1000)));
    spdlog::info("shm: arena socket {}", arena_server->path());
  } else {
    spdlog::info("shm: off ({}); trainers use the stream path",
                 cfg->shm_enabled ? "the API listens on TCP and shm.socket is unset"
                                  : "shm.enabled = false");
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(cfg->listen, grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg->max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(cfg->max_message_bytes));
  grpc::ResourceQuota quota("ckptd");
  quota.Resize(cfg->memory_quota_bytes);
  quota.SetMaxThreads(static_cast<int>(cfg->max_threads));
  builder.SetResourceQuota(quota);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    spdlog::error("cannot listen on {} (in use, or no permission)", cfg->listen);
    return kExitRuntime;
  }
  std::unique_ptr<http::HttpServer> http_server;
  if (!cfg->http_listen.empty()) {
    http_server = std::make_unique<http::HttpServer>(
        http::HttpOptions{.listen = cfg->http_listen, .roots = *roots}, &queries, &registry);
    if (absl::Status st = http_server->Start(); !st.ok()) {
      spdlog::error("{}", ToStd(st.message()));
      server->Shutdown();
      return kExitRuntime;
    }
    spdlog::info("http: listening on {}:{} (status page, /v1, /metrics)",
                 cfg->http_listen.substr(0, cfg->http_listen.rfind(':')), http_server->port());
  }
  spdlog::info("ready: listening on {}", cfg->listen);
  Notify(StrCat("READY=1\nSTATUS=serving ", registry.List().size(), " runs on ", cfg->listen));

  // Retention also runs on a timer (besides after every commit), so policy
  // changes and clock-based rules take effect without new saves.
  std::mutex timer_mu;
  std::condition_variable timer_cv;
  bool timer_stop = false;
  std::thread retention_timer([&] {
    const auto period = std::chrono::milliseconds(
        std::max<int64_t>(1000, static_cast<int64_t>(cfg->retention_interval_seconds * 1000)));
    std::unique_lock lock(timer_mu);
    while (!timer_cv.wait_for(lock, period, [&] { return timer_stop; })) {
      lock.unlock();
      for (const auto& run : registry.List()) (void)registry.RunRetention(*run, /*dry=*/false);
      lock.lock();
    }
  });

  // Readiness, from the one source /readyz uses: the gRPC health service
  // and systemd's STATUS= follow it (checked every second, logged on change).
  std::thread readiness([&] {
    bool was = true;  // as READY=1 and the health service start out
    std::unique_lock lock(timer_mu);
    do {
      lock.unlock();
      const query::Readiness r = queries.Ready();
      if (was != r.ready) {
        server->GetHealthCheckService()->SetServingStatus(r.ready);
        Notify(r.ready ? StrCat("STATUS=serving ", registry.List().size(), " runs on ", cfg->listen)
                       : StrCat("STATUS=not ready: ", r.Summary()));
        spdlog::log(r.ready ? spdlog::level::info : spdlog::level::warn, "readiness: {}",
                    r.Summary());
        was = r.ready;
      }
      lock.lock();
    } while (!timer_cv.wait_for(lock, std::chrono::seconds(1), [&] { return timer_stop; }));
  });

  // Watchdog: under systemd with WatchdogSec=, ping at half the interval,
  // after checking that the run registry still answers (not deadlocked).
  uint64_t watchdog_usec = 0;
  std::thread watchdog;
  if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
    spdlog::info("systemd watchdog: pinging every {}ms", watchdog_usec / 2000);
    watchdog = std::thread([&] {
      std::unique_lock lock(timer_mu);
      while (!timer_cv.wait_for(lock, std::chrono::microseconds(watchdog_usec / 2),
                                [&] { return timer_stop; })) {
        (void)registry.List();
        Notify("WATCHDOG=1");
      }
    });
  }

  while (true) {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGHUP) {
      auto fresh = config::LoadConfig(args.config_file, Environment(), args.cli);
      if (!fresh.ok()) {
        spdlog::error("reload failed, keeping the running config: {}",
                      ToStd(fresh.status().message()));
        continue;
      }
      registry.SetDefaults(fresh->schedule, fresh->retention, fresh->disk_guard);
      spdlog::set_level(spdlog::level::from_str(fresh->log_level));
      spdlog::info("reloaded: schedule {}; retention {}; log level {}",
                   policy::Describe(fresh->schedule), policy::Describe(fresh->retention),
                   fresh->log_level);
      continue;
    }
    break;
  }
  const auto deadline = std::chrono::duration<double>(cfg->shutdown_deadline_seconds);
  spdlog::info("stopping: no new calls; in-flight saves have {:g}s",
               cfg->shutdown_deadline_seconds);
  Notify("STOPPING=1\nSTATUS=draining in-flight saves");
  service.BeginShutdown();
  if (http_server) http_server->Stop();
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline));
  server->Wait();
  if (arena_server) arena_server->Stop();
  if (size_t n = shared_saves.pending(); n > 0) {
    spdlog::info("stopping: writing {} accepted shared-memory saves", n);
  }
  shared_saves.Drain();
  {
    std::lock_guard lock(timer_mu);
    timer_stop = true;
  }
  timer_cv.notify_all();
  retention_timer.join();
  if (watchdog.joinable()) watchdog.join();
  readiness.join();
  spdlog::info("stopped");
  return kExitOk;
}

}  // namespace ckptd::app
