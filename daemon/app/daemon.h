// ckptd's composition root: DaemonMain (daemon_main.cc) parses the command
// line and config, sets up logging, then runs a Daemon until SIGTERM/SIGINT
// (drain, exit 0), with SIGHUP reloading the policies. main() only forwards
// here. The Daemon constructs each layer, starts them in order and stops
// them in reverse; every reaction between layers is an observer the
// reacting layer owns (replication/ observes the scheduler's commits).
#pragma once

#include <grpcpp/server.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/app/periodic.h"
#include "daemon/config/config.h"
#include "daemon/env/env.h"
#include "daemon/http/server.h"
#include "daemon/ingest/arena_registry.h"
#include "daemon/ingest/arena_server.h"
#include "daemon/query/queries.h"
#include "daemon/replication/peer_sender.h"
#include "daemon/replication/replica_store.h"
#include "daemon/replication/replicator.h"
#include "daemon/rpc/peer_service.h"
#include "daemon/rpc/requests.h"
#include "daemon/rpc/server_poller.h"
#include "daemon/rpc/service.h"
#include "daemon/scheduler/memory_budget.h"
#include "daemon/scheduler/run_lifecycle.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_queue.h"
#include "daemon/scheduler/scrubber.h"

namespace ckptd::app {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;  // could not start (socket in use, ...)
inline constexpr int kExitConfig = 2;   // bad config or command line

int DaemonMain(int argc, char** argv);

// A running daemon. Members are declared in start order and destroyed in
// reverse.
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
  // flock on each root's ckptd-root.lock: one daemon per root.
  absl::Status LockRoots();
  absl::Status StartRuns();
  absl::Status StartReplication();  // [tier.s3]
  absl::Status StartPeers();        // [peers]
  absl::Status StartService();
  absl::Status StartSharedMemory();
  absl::Status StartGrpc();
  absl::Status StartHttp();
  void StartTimers();
  // systemd's STATUS=: runs, the newest commit of any run, the current
  // problem (not ready, or the object store failing).
  std::string StatusLine(const query::Readiness& ready,
                         const std::optional<std::string>& unhealthy) const;

  config::Config cfg_;
  env::Env* env_;
  std::string memory_root_;  // the memory tier's, resolved; "" = off
  std::vector<std::string> roots_;
  std::vector<std::unique_ptr<env::FileLock>> root_locks_;  // held while the daemon lives
  std::unique_ptr<scheduler::RunRegistry> registry_;
  std::unique_ptr<scheduler::MemoryBudget> budget_;
  std::unique_ptr<rpc::RequestCodec> codec_;
  std::unique_ptr<scheduler::RunLifecycle> lifecycle_;
  std::unique_ptr<replication::Replicator> replicator_;  // null without [tier.s3]
  // [peers]: replicas held for peers and their listener; this node's sender.
  std::unique_ptr<replication::ReplicaStore> replicas_;
  std::unique_ptr<rpc::PeerService> peer_service_;
  std::unique_ptr<rpc::ServerPoller> peer_poller_;  // before peer_server_: stops after it
  std::unique_ptr<grpc::Server> peer_server_;
  std::unique_ptr<replication::PeerSender> peers_;
  std::unique_ptr<query::Queries> queries_;
  std::unique_ptr<rpc::CheckpointdService> service_;
  std::unique_ptr<ingest::ArenaRegistry> arenas_;
  std::unique_ptr<ingest::HotCopies> hot_;  // destroyed after queue_, whose workers fill it
  std::unique_ptr<scheduler::SaveQueue> queue_;
  std::unique_ptr<ingest::ArenaServer> arena_server_;
  uint64_t fd_limit_ = 1024;  // RLIMIT_NOFILE after raising it
  // Declared before server_, so that it stops after it.
  std::unique_ptr<rpc::ServerPoller> poller_;
  std::unique_ptr<grpc::Server> server_;
  std::string listening_;  // the address served: cfg_.listen with port 0 made real
  std::unique_ptr<http::HttpServer> http_server_;
  std::unique_ptr<scheduler::Scrubber> scrubber_;  // ticked by timers_ (storage.scrub_*)
  Periodic timers_;
  bool stopped_ = false;
};

}  // namespace ckptd::app
