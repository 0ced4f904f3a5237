// Wiring of the daemon.
#include "daemon/app/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/config/config.h"
#include "daemon/env/fault_env.h"
#include "daemon/env/fd_limit.h"
#include "daemon/env/fd_passing.h"
#include "daemon/http/server.h"
#include "daemon/ingest/arena_server.h"
#include "daemon/metrics/metrics.h"
#include "daemon/query/queries.h"
#include "daemon/rpc/decode_errors.h"
#include "daemon/rpc/service.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_queue.h"
#include "daemon/storage/file_names.h"
#include "daemon/tier/fetch.h"
#include "daemon/tier/step_coordinator.h"

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
// A Unix socket's directory exists and its path is free: a socket left by
// a daemon that died is removed (nothing can bind over it), one that a live
// daemon serves is never touched (FAILED_PRECONDITION naming the setting).
absl::Status PrepareListen(env::Env* env, const std::string& listen, int type,
                           std::string_view setting) {
  if (!listen.starts_with("unix:")) return absl::OkStatus();
  std::string path = listen.substr(5);
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    absl::Status st = env->CreateDirs(path.substr(0, slash));
    if (!st.ok()) return st;
  }
  auto st = env->Stat(path);
  if (st.ok() && !st->is_regular && !st->is_dir && !st->is_symlink) {
    if (env::UnixSocketAnswers(path, type)) {
      return absl::FailedPreconditionError(
          StrCat("another ckptd is serving ", path,
                 " (it accepts connections); stop it first, or give this one another ", setting));
    }
    return env->RemoveFile(path);
  }
  return absl::OkStatus();
}

// The sockets' permissions (server.socket_mode, server.socket_group), set
// after bind so that the service's UMask does not decide who may connect.
absl::Status SetSocketAccess(env::Env* env, const config::Config& cfg, const std::string& path) {
  const int64_t gid = cfg.socket_group.empty() ? -1 : config::GroupId(cfg.socket_group);
  if (absl::Status st = env->SetMode(path, cfg.socket_mode, gid); !st.ok()) {
    return absl::Status(st.code(), StrCat("server.socket_mode/socket_group: ", st.message()));
  }
  spdlog::info("socket {}: mode {:04o}{}", path, cfg.socket_mode,
               cfg.socket_group.empty() ? "" : StrCat(", group ", cfg.socket_group));
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

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const config::Config& cfg, env::Env* env,
                                                      int* exit_code) {
  std::unique_ptr<Daemon> d(new Daemon(cfg, env));
  *exit_code = kExitConfig;
  auto roots = PrepareRoots(env, cfg);
  if (!roots.ok()) return roots.status();
  d->roots_ = *roots;
  *exit_code = kExitRuntime;
  CKPTD_TRY(d->StartServing());
  *exit_code = kExitOk;
  return d;
}

absl::Status Daemon::LockRoots() {
  for (const std::string& root : roots_) {
    const std::string path = StrCat(root, "/", storage::kRootLockFile);
    std::string holder;
    auto lock = env_->LockFile(path, &holder);
    if (absl::IsFailedPrecondition(lock.status())) {
      return absl::FailedPreconditionError(
          StrCat("root ", root, " is in use by another ckptd",
                 holder.empty() ? "" : StrCat(" (pid ", holder, ")"), ", which holds ", path,
                 "; stop it first, or give this one other storage.roots"));
    }
    if (!lock.ok()) return lock.status();
    root_locks_.push_back(*std::move(lock));
  }
  return absl::OkStatus();
}

