// The gRPC service (ckptd.v1.Checkpointd). WatchRun runs on the callback
// API (watch_streams.h: a held watch costs no thread); every other method
// on the synchronous API, each call on a server thread bounded by the
// ResourceQuota's thread limit. Save writes each received chunk before
// reading the next, so a save's memory is one message plus the files' write
// buffers whatever its size (gRPC flow control holds the sender back).
// Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string_view>

#include "ckptd/v1/ckptd.grpc.pb.h"
#include "daemon/ingest/arena_registry.h"
#include "daemon/query/queries.h"
#include "daemon/replication/peer_sender.h"
#include "daemon/replication/replicator.h"
#include "daemon/rpc/requests.h"
#include "daemon/rpc/stall_watchdog.h"
#include "daemon/rpc/tokens.h"
#include "daemon/rpc/watch_streams.h"
#include "daemon/scheduler/memory_budget.h"
#include "daemon/scheduler/run_lifecycle.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_pipeline.h"

namespace ckptd::rpc {

// A counted place among at most `limit` concurrent streams (RAII).
class StreamSlot {
 public:
  StreamSlot(std::atomic<uint32_t>* count, uint32_t limit) : count_(count) {
    ok_ = count_->fetch_add(1) < limit;
  }
  ~StreamSlot() { count_->fetch_sub(1); }
  StreamSlot(const StreamSlot&) = delete;
  StreamSlot& operator=(const StreamSlot&) = delete;
  bool ok() const { return ok_; }

 private:
  std::atomic<uint32_t>* count_;
  bool ok_ = false;
};

// WatchRun is served on the callback API (held watches cost no thread; see
// watch_streams.h); every other method on the synchronous one.
// Long-lived streams per TCP peer host (all ports together), so that one
// host cannot take every stream slot. Unix-socket peers are not told apart:
// the socket's file permissions decide who connects at all.
class PeerStreams {
 public:
  // The peer's host from gRPC's peer string ("ipv4:10.0.0.7:5123" ->
  // "ipv4:10.0.0.7"); "" for a Unix-socket peer.
  static std::string HostOf(std::string_view peer);
  // Takes a place for `host` unless it already holds `limit` (0 = no limit).
  bool Acquire(const std::string& host, uint32_t limit) ABSL_LOCKS_EXCLUDED(mu_);
  void Release(const std::string& host) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Mutex mu_;
  std::map<std::string, uint32_t> held_ ABSL_GUARDED_BY(mu_);
};

// A stream's place among its peer host's (RAII); ok() for Unix-socket peers.
class PeerSlot {
 public:
  PeerSlot(PeerStreams* streams, std::string_view peer, uint32_t limit)
      : streams_(streams), host_(PeerStreams::HostOf(peer)) {
    ok_ = host_.empty() || streams_->Acquire(host_, limit);
    if (host_.empty() || !ok_) streams_ = nullptr;
  }
  ~PeerSlot() {
    if (streams_ != nullptr) streams_->Release(host_);
  }
  PeerSlot(const PeerSlot&) = delete;
  PeerSlot& operator=(const PeerSlot&) = delete;
  bool ok() const { return ok_; }
  const std::string& host() const { return host_; }

