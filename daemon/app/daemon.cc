// The composition root: each layer constructed, started in order, stopped
// in reverse.
#include "daemon/app/daemon.h"

#include <fmt/ranges.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "daemon/app/listeners.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/env/fd_limit.h"
#include "daemon/env/fd_passing.h"
#include "daemon/metrics/metrics.h"
#include "daemon/policy/peers.h"
#include "daemon/rpc/decode_errors.h"
#include "daemon/storage/file_names.h"
#include "daemon/tier/store_factory.h"

namespace ckptd::app {
namespace {

void Notify(const std::string& state) { env::NotifyServiceManager(state); }

std::string Hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

template <typename D>
std::chrono::microseconds Micros(D d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const config::Config& cfg, env::Env* env,
                                                      int* exit_code) {
  std::unique_ptr<Daemon> d(new Daemon(cfg, env));
  *exit_code = kExitConfig;
  auto roots = PrepareRoots(env, cfg);
  if (!roots.ok()) return roots.status();
  d->roots_ = *roots;
  auto memory_root = PrepareMemoryRoot(env, cfg);
  if (!memory_root.ok()) return memory_root.status();
  d->memory_root_ = *memory_root;
  *exit_code = kExitRuntime;
  CKPTD_TRY(d->StartServing());
  *exit_code = kExitOk;
  return d;
}

absl::Status Daemon::LockRoots() {
  std::vector<std::string> locked = roots_;
  if (!memory_root_.empty()) locked.push_back(memory_root_);
  for (const std::string& root : locked) {
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
  // Before recovery touches a root: one daemon per root and per socket.
  CKPTD_TRY(LockRoots());
  if (absl::Status st = PrepareListen(env_, cfg_.listen, SOCK_STREAM, "server.listen"); !st.ok()) {
    return absl::Status(st.code(), StrCat("cannot prepare ", cfg_.listen, ": ", st.message()));
  }
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
  CKPTD_TRY(StartRuns());
  CKPTD_TRY(StartReplication());
  CKPTD_TRY(StartPeers());
  queries_ = std::make_unique<query::Queries>(registry_.get(), roots_, replicator_.get());
  CKPTD_TRY(StartService());
  CKPTD_TRY(StartSharedMemory());
  CKPTD_TRY(StartGrpc());
  if (absl::Status st = StartHttp(); !st.ok()) {
    server_->Shutdown();
    return st;
  }
  spdlog::info("ready: listening on {}", listening_);
  Notify(StrCat("READY=1\nSTATUS=serving ", registry_->List().size(), " runs on ", listening_));
  StartTimers();
  return absl::OkStatus();
}

// The runs under the roots, recovered, with the settings they were last
// opened with.
absl::Status Daemon::StartRuns() {
  const config::Config& cfg = cfg_;
  registry_ = std::make_unique<scheduler::RunRegistry>(
      env_, roots_, cfg.schedule,
      scheduler::DaemonFacts{
          .version = CKPTD_VERSION,
          .host = Hostname(),
          .alignment = cfg.alignment,
          .direct_io = cfg.direct_io == "off" ? env::DirectIo::kOff : env::DirectIo::kAuto,
          .uuid_scheme = cfg.uuid_scheme == "gguf-hash" ? gguf::UuidScheme::kGgufHash
                                                        : gguf::UuidScheme::kContent,
          .export_profiles_dir = cfg.export_profiles_dir,
          .share_unchanged = cfg.share_unchanged},
      cfg.retention, cfg.disk_guard);
  registry_->SetMemoryTier(
      {.root = memory_root_, .keep_last = cfg.memory_keep_last, .max_bytes = cfg.memory_max_bytes});
  for (const std::string& w : registry_->Scan()) spdlog::warn("startup: {}", w);
  spdlog::info("ckptd {} starting: roots={} memory_tier={} runs={} listen={}", CKPTD_VERSION,
               fmt::format("{}", fmt::join(roots_, ",")),
               memory_root_.empty() ? "off" : memory_root_, registry_->List().size(), cfg.listen);
  budget_ = std::make_unique<scheduler::MemoryBudget>(cfg.memory_budget_bytes);
  codec_ = std::make_unique<rpc::RequestCodec>(env_, cfg.export_profiles_dir);
  lifecycle_ = std::make_unique<scheduler::RunLifecycle>(
      registry_.get(), codec_.get(), budget_.get(),
      scheduler::LifecycleOptions{.tier_configured = !cfg.s3_endpoint.empty()});
  for (const std::string& w : lifecycle_->RestoreAll()) spdlog::warn("startup: {}", w);
  return absl::OkStatus();
}

// [tier.s3]: the store, and what each run still has to upload.
absl::Status Daemon::StartReplication() {
  const config::Config& cfg = cfg_;
  if (cfg.s3_endpoint.empty()) return absl::OkStatus();
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<tier::ObjectStore> store, tier::OpenStore(env_, cfg));
  replication::ReplicationOptions options{
      .tier = {.prefix = cfg.s3_prefix,
               .part_size = cfg.s3_part_size,
               .parallel_parts = static_cast<int>(cfg.s3_parallel_parts),
               .max_memory_bytes = cfg.s3_max_memory_bytes,
               .remote_retention = cfg.s3_retention_same,
               .part_copy = cfg.s3_part_copy}};
  if (const char* pause = std::getenv("CKPTD_TEST_TIER_PAUSE_S")) {
    options.tier.test_pause_s = std::atof(pause);
  }
  if (const char* p = std::getenv("CKPTD_TEST_MULTI_RANK_POLL_S")) {
    options.coordinator_poll_s = std::atof(p);
  }
  replicator_ =
      std::make_unique<replication::Replicator>(env_, registry_.get(), std::move(store), options);
  replicator_->Start();
  spdlog::info("tier: copying checkpoints to {}/{}{}{} (parts of {} bytes, {} in flight)",
               cfg.s3_endpoint, cfg.s3_bucket, cfg.s3_prefix.empty() ? "" : "/", cfg.s3_prefix,
               cfg.s3_part_size, cfg.s3_parallel_parts);
  return absl::OkStatus();
}

// [peers]: replicas of peers' steps held in the memory tier, taken on
// their own listener; this node's steps sent to the next nodes in the ring.
absl::Status Daemon::StartPeers() {
  const config::Config& cfg = cfg_;
  if (cfg.peers_listen.empty()) return absl::OkStatus();
  CKPTD_ASSIGN_OR_RETURN(replicas_, replication::ReplicaStore::Open(
                                        env_, {.root = StrCat(memory_root_, "/", kReplicaDir),
                                               .max_bytes = cfg.peers_max_bytes,
                                               .keep_last = cfg.peers_keep_last}));
  std::string token;
  if (!cfg.peers_token_file.empty()) {
    auto t = rpc::LoadSingleToken(env_, cfg.peers_token_file);
    if (!t.ok()) {
      return absl::Status(t.status().code(), StrCat("peers.token_file: ", t.status().message()));
    }
    token = *t;
  }
  CKPTD_ASSIGN_OR_RETURN(PeerCredentials creds, LoadPeerCredentials(env_, cfg));
  peer_service_ = std::make_unique<rpc::PeerService>(replicas_.get(), token);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(cfg.peers_listen, creds.server);
  builder.SetMaxReceiveMessageSize(4 << 20);
  builder.SetMaxSendMessageSize(4 << 20);
  builder.RegisterService(peer_service_.get());
  peer_poller_ = std::make_unique<rpc::ServerPoller>(builder);
  peer_server_ = builder.BuildAndStart();
  if (!peer_server_) {
    return absl::UnavailableError(
        StrCat("cannot listen on ", cfg.peers_listen, " (peers.listen): in use, or no permission"));
  }
  peer_poller_->Start();
  const std::string self = cfg.peers_self.empty() ? cfg.peers_listen : cfg.peers_self;
  std::vector<std::string> ring;
  if (!cfg.peers_nodes.empty()) {
    CKPTD_ASSIGN_OR_RETURN(ring, policy::RingPeers(cfg.peers_nodes, self, cfg.peers_replicas));
  }
  peers_ = std::make_unique<replication::PeerSender>(
      env_, replication::PeerOptions{.self = self,
                                     .peers = ring,
                                     .nodes = cfg.peers_nodes,
                                     .credentials = creds.channel,
                                     .token = token});
  registry_->SetTierObserver(peers_.get());
  peers_->Start();
  spdlog::info("peers: taking replicas on {} (up to {} bytes, {}); sending each step to {}",
               cfg.peers_listen, cfg.peers_max_bytes, cfg.peers_insecure ? "plaintext" : "mTLS",
               ring.empty() ? std::string("no peer") : fmt::format("{}", fmt::join(ring, ", ")));
  return absl::OkStatus();
}

absl::Status Daemon::StartService() {
  const config::Config& cfg = cfg_;
  service_ = std::make_unique<rpc::CheckpointdService>(
      rpc::CheckpointdService::Parts{.registry = registry_.get(),
                                     .lifecycle = lifecycle_.get(),
                                     .codec = codec_.get(),
                                     .budget = budget_.get(),
                                     .queries = queries_.get(),
                                     .replicator = replicator_.get(),
                                     .peers = peers_.get()},
      std::chrono::milliseconds(static_cast<int64_t>(cfg.save_idle_timeout_seconds * 1000)));
  service_->SetLimits({.max_tensors = cfg.max_tensors_per_save,
                       .max_metadata_bytes = cfg.max_metadata_bytes,
                       .max_watch_streams = config::EffectiveMaxWatchStreams(cfg),
                       .max_save_streams = config::EffectiveMaxSaveStreams(cfg),
                       .max_waiting_calls = config::EffectiveMaxWaitingCalls(cfg),
                       .watch_max_seconds = cfg.watch_max_seconds,
                       .memory_budget_bytes = cfg.memory_budget_bytes,
                       .max_streams_per_peer = cfg.max_streams_per_peer});
  if (cfg.tokens_file.empty()) return absl::OkStatus();
  auto tokens = rpc::TokenTable::Load(env_, cfg.tokens_file);
  if (!tokens.ok()) {
    return absl::Status(tokens.status().code(),
                        StrCat("server.tokens_file: ", tokens.status().message()));
  }
  spdlog::info("auth: {} bearer tokens from {}", tokens->size(), cfg.tokens_file);
  service_->SetTokens(std::make_shared<const rpc::TokenTable>(std::move(*tokens)));
  return absl::OkStatus();
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

absl::Status Daemon::StartGrpc() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  auto credentials = ServerCredentials(env_, cfg_);
  if (!credentials.ok()) return credentials.status();
  int port = 0;  // what a TCP address's port 0 became
  builder.AddListeningPort(cfg_.listen, *credentials, &port);
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
  poller_ = std::make_unique<rpc::ServerPoller>(builder);
  server_ = builder.BuildAndStart();
  if (!server_) {
    return absl::UnavailableError(
        StrCat("cannot listen on ", cfg_.listen,
               cfg_.tls_cert.empty()
                   ? " (in use, or no permission)"
                   : " (in use, no permission, or a certificate and key gRPC cannot use)"));
  }
  poller_->Start();
  listening_ = cfg_.listen;
  if (cfg_.listen.starts_with("unix:")) {
    CKPTD_TRY(SetSocketAccess(env_, cfg_, cfg_.listen.substr(5)));
  } else if (cfg_.listen.ends_with(":0") && port > 0) {
    listening_ = StrCat(cfg_.listen.substr(0, cfg_.listen.size() - 1), port);
  }
  return absl::OkStatus();
}

absl::Status Daemon::StartHttp() {
  const config::Config& cfg = cfg_;
  if (cfg.http_listen.empty()) return absl::OkStatus();
  std::string http_token;
  if (!cfg.http_token_file.empty()) {
    auto token = rpc::LoadSingleToken(env_, cfg.http_token_file);
    if (!token.ok()) {
      return absl::Status(token.status().code(),
                          StrCat("http.token_file: ", token.status().message()));
    }
    http_token = std::move(*token);
  }
  http::HttpOptions http_options{.listen = cfg.http_listen,
                                 .max_connections_per_peer = cfg.http_max_connections_per_peer,
                                 .header_timeout_seconds = cfg.http_header_timeout_seconds,
                                 .idle_timeout_seconds = cfg.http_idle_timeout_seconds,
                                 .roots = roots_,
                                 .token = http_token,
                                 .tls_cert = cfg.http_tls_cert,
                                 .tls_key = cfg.http_tls_key};
  http_server_ =
      std::make_unique<http::HttpServer>(std::move(http_options), queries_.get(), registry_.get());
  CKPTD_TRY(http_server_->Start());
  spdlog::info("http: listening on {}:{} ({}; status page, /v1, /metrics)",
               cfg.http_listen.substr(0, cfg.http_listen.rfind(':')), http_server_->port(),
               cfg.http_tls_cert.empty() ? "plain HTTP" : "HTTPS only");
  return absl::OkStatus();
}

void Daemon::StartTimers() {
  // Retention also runs on a timer (besides after every commit), so policy
  // changes and clock-based rules take effect without new saves.
  timers_.Every(Micros(std::chrono::milliseconds(std::max<int64_t>(
                    1000, static_cast<int64_t>(cfg_.retention_interval_seconds * 1000)))),
                [this] {
                  for (const auto& run : registry_->List()) {
                    (void)registry_->RunRetention(*run, false);
                  }
                });
  // Idle runs give their settings' memory back (RunRegistry::UnloadIdle).
  if (const double idle = cfg_.unload_idle_runs_seconds; idle > 0) {
    timers_.Every(
        Micros(std::chrono::duration<double>(std::clamp(idle / 4, 0.25, 60.0))), [this, idle] {
          for (const std::string& id : registry_->UnloadIdle(idle, NowSeconds())) {
            spdlog::info("run settings unloaded run={} idle_s>={} (reloaded by its next save)", id,
                         idle);
          }
        });
  }
  // The scrubber: every committed file re-read and checked, rate-capped.
  if (cfg_.scrub_bytes_per_second > 0) {
    scrubber_ = std::make_unique<scheduler::Scrubber>(
        env_, registry_.get(), cfg_.scrub_bytes_per_second, cfg_.scrub_min_age_seconds);
    timers_.Every(std::chrono::seconds(1), [this] { scrubber_->Tick(); });
  }
  // Readiness, from the one source /readyz uses: the gRPC health service
  // follows it (checked every second, logged on change); systemd's STATUS=
  // follows the daemon: runs, the last commit, the current problem.
  timers_.Every(std::chrono::seconds(1), [this, was = true, status = std::string()]() mutable {
    const query::Readiness r = queries_->Ready();
    std::optional<std::string> unhealthy;
    if (replicator_) {
      unhealthy = replicator_->Unhealthy();
      metrics::Metrics::Get().SetTier(static_cast<int64_t>(replicator_->queue_depth()),
                                      !unhealthy.has_value());
    }
    if (std::string now = StatusLine(r, unhealthy); now != status) {
      Notify("STATUS=" + now);
      status = std::move(now);
    }
    if (was == r.ready) return;
    server_->GetHealthCheckService()->SetServingStatus(r.ready);
    spdlog::log(r.ready ? spdlog::level::info : spdlog::level::warn, "readiness: {}", r.Summary());
    was = r.ready;
  });
  // Watchdog: under systemd with WatchdogSec=, ping at half the interval,
  // after checking that the run registry still answers (not deadlocked).
  uint64_t watchdog_usec = 0;
  if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
    spdlog::info("systemd watchdog: pinging every {}ms", watchdog_usec / 2000);
    timers_.Every(std::chrono::microseconds(watchdog_usec / 2), [this] {
      (void)registry_->List();
      Notify("WATCHDOG=1");
    });
  }
}

std::string Daemon::StatusLine(const query::Readiness& ready,
                               const std::optional<std::string>& unhealthy) const {
  if (!ready.ready) return StrCat("not ready: ", ready.Summary());
  size_t runs = 0, open = 0;
  std::optional<std::pair<double, std::string>> last;  // time, "run=R step=N"
  for (const auto& run : registry_->List()) {
    const scheduler::RunSnapshot snap = run->Snapshot();
    ++runs;
    open += snap.state == scheduler::RunState::kOpen ? 1 : 0;
    if (!snap.latest_step) continue;
    const double t = snap.Find(*snap.latest_step)->time_s;
    if (!last || t > last->first) {
      last = std::pair(t, StrCat("run=", snap.id, " step=", *snap.latest_step));
    }
  }
  std::string out = StrCat("serving ", runs, " runs (", open, " open) on ", listening_);
  if (last) StrAppend(&out, "; last commit ", last->second, " at ", FormatUtc(last->first));
  if (unhealthy) StrAppend(&out, "; object store: ", *unhealthy);
  return out;
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
  // The daemon stops within the deadline whatever a handler is doing (a
  // write stuck on a dead disk, a loop a client found): past it, the process
  // exits as a SIGKILL would leave it, which recovery is built for. Saves
  // not committed by then were never acknowledged.
  absl::Notification stopped;
  std::thread watchdog([&stopped, seconds = cfg_.shutdown_deadline_seconds] {
    if (stopped.WaitForNotificationWithTimeout(absl::Seconds(seconds))) return;
    spdlog::error(
        "stopping: still busy {:g}s after SIGTERM (server.shutdown_deadline_seconds); exiting "
        "now: uncommitted saves are lost as in a crash, and the next start recovers",
        seconds);
    spdlog::shutdown();
    std::_Exit(3);
  });
  service_->BeginShutdown();
  if (replicator_) replicator_->Stop();  // what is left resumes at the next start
  if (peer_server_) {
    peer_server_->Shutdown(std::chrono::system_clock::now());
    peer_poller_->Stop();
  }
  if (peers_) peers_->Stop();  // unsent replicas go: the next commit sends again
  if (http_server_) http_server_->Stop();
  // Calls still running are cancelled a little before the deadline, so
  // they can remove their temp files before the watchdog would exit.
  const auto cancel_at = deadline - std::min(std::chrono::duration<double>(5), deadline * 0.2);
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(cancel_at));
  server_->Wait();
  poller_->Stop();
  if (arena_server_) {
    arena_server_->Stop();
    (void)env_->RemoveFile(arena_server_->path());  // a clean stop leaves no socket behind
  }
  if (cfg_.listen.starts_with("unix:")) (void)env_->RemoveFile(cfg_.listen.substr(5));
  if (size_t n = queue_->pending(); n > 0) {
    spdlog::info("stopping: writing {} accepted shared-memory saves", n);
  }
  queue_->Drain();
  timers_.Stop();
  stopped.Notify();
  watchdog.join();
  spdlog::info("stopped");
}

Daemon::~Daemon() {
  if (server_ != nullptr) Stop();
}

}  // namespace ckptd::app