absl::Status Daemon::StartServing() {
  const config::Config& cfg = cfg_;
  // Before recovery touches a root: one daemon per root and per socket.
  CKPTD_TRY(LockRoots());
  if (absl::Status st = PrepareListen(env_, cfg.listen, SOCK_STREAM, "server.listen"); !st.ok()) {
    return absl::Status(st.code(), StrCat("cannot prepare ", cfg.listen, ": ", st.message()));
  }
  scheduler::DaemonFacts facts{
      CKPTD_VERSION,
      Hostname(),
      cfg.alignment,
      cfg.direct_io == "off" ? env::DirectIo::kOff : env::DirectIo::kAuto,
      cfg.uuid_scheme == "gguf-hash" ? gguf::UuidScheme::kGgufHash : gguf::UuidScheme::kContent,
      cfg.export_profiles_dir};
  registry_ = std::make_unique<scheduler::RunRegistry>(env_, roots_, cfg.schedule, facts,
                                                       cfg.retention, cfg.disk_guard);
  if (auto lim = env::RaiseOpenFileLimit(); lim.ok()) {
    fd_limit_ = lim->soft;
    if (lim->soft != lim->before) {
      spdlog::info("open files: soft limit raised from {} to {}", lim->before, lim->soft);
    }
  } else {
    spdlog::warn("open files: {}", ToStd(lim.status().message()));
  }
  if (fd_limit_ < 4096) {
    spdlog::warn(
        "open files: the limit is {}; raise LimitNOFILE (the unit sets 65536) so that "
        "trainers' connections cannot use up the descriptors saves need",
        fd_limit_);
  }
  for (const std::string& w : registry_->Scan()) spdlog::warn("startup: {}", w);
  spdlog::info("ckptd {} starting: roots={} runs={} listen={}", CKPTD_VERSION,
               fmt::format("{}", fmt::join(roots_, ",")), registry_->List().size(), cfg.listen);
  queries_ = std::make_unique<query::Queries>(registry_.get(), roots_);
  service_ = std::make_unique<rpc::CheckpointdService>(
      registry_.get(), queries_.get(),
      std::chrono::milliseconds(static_cast<int64_t>(cfg.save_idle_timeout_seconds * 1000)));
  service_->SetTierConfigured(!cfg.s3_endpoint.empty());
  service_->SetLimits({.max_tensors = cfg.max_tensors_per_save,
                       .max_metadata_bytes = cfg.max_metadata_bytes,
                       .max_watch_streams = config::EffectiveMaxWatchStreams(cfg),
                       .max_save_streams = config::EffectiveMaxSaveStreams(cfg),
                       .watch_max_seconds = cfg.watch_max_seconds,
                       .memory_budget_bytes = cfg.memory_budget_bytes,
                       .max_streams_per_peer = cfg.max_streams_per_peer});
  for (const std::string& w : service_->RestoreRuns()) spdlog::warn("startup: {}", w);
  if (!cfg.tokens_file.empty()) {
    auto tokens = rpc::TokenTable::Load(env_, cfg.tokens_file);
    if (!tokens.ok()) {
      return absl::Status(tokens.status().code(),
                          StrCat("server.tokens_file: ", tokens.status().message()));
    }
    spdlog::info("auth: {} bearer tokens from {}", tokens->size(), cfg.tokens_file);
    service_->SetTokens(std::make_shared<const rpc::TokenTable>(std::move(*tokens)));
  }
  CKPTD_TRY(StartTier());
  CKPTD_TRY(StartSharedMemory());
  CKPTD_TRY(StartGrpc());
  if (!cfg.http_listen.empty()) {
    std::string http_token;
    if (!cfg.http_token_file.empty()) {
      auto token = rpc::LoadSingleToken(env_, cfg.http_token_file);
      if (!token.ok()) {
        server_->Shutdown();
        return absl::Status(token.status().code(),
                            StrCat("http.token_file: ", token.status().message()));
      }
      http_token = std::move(*token);
    }
    http_server_ =
        std::make_unique<http::HttpServer>(http::HttpOptions{.listen = cfg.http_listen,
                                                             .roots = roots_,
                                                             .token = http_token,
                                                             .tls_cert = cfg.http_tls_cert,
                                                             .tls_key = cfg.http_tls_key},
                                           queries_.get(), registry_.get());
    if (absl::Status st = http_server_->Start(); !st.ok()) {
      server_->Shutdown();
      return st;
    }
    spdlog::info("http: listening on {}:{} ({}; status page, /v1, /metrics)",
                 cfg.http_listen.substr(0, cfg.http_listen.rfind(':')), http_server_->port(),
                 cfg.http_tls_cert.empty() ? "plain HTTP" : "HTTPS only");
  }
  spdlog::info("ready: listening on {}", cfg.listen);
  Notify(StrCat("READY=1\nSTATUS=serving ", registry_->List().size(), " runs on ", cfg.listen));
  StartTimers();
  return absl::OkStatus();
}