 private:
  PeerStreams* streams_;
  std::string host_;
  bool ok_ = false;
};

class CheckpointdService final
    : public v1::Checkpointd::WithCallbackMethod_WatchRun<v1::Checkpointd::Service> {
 public:
  // The domain objects it converts to and from, all outliving it;
  // `replicator` is null without an object-storage tier. Save streams idle
  // for longer than save_idle_timeout are cancelled.
  struct Parts {
    scheduler::RunRegistry* registry;
    scheduler::RunLifecycle* lifecycle;
    const RequestCodec* codec;
    scheduler::MemoryBudget* budget;
    const query::Queries* queries;
    replication::Replicator* replicator = nullptr;
    replication::PeerSender* peers = nullptr;
  };
  CheckpointdService(Parts parts, std::chrono::milliseconds save_idle_timeout)
      : registry_(parts.registry),
        lifecycle_(parts.lifecycle),
        codec_(parts.codec),
        budget_(parts.budget),
        queries_(parts.queries),
        replicator_(parts.replicator),
        peers_(parts.peers),
        pipeline_(parts.registry, nullptr),
        watchdog_(save_idle_timeout) {
    InstallRawSaveHandlers();
  }

  // Turns on SaveShared/SavePointers/WaitSaved: arenas and attachments on
  // `socket`, saves written by `queue`; a progressive save whose counter
  // stalls for `staging_timeout` fails. Without it they answer UNAVAILABLE.
  // Call before serving.
  void EnableSharedMemory(ingest::ArenaRegistry* arenas, scheduler::SaveQueue* queue,
                          std::string socket, std::chrono::milliseconds staging_timeout) {
    arenas_ = arenas;
    pipeline_ = scheduler::SavePipeline(registry_, queue);
    arena_socket_ = std::move(socket);
    staging_timeout_ = staging_timeout;
  }

  void SetLimits(RequestLimits limits) { limits_ = limits; }  // before serving
  // Every call then needs a bearer token covering its run (server.tokens_file).
  void SetTokens(std::shared_ptr<const TokenTable> tokens) { tokens_ = std::move(tokens); }

  // Ends WatchRun streams promptly so shutdown is not held up by dashboards.
  void BeginShutdown();

  grpc::Status OpenRun(grpc::ServerContext* ctx, const v1::OpenRunRequest* req,
                       v1::OpenRunResponse* resp) override;
  grpc::Status ShouldSave(grpc::ServerContext* ctx, const v1::ShouldSaveRequest* req,
                          v1::ShouldSaveResponse* resp) override;
  grpc::Status SaveShared(grpc::ServerContext* ctx, const v1::SaveSharedRequest* req,
                          v1::SaveSharedResponse* resp) override;
  grpc::Status SavePointers(grpc::ServerContext* ctx, const v1::SavePointersRequest* req,
                            v1::SaveSharedResponse* resp) override;
  grpc::Status WaitSaved(grpc::ServerContext* ctx, const v1::WaitSavedRequest* req,
                         v1::WaitSavedResponse* resp) override;
  grpc::Status ListRuns(grpc::ServerContext* ctx, const v1::ListRunsRequest* req,
                        v1::ListRunsResponse* resp) override;
  grpc::Status GetRun(grpc::ServerContext* ctx, const v1::GetRunRequest* req,
                      v1::RunInfo* resp) override;
  grpc::Status ListCheckpoints(grpc::ServerContext* ctx, const v1::ListCheckpointsRequest* req,
                               v1::ListCheckpointsResponse* resp) override;
  grpc::Status GetCheckpoint(grpc::ServerContext* ctx, const v1::GetCheckpointRequest* req,
                             v1::CheckpointDetail* resp) override;
  grpc::Status GetLineage(grpc::ServerContext* ctx, const v1::LineageRequest* req,
                          v1::Lineage* resp) override;
  grpc::ServerWriteReactor<v1::RunEvent>* WatchRun(grpc::CallbackServerContext* ctx,
                                                   const v1::WatchRunRequest* req) override;
  grpc::Status Pin(grpc::ServerContext* ctx, const v1::PinRequest* req,
                   v1::CheckpointInfo* resp) override;
  grpc::Status Unpin(grpc::ServerContext* ctx, const v1::UnpinRequest* req,
                     v1::CheckpointInfo* resp) override;
  grpc::Status PlanRetention(grpc::ServerContext* ctx, const v1::RetentionRequest* req,
                             v1::RetentionPlan* resp) override;
  grpc::Status ApplyRetention(grpc::ServerContext* ctx, const v1::RetentionRequest* req,
                              v1::RetentionPlan* resp) override;
  grpc::Status FetchRemote(grpc::ServerContext* ctx, const v1::FetchRemoteRequest* req,
                           v1::CheckpointInfo* resp) override;

 private:
  // Hot restore: where the run's newest checkpoint lies in memory, if the daemon keeps it.
  void AddInMemoryCopy(v1::RunInfo* info) const;
  grpc::Status Retention(const v1::RetentionRequest& req, bool dry, v1::RetentionPlan* resp);
  // Save and CloseRun, reading their messages raw: the constructor installs
  // them as the two methods' handlers (InstallRawSaveHandlers).
  grpc::Status SaveRaw(grpc::ServerContext* ctx, grpc::ServerReader<grpc::ByteBuffer>* reader,
                       v1::SaveResponse* resp);
  grpc::Status CloseRunRaw(grpc::ServerContext* ctx, grpc::ServerReader<grpc::ByteBuffer>* reader,
                           v1::CloseRunResponse* resp);
  void InstallRawSaveHandlers();
  // What Save and CloseRun hold once their header is read and admitted.
  struct SaveStreamStart {
    std::unique_ptr<StreamSlot> slot;
    std::unique_ptr<PeerSlot> peer_slot;
    scheduler::MemoryBudget::Charge charge;
    scheduler::SaveParams params;
  };
  // The start both save streams share: a stream slot, the header, its token,
  // its budget charge and its parameters.
  grpc::Status StartSaveStream(grpc::ServerContext* ctx,
                               grpc::ServerReader<grpc::ByteBuffer>* reader,
                               scheduler::SaveKind kind, SaveStreamStart* out);
  // With tokens: whether the call's bearer token covers `run_id` (nullopt:
  // the call names no run, and any known token will do). OK without tokens.
  grpc::Status Authorize(const grpc::ServerContextBase* ctx,
                         std::optional<std::string_view> run_id) const;
  static std::optional<std::string_view> Authorization(const grpc::ServerContextBase* ctx);

  scheduler::RunRegistry* registry_;
  scheduler::RunLifecycle* lifecycle_;
  const RequestCodec* codec_;
  scheduler::MemoryBudget* budget_;
  const query::Queries* queries_;
  replication::Replicator* replicator_;
  replication::PeerSender* peers_;
  scheduler::SavePipeline pipeline_;
  std::atomic<bool> stopping_{false};
  StallWatchdog watchdog_;
  ingest::ArenaRegistry* arenas_ = nullptr;
  std::string arena_socket_;
  std::chrono::milliseconds staging_timeout_{30000};
  RequestLimits limits_;
  std::shared_ptr<const TokenTable> tokens_;
  // A request's encoded size charged to the budget for as long as the call runs.
  // A save request (its header `h`): what parsing and planning it costs,
  // measured (SaveHeaderCharge), not only its wire size.
  absl::Status Charge(const google::protobuf::Message& m, const v1::SaveHeader& h,
                      const std::string& what, scheduler::MemoryBudget::Charge* charge) {
    return budget_->Reserve(SaveHeaderCharge(h, m.ByteSizeLong()), what, charge);
  }
  std::atomic<uint32_t> watch_streams_{0};
  PeerStreams peer_streams_;
  WatchStreams watches_;  // after what its reactors use; destroyed once the server is down
  std::atomic<uint32_t> save_streams_{0};
  std::atomic<uint32_t> waiting_calls_{0};
};

}  // namespace ckptd::rpc
