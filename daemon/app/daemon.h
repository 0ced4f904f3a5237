// ckptd's lifecycle: DaemonMain parses the command line and config, sets up
// logging, then runs a Daemon until SIGTERM/SIGINT (drain, exit 0), with
// SIGHUP reloading the policies. main() only forwards here.
#pragma once

#include <grpcpp/server.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/config/config.h"
#include "daemon/env/env.h"
#include "daemon/http/server.h"
#include "daemon/ingest/arena_registry.h"
#include "daemon/ingest/arena_server.h"
#include "daemon/query/queries.h"
#include "daemon/rpc/service.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_queue.h"
#include "daemon/tier/step_coordinator.h"
#include "daemon/tier/uploader.h"

namespace ckptd::app {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;  // could not start (socket in use, ...)
inline constexpr int kExitConfig = 2;   // bad config or command line

int DaemonMain(int argc, char** argv);

// A running daemon: the registry (recovered at start), the arena socket,
// the gRPC and HTTP servers, and the retention, readiness and watchdog
// timers. Members are declared in start order and stopped in reverse.
class Daemon {
 public:
  // Starts everything `cfg` describes on `env` (which must outlive it).
  // On failure *exit_code says which: kExitConfig (roots) or kExitRuntime.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const config::Config& cfg, env::Env* env,
                                                       int* exit_code);
  // SIGHUP: new default schedule, retention, disk guard and log level.
  void Reload(const config::Config& fresh);
  // Stops taking calls, lets in-flight saves finish within the shutdown
  // deadline, writes every accepted queued save, joins the timers.
  void Stop();
  ~Daemon();  // Stop()

 private:
  Daemon(const config::Config& cfg, env::Env* env) : cfg_(cfg), env_(env) {}
  absl::Status StartServing();
  absl::StatusOr<v1::CheckpointInfo> FetchRemote(const std::string& run_id,
                                                 std::optional<uint64_t> step);
  absl::Status StartTier();
  // Multi-rank runs: the verdicts on this node's parts, and the steps this
  // node coordinates (tier/step_coordinator.h).
  void StartCoordinator();
  absl::Status StartSharedMemory();
  absl::Status StartGrpc();
  // TLS for a HOST:PORT listen (server.tls_*), else plaintext (Unix socket, or server.insecure).
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials();
  void StartTimers();
  // Runs `tick` every `period` until Stop().
  template <typename Period, typename F>
  void Every(Period period, F tick);

  // flock on each root's ckptd-root.lock: one daemon per root.
  absl::Status LockRoots();

  config::Config cfg_;
  env::Env* env_;
  std::vector<std::string> roots_;
  std::vector<std::unique_ptr<env::FileLock>> root_locks_;  // held while the daemon lives
  std::unique_ptr<scheduler::RunRegistry> registry_;
  std::unique_ptr<query::Queries> queries_;
  std::unique_ptr<rpc::CheckpointdService> service_;
  std::unique_ptr<ingest::ArenaRegistry> arenas_;
  std::unique_ptr<ingest::HotCopies> hot_;  // destroyed after queue_, whose workers fill it
  std::unique_ptr<scheduler::SaveQueue> queue_;
  std::unique_ptr<ingest::ArenaServer> arena_server_;
  uint64_t fd_limit_ = 1024;  // RLIMIT_NOFILE after raising it
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<http::HttpServer> http_server_;
  std::unique_ptr<tier::Uploader> uploader_;            // [tier.s3]; null when off
  std::unique_ptr<tier::StepCoordinator> coordinator_;  // multi-rank verdicts; with uploader_
  absl::Mutex timer_mu_;
  absl::CondVar timer_cv_;
  bool timer_stop_ ABSL_GUARDED_BY(timer_mu_) = false;
  std::vector<std::thread> threads_;
  bool stopped_ = false;
};

}  // namespace ckptd::app