namespace {
constexpr std::string_view kStoreErrorPrefix = "object store: ";

// A run whose checkpoints stay on the node (OpenRun's tier.local_only).
bool LocalOnly(const scheduler::Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu()) {
  return run.settings && run.settings->tier.local_only;
}

// An answer about the object store for a client: its errors say so first
// ("object store: ..."), so an UNAVAILABLE from the store is not taken for
// the daemon being unreachable.
absl::Status StoreError(const absl::Status& st) {
  return absl::Status(st.code(), StrCat(kStoreErrorPrefix, st.message()));
}

// A step only the object store holds, as listed: from its manifest.
void DescribeRemote(const nlohmann::json& m, const std::string& bucket, v1::CheckpointInfo* out) {
  out->set_uuid(m.value("uuid", ""));
  out->set_content_digest(m.value("content_digest", ""));
  out->set_time_utc(m.value("time_utc", ""));
  if (m.contains("metrics") && m["metrics"].is_object()) {
    for (const auto& [name, value] : m["metrics"].items()) {
      if (value.is_number()) (*out->mutable_metrics())[name] = value.get<double>();
    }
  }
  for (const auto& f : m["files"]) {
    const std::string role = f.value("role", "");
    const std::string url = StrCat("s3://", bucket, "/", f.value("key", ""));
    const uint64_t size = f.value("size", uint64_t{0});
    if (role == "model") {
      out->set_file(url);
      out->set_size_bytes(size);
    } else if (role == "train") {
      out->set_train_file(url);
      out->set_train_size_bytes(size);
    } else if (role.starts_with("export:")) {
      v1::ExportInfo* e = out->add_exports();
      e->set_name(role.substr(7));
      e->set_file(url);
      e->set_size_bytes(size);
    }
  }
}
}  // namespace

// [tier.s3]: credentials, the uploader, what each run still has to upload,
// and the hook that queues every commit.
absl::Status Daemon::StartTier() {
  const config::Config& cfg = cfg_;
  if (cfg.s3_endpoint.empty()) return absl::OkStatus();
  tier::S3Config s3{.endpoint = cfg.s3_endpoint,
                    .bucket = cfg.s3_bucket,
                    .region = cfg.s3_region,
                    .stall_timeout_s = cfg.s3_stall_timeout_seconds};
  CKPTD_TRY(tier::LoadCredentials(env_, cfg.s3_credentials_file, &s3));
  auto client = std::make_unique<tier::S3Client>(std::move(s3));
  tier::TierSettings settings{.prefix = cfg.s3_prefix,
                              .part_size = cfg.s3_part_size,
                              .parallel_parts = static_cast<int>(cfg.s3_parallel_parts),
                              .max_memory_bytes = cfg.s3_max_memory_bytes};
  settings.remote_retention = cfg.s3_retention_same;
  if (const char* pause = std::getenv("CKPTD_TEST_TIER_PAUSE_S")) {
    settings.test_pause_s = std::atof(pause);
  }
  uploader_ = std::make_unique<tier::Uploader>(
      env_, std::move(client), settings, [this](const tier::UploadEvent& e) {
        if (e.type == tier::UploadEventType::kUploaded) {
          metrics::Metrics::Get().RecordUpload(e.run_id, e.bytes, e.seconds);
        } else {
          metrics::Metrics::Get().CountUploadFailure(e.run_id);
        }
        auto run = registry_->Get(e.run_id);
        if (!run.ok()) return;
        // A multi-rank part reported: its verdict may be due now.
        if (coordinator_ && e.type == tier::UploadEventType::kUploaded)
          coordinator_->Poke(e.run_id);
        if (e.type == tier::UploadEventType::kUploaded) {
          {
            absl::MutexLock lock(&(*run)->mu());
            (*run)->awaiting_upload.erase(e.step);
          }
          // Steps local retention kept only because they were not in the
          // store yet go now, not at the next commit.
          (void)registry_->RunRetention(**run, /*dry=*/false);
        }
        (*run)->Publish({.type = e.type == tier::UploadEventType::kUploaded
                                     ? scheduler::Event::Type::kUploaded
                                     : scheduler::Event::Type::kUploadFailed,
                         .run_id = e.run_id,
                         .step = e.step,
                         .error = e.error,
                         .time_utc = FormatUtc(NowSeconds())});
      });
  for (const auto& run : registry_->List()) {
    std::vector<storage::CheckpointRecord> local;
    std::optional<uint32_t> rank;
    {
      absl::MutexLock lock(&run->mu());
      if (LocalOnly(*run)) continue;
      for (const auto& [step, record] : run->dir()->catalog()) local.push_back(record);
      // A multi-rank run's parts waiting for their verdict: reported (or
      // uploaded and reported) before the verdict can come.
      for (const auto& [step, record] : run->dir()->pending()) local.push_back(record);
      std::sort(local.begin(), local.end(),
                [](const auto& a, const auto& b) { return a.step < b.step; });
      if (run->settings && run->settings->multi_rank.world_size > 1) {
        rank = run->settings->multi_rank.rank;
      }
    }
    if (absl::Status st = uploader_->Recover(run->id(), run->run_dir(), local, rank); !st.ok()) {
      spdlog::warn("tier: run={}: {}", run->id(), st.message());
    }
    absl::MutexLock lock(&run->mu());
    for (const auto& r : local) {
      if (uploader_->StateOf(run->id(), r.step) == "queued") run->awaiting_upload.insert(r.step);
    }
  }
  uploader_->SetRules([this](const std::string& run_id) -> std::optional<tier::RemoteRules> {
    auto run = registry_->Get(run_id);
    if (!run.ok()) return std::nullopt;
    absl::MutexLock lock(&(*run)->mu());
    scheduler::RunTier t = (*run)->settings ? (*run)->settings->tier : scheduler::RunTier{};
    return tier::RemoteRules{
        .prefix = t.prefix.empty() ? cfg_.s3_prefix : t.prefix,
        .remote_retention = t.remote_retention.value_or(cfg_.s3_retention_same),
        .policy = registry_->EffectiveRetention(**run),
        .pins = (*run)->pins.pins()};
  });
  uploader_->SetPrefix([this](const std::string& run_id) -> std::optional<std::string> {
    auto run = registry_->Get(run_id);
    if (!run.ok()) return std::nullopt;
    absl::MutexLock lock(&(*run)->mu());
    if (!(*run)->settings || (*run)->settings->tier.prefix.empty()) return cfg_.s3_prefix;
    return (*run)->settings->tier.prefix;
  });
  registry_->SetCommitHook([this](scheduler::Run& run, const storage::CheckpointRecord& r) {
    {
      absl::MutexLock lock(&run.mu());
      if (LocalOnly(run)) return;
      run.awaiting_upload.insert(r.step);
    }
    if (absl::Status st = uploader_->Enqueue({run.id(), run.run_dir(), r}); !st.ok()) {
      spdlog::error("tier: run={} step={} not queued for upload: {}", run.id(), r.step,
                    st.message());
    }
  });
  queries_->SetTier(
      {.upload_state = [this](const std::string& run_id,
                              uint64_t step) { return uploader_->StateOf(run_id, step); },
       .unhealthy = [this]() -> std::optional<std::string> {
         tier::Uploader::Health h = uploader_->health();
         if (h.healthy) return std::nullopt;
         return h.error;
       },
       .remote_retention = [this](const std::string& run_id,
                                  bool apply) -> absl::StatusOr<v1::RetentionPlan> {
         absl::StatusOr<tier::RemotePlan> planned =
             uploader_->PlanRemote(run_id, apply, /*retry=*/false);
         if (!planned.ok()) return StoreError(planned.status());
         tier::RemotePlan& plan = *planned;
         v1::RetentionPlan out;
         out.set_policy(StrCat("remote copies: ", plan.policy));
         for (const policy::RetentionDecision& d : plan.decisions) {
           v1::RetentionDecision* p = out.add_decisions();
           p->set_step(d.step);
           p->set_keep(d.keep);
           p->set_reason(d.reason);
           p->set_bytes(d.bytes);
         }
         for (uint64_t step : plan.deleted) out.add_deleted(step);
         return out;
       },
       .remote_steps = [this](const std::string& run_id) -> absl::StatusOr<std::set<uint64_t>> {
         absl::StatusOr<std::set<uint64_t>> steps = uploader_->RemoteSteps(run_id);
         if (!steps.ok()) return StoreError(steps.status());
         return steps;
       },
       .describe_remote = [this](const std::string& run_id, uint64_t step,
                                 v1::CheckpointInfo* out) -> absl::Status {
         absl::StatusOr<nlohmann::json> m = uploader_->RemoteManifest(run_id, step);
         if (!m.ok()) return StoreError(m.status());
         DescribeRemote(*m, uploader_->client().config().bucket, out);
         return absl::OkStatus();
       },
       .fetch_remote = [this](const std::string& run_id,
                              std::optional<uint64_t> step) -> absl::StatusOr<v1::CheckpointInfo> {
         absl::StatusOr<v1::CheckpointInfo> info = FetchRemote(run_id, step);
         if (!info.ok() && absl::IsUnavailable(info.status())) return StoreError(info.status());
         return info;
       }});
  registry_->SetStagedHook([this](scheduler::Run& run, const storage::CheckpointRecord& r) {
    if (absl::Status st = uploader_->Enqueue({run.id(), run.run_dir(), r}); !st.ok()) {
      spdlog::error("tier: run={} step={} part not queued for upload: {}", run.id(), r.step,
                    st.message());
    }
    if (coordinator_) coordinator_->Poke(run.id());
  });
  metrics::Metrics::Get().SetTier(static_cast<int64_t>(uploader_->queue_depth()), true);
  StartCoordinator();  // before the uploader's thread, whose events poke it
  uploader_->Start();
  spdlog::info("tier: copying checkpoints to {}/{}{}{} (parts of {} bytes, {} in flight)",
               cfg.s3_endpoint, cfg.s3_bucket, cfg.s3_prefix.empty() ? "" : "/", cfg.s3_prefix,
               cfg.s3_part_size, cfg.s3_parallel_parts);
  return absl::OkStatus();
}

void Daemon::StartCoordinator() {
  tier::CoordinatorHooks hooks;
  hooks.runs = [this] {
    std::vector<tier::MultiRankRun> out;
    for (const auto& run : registry_->List()) {
      absl::MutexLock lock(&run->mu());
      tier::MultiRankRun m{.run_id = run->id(), .run_dir = run->run_dir()};
      if (run->settings && run->settings->multi_rank.world_size > 1 && !LocalOnly(*run)) {
        const scheduler::RunMultiRank& mr = run->settings->multi_rank;
        m.rank = mr.rank;
        m.world_size = mr.world_size;
        m.coordinator = mr.coordinator;
        m.part_timeout_s = mr.part_timeout_s;
      }
      for (const auto& [step, record] : run->dir()->pending()) {
        m.pending.insert(step);
        if (m.world_size == 0) {  // reopened as another world: the part's own
          m.rank = record.rank;
          m.world_size = record.world_size;
        }
      }
      if (m.coordinator || !m.pending.empty()) out.push_back(std::move(m));
    }
    return out;
  };
  hooks.commit = [this](const std::string& run_id, uint64_t step) {
    auto run = registry_->Get(run_id);
    if (!run.ok()) return;
    absl::StatusOr<storage::CheckpointRecord> record;
    bool is_latest = false;
    {
      absl::MutexLock lock(&(*run)->mu());
      record = (*run)->dir()->CommitPart(step);
      if (record.ok()) is_latest = (*run)->dir()->latest_step() == step;
    }
    if (!record.ok()) {
      spdlog::error(
          "multi-rank: run={} step={}: the step is committed but this node's part "
          "could not be: {}",
          run_id, step, record.status().message());
      return;
    }
    (void)uploader_->MarkUploaded(run_id, (*run)->run_dir(), step);
    metrics::Metrics::Get().CountSave(run_id, "committed");
    spdlog::info("multi-rank: part committed run={} step={} rank={} world_size={} file={}{}",
                 run_id, step, record->rank, record->world_size, record->model_path,
                 is_latest ? " latest" : "");
    (*run)->Publish({.type = scheduler::Event::Type::kCommitted,
                     .run_id = run_id,
                     .step = step,
                     .record = *record,
                     .is_latest = is_latest,
                     .time_utc = FormatUtc(NowSeconds())});
    (void)registry_->RunRetention(**run, /*dry=*/false);
  };
  hooks.abort = [this](const std::string& run_id, uint64_t step, const std::string& reason) {
    auto run = registry_->Get(run_id);
    if (!run.ok()) return;
    const std::string error = StrCat("ABORTED: multi-rank step ", step, " aborted: ", reason);
    {
      absl::MutexLock lock(&(*run)->mu());
      if (absl::Status st = (*run)->dir()->AbortPart(step); !st.ok()) {
        spdlog::error("multi-rank: run={} step={}: removing the aborted part: {}", run_id, step,
                      st.message());
      }
      (*run)->last_error = error;
    }
    uploader_->Forget(run_id, (*run)->run_dir(), step);
    metrics::Metrics::Get().CountSave(run_id, "failed");
    spdlog::warn("multi-rank: part removed run={} step={}: {}", run_id, step, reason);
    (*run)->Publish({.type = scheduler::Event::Type::kFailed,
                     .run_id = run_id,
                     .step = step,
                     .error = error,
                     .time_utc = FormatUtc(NowSeconds())});
  };
  double poll_s = 1.0;
  if (const char* p = std::getenv("CKPTD_TEST_MULTI_RANK_POLL_S")) poll_s = std::atof(p);
  coordinator_ = std::make_unique<tier::StepCoordinator>(uploader_.get(), std::move(hooks), poll_s);
  coordinator_->Start();
}

// FetchRemote: the step into the run's weights/ (no save runs meanwhile:
// the run's save lock is held), then the directory re-read as at startup.
absl::StatusOr<v1::CheckpointInfo> Daemon::FetchRemote(const std::string& run_id,
                                                       std::optional<uint64_t> step) {
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<scheduler::Run> run, registry_->Get(run_id));
  absl::MutexLock save(&run->save_mu());
  std::string weights;
  std::optional<uint32_t> rank;
  {
    absl::MutexLock lock(&run->mu());
    if (step && run->dir()->Find(*step) != nullptr) {
      v1::CheckpointInfo info;
      queries_->Describe(*run, *run->dir()->Find(*step), queries_->DryPlan(*run), &info);
      return info;
    }
    weights = run->dir()->weights_dir();
    if (run->settings && run->settings->multi_rank.world_size > 1) {
      rank = run->settings->multi_rank.rank;
    }
  }
  const tier::TierSettings& s = uploader_->settings();
  CKPTD_ASSIGN_OR_RETURN(tier::FetchResult got,
                         tier::FetchStep(env_, uploader_->client(),
                                         {.prefix = uploader_->PrefixOf(run_id),
                                          .parallel = s.parallel_parts,
                                          .max_memory_bytes = s.max_memory_bytes,
                                          .rank = rank},
                                         run_id, step, weights));
  if (got.world_size > 0) {
    // A multi-rank step is committed in the store (its manifest): its part
    // here is committed too.
    CKPTD_TRY(env::WriteFileAtomically(env_,
                                       StrCat(weights, "/", storage::CommitMarkerName(got.step)),
                                       StrCat("{\"step\": ", got.step, ", \"fetched\": true}\n")));
  }
  spdlog::info("tier: fetched run={} step={} files={} bytes={} seconds={:.3f}", run_id, got.step,
               got.files.size(), got.bytes, got.seconds);
  (void)uploader_->MarkUploaded(run_id, run->run_dir(), got.step);
  absl::MutexLock lock(&run->mu());
  storage::RecoveryReport report;
  CKPTD_TRY(run->dir()->Recover(&report));
  const storage::CheckpointRecord* r = run->dir()->Find(got.step);
  if (r == nullptr) {
    return absl::InternalError(StrCat("step ", got.step, " was fetched but is not listed"));
  }
  v1::CheckpointInfo info;
  queries_->Describe(*run, *r, queries_->DryPlan(*run), &info);
  return info;
}

absl::Status Daemon::StartSharedMemory() {
  // The shm and pointer paths: arenas and attachments on their own socket,
  // saves written by per-run workers.
  arenas_ = std::make_unique<ingest::ArenaRegistry>(cfg_.shm_max_arenas);
  if (cfg_.shm_keep_last_in_memory) {
    hot_ = std::make_unique<ingest::HotCopies>(cfg_.shm_keep_in_memory_max_bytes);
  }
  queue_ = std::make_unique<scheduler::SaveQueue>(registry_.get(), cfg_.shm_max_pending_saves,
                                                  hot_.get());
  const std::string path = config::ArenaSocketPath(cfg_);
  if (path.empty()) {
    spdlog::info("shm: off ({}); trainers use the stream path",
                 cfg_.shm_enabled ? "the API listens on TCP and shm.socket is unset"
                                  : "shm.enabled = false");
    return absl::OkStatus();
  }
  arena_server_ = std::make_unique<ingest::ArenaServer>(
      std::filesystem::absolute(path).lexically_normal().string(), arenas_.get(),
      cfg_.shm_allowed_uids, hot_.get(),
      env::ConnectionCap(fd_limit_, ingest::ArenaServer::kMaxConnections));
  absl::Status st =
      PrepareListen(env_, "unix:" + arena_server_->path(), SOCK_SEQPACKET, "shm.socket");
  if (st.ok()) st = arena_server_->Start(env_);
  if (st.ok()) st = SetSocketAccess(env_, cfg_, arena_server_->path());
  if (!st.ok()) {
    return absl::Status(
        st.code(), StrCat("cannot open the arena socket ", path, " (shm.socket): ", st.message()));
  }
  // Advertised to trainers, whose working directory may differ: absolute.
  service_->EnableSharedMemory(
      arenas_.get(), queue_.get(), arena_server_->path(),
      std::chrono::milliseconds(static_cast<int64_t>(cfg_.shm_staging_timeout_seconds * 1000)));
  spdlog::info("shm: arena socket {}{}", arena_server_->path(),
               hot_ ? StrCat("; hot restore on (up to ", cfg_.shm_keep_in_memory_max_bytes,
                             " bytes in memory)")
                    : "");
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Daemon::ServerCredentials() {
  if (cfg_.listen.starts_with("unix:")) return grpc::InsecureServerCredentials();
  if (cfg_.tls_cert.empty()) {
    spdlog::warn(
        "server: {} serves plaintext TCP (server.insecure): anyone who can reach it can read and "
        "overwrite checkpoints; set server.tls_cert and server.tls_key",
        cfg_.listen);
    return grpc::InsecureServerCredentials();
  }
  auto read = [&](const char* key, const std::string& path) -> absl::StatusOr<std::string> {
    auto pem = env::ReadWholeFile(env_, path);
    if (!pem.ok())
      return absl::Status(pem.status().code(), StrCat(key, ": ", pem.status().message()));
    return pem;
  };
  grpc::SslServerCredentialsOptions ssl;
  CKPTD_ASSIGN_OR_RETURN(std::string cert, read("server.tls_cert", cfg_.tls_cert));
  CKPTD_ASSIGN_OR_RETURN(std::string key, read("server.tls_key", cfg_.tls_key));
  ssl.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
  if (!cfg_.tls_client_ca.empty()) {
    CKPTD_ASSIGN_OR_RETURN(ssl.pem_root_certs, read("server.tls_client_ca", cfg_.tls_client_ca));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  spdlog::info("server: TLS on {} ({}){}", cfg_.listen, cfg_.tls_cert,
               cfg_.tls_client_ca.empty()
                   ? ""
                   : StrCat("; client certificates signed by ", cfg_.tls_client_ca, " required"));
  return grpc::SslServerCredentials(ssl);
}

absl::Status Daemon::StartGrpc() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  auto credentials = ServerCredentials();
  if (!credentials.ok()) return credentials.status();
  builder.AddListeningPort(cfg_.listen, *credentials);
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(cfg_.max_message_bytes));
  grpc::ResourceQuota quota("ckptd");
  quota.Resize(cfg_.memory_quota_bytes);
  quota.SetMaxThreads(static_cast<int>(cfg_.max_threads));
  builder.SetResourceQuota(quota);
  builder.RegisterService(service_.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<rpc::DecodeErrorInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  server_ = builder.BuildAndStart();
  if (!server_) {
    return absl::UnavailableError(
        StrCat("cannot listen on ", cfg_.listen,
               cfg_.tls_cert.empty()
                   ? " (in use, or no permission)"
                   : " (in use, no permission, or a certificate and key gRPC cannot use)"));
  }
  if (cfg_.listen.starts_with("unix:")) {
    CKPTD_TRY(SetSocketAccess(env_, cfg_, cfg_.listen.substr(5)));
  }
  return absl::OkStatus();
}

void Daemon::StartTimers() {
  // Retention also runs on a timer (besides after every commit), so policy
  // changes and clock-based rules take effect without new saves.
  const auto period = std::chrono::milliseconds(
      std::max<int64_t>(1000, static_cast<int64_t>(cfg_.retention_interval_seconds * 1000)));
  threads_.emplace_back([this, period] {
    Every(period, [&] {
      for (const auto& run : registry_->List()) (void)registry_->RunRetention(*run, false);
    });
  });
  // Idle runs give their settings' memory back (RunRegistry::UnloadIdle).
  if (const double idle = cfg_.unload_idle_runs_seconds; idle > 0) {
    const auto every =
        std::chrono::milliseconds(static_cast<int64_t>(std::clamp(idle / 4, 0.25, 60.0) * 1000));
    threads_.emplace_back([this, idle, every] {
      Every(every, [&] {
        for (const std::string& id : registry_->UnloadIdle(idle, NowSeconds())) {
          spdlog::info("run settings unloaded run={} idle_s>={} (reloaded by its next save)", id,
                       idle);
        }
      });
    });
  }
  // Readiness, from the one source /readyz uses: the gRPC health service
  // and systemd's STATUS= follow it (checked every second, logged on change).
  threads_.emplace_back([this] {
    bool was = true;  // as READY=1 and the health service start out
    Every(std::chrono::seconds(1), [&] {
      const query::Readiness r = queries_->Ready();
      if (uploader_) {
        metrics::Metrics::Get().SetTier(static_cast<int64_t>(uploader_->queue_depth()),
                                        uploader_->health().healthy);
      }
      if (was == r.ready) return;
      server_->GetHealthCheckService()->SetServingStatus(r.ready);
      Notify(r.ready ? StrCat("STATUS=serving ", registry_->List().size(), " runs on ", cfg_.listen)
                     : StrCat("STATUS=not ready: ", r.Summary()));
      spdlog::log(r.ready ? spdlog::level::info : spdlog::level::warn, "readiness: {}",
                  r.Summary());
      was = r.ready;
    });
  });
  // Watchdog: under systemd with WatchdogSec=, ping at half the interval,
  // after checking that the run registry still answers (not deadlocked).
  uint64_t watchdog_usec = 0;
  if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
    spdlog::info("systemd watchdog: pinging every {}ms", watchdog_usec / 2000);
    threads_.emplace_back([this, watchdog_usec] {
      Every(std::chrono::microseconds(watchdog_usec / 2), [&] {
        (void)registry_->List();
        Notify("WATCHDOG=1");
      });
    });
  }
}

template <typename Period, typename F>
void Daemon::Every(Period period, F tick) {
  absl::MutexLock lock(&timer_mu_);
  while (true) {
    const absl::Time deadline = absl::Now() + absl::FromChrono(period);
    while (!timer_stop_ && !timer_cv_.WaitWithDeadline(&timer_mu_, deadline)) {
    }
    if (timer_stop_) return;
    timer_mu_.Unlock();
    tick();
    timer_mu_.Lock();
  }
}

void Daemon::Reload(const config::Config& fresh) {
  registry_->SetDefaults(fresh.schedule, fresh.retention, fresh.disk_guard);
  spdlog::set_level(spdlog::level::from_str(fresh.log_level));
  spdlog::info("reloaded: schedule {}; retention {}; log level {}",
               policy::Describe(fresh.schedule), policy::Describe(fresh.retention),
               fresh.log_level);
}

void Daemon::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const auto deadline = std::chrono::duration<double>(cfg_.shutdown_deadline_seconds);
  spdlog::info("stopping: no new calls; in-flight saves have {:g}s",
               cfg_.shutdown_deadline_seconds);
  Notify("STOPPING=1\nSTATUS=draining in-flight saves");
  service_->BeginShutdown();
  if (coordinator_) coordinator_->Stop();
  if (uploader_) uploader_->Stop();  // what is left resumes at the next start
  if (http_server_) http_server_->Stop();
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline));
  server_->Wait();
  if (arena_server_) {
    arena_server_->Stop();
    (void)env_->RemoveFile(arena_server_->path());  // a clean stop leaves no socket behind
  }
  if (cfg_.listen.starts_with("unix:")) (void)env_->RemoveFile(cfg_.listen.substr(5));
  if (size_t n = queue_->pending(); n > 0) {
    spdlog::info("stopping: writing {} accepted shared-memory saves", n);
  }
  queue_->Drain();
  {
    absl::MutexLock lock(&timer_mu_);
    timer_stop_ = true;
  }
  timer_cv_.SignalAll();
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  spdlog::info("stopped");
}

Daemon::~Daemon() {
  if (server_ != nullptr) Stop();
}

}  // namespace ckptd::app
