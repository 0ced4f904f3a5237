// This node's side of peer replication ([peers]): every step a trainer's
// save makes durable here, memory or disk, goes to each of this node's k
// peers (PutReplica), and a node that lost its own steps gets them back
// from a peer (ListReplicas, GetReplica).
//
// Sending never blocks the trainer or the commit: OnTierCommitted opens the
// step's files (so eviction cannot take them) and leaves them in a queue of
// one step per run per peer; a newer step of the run replaces a queued one
// (counted as superseded). One thread per peer sends, each replica with a
// deadline; a failed send is retried with backoff until it succeeds or a
// newer step replaces it, so a partitioned or slow peer lags (reported as
// ckptd_peer_lag_steps{run,peer}) and catches up when it heals. Thread-safe.
#pragma once

#include <grpcpp/security/credentials.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "ckptd/v1/ckptd.grpc.pb.h"
#include "daemon/env/env.h"
#include "daemon/scheduler/run_registry.h"

namespace ckptd::replication {

struct PeerOptions {
  std::string self;                // this node's name in the ring
  std::vector<std::string> peers;  // HOST:PORT of each peer this node sends to
  // Every node's address (peers to ask for a lost step: all but self).
  std::vector<std::string> nodes;
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string token;                    // sent as "authorization: Bearer <token>"; "" = none
  double bytes_per_second_floor = 8e6;  // a send's deadline: 30 s + its bytes at this rate
};

// A step of a run that a peer holds.
struct PeerStep {
  uint64_t step = 0;
  std::string peer;
};

// A multi-rank run's part: which one.
struct RankPart {
  uint32_t rank = 0;
  uint32_t world_size = 0;
};

class PeerSender final : public scheduler::TierObserver {
 public:
  PeerSender(env::Env* env, PeerOptions options);
  ~PeerSender() override;  // Stop()
  void Start();
  void Stop();

  void OnTierCommitted(scheduler::Run& run, const storage::CheckpointRecord& record,
                       scheduler::Tier tier) override;
  const std::string& self() const { return options_.self; }

  // Every replica of `run_id` the peers hold (of rank `part->rank`'s part
  // with `part`, else of whole steps), newest step first; `notes` gets one
  // line per peer that could not be asked or holds none.
  std::vector<PeerStep> Holders(const std::string& run_id, std::optional<RankPart> part,
                                std::vector<std::string>* notes) const;
  // Brings `step` of `run_id` (rank `part`'s part with `part`) from `peer`
  // into `weights_dir` (temps, every digest checked, the training state then
  // the model file renamed in). Returns the step. DATA_LOSS when the
  // replica fails a check (nothing is left).
  absl::StatusOr<uint64_t> Fetch(const std::string& peer, const std::string& run_id,
                                 std::optional<RankPart> part, uint64_t step,
                                 const std::string& weights_dir) const;

 private:
  struct Job {
    std::string run_id;
    uint64_t step = 0;
    uint32_t rank = 0;
    uint32_t world_size = 0;                              // > 0: a multi-rank run's part
    std::vector<std::pair<std::string, uint64_t>> files;  // names and sizes, model first
    std::vector<std::shared_ptr<env::RandomAccessFile>> open;
    double not_before = 0;  // backoff after a failed send
    int failures = 0;
  };
  struct Peer {  // fixed once started
    std::string address;
    std::unique_ptr<v1::Peers::Stub> stub;
    std::thread worker;
  };
  void Work(Peer* peer);
  absl::Status Send(Peer& peer, const Job& job);
  void UpdateLag(const Peer& peer, const std::string& run_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::unique_ptr<v1::Peers::Stub> StubFor(const std::string& address) const;
  void Authorize(grpc::ClientContext* ctx) const;

  env::Env* env_;
  const PeerOptions options_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<std::unique_ptr<Peer>> peers_;
  // By peer address, then run: the step waiting to be sent (the newest),
  // and the newest step the peer acknowledged.
  std::map<std::string, std::map<std::string, Job>> queued_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::map<std::string, uint64_t>> acked_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> newest_ ABSL_GUARDED_BY(mu_);  // newest step committed, per run
  // The send in flight to each peer, cancelled by Stop (a stopped peer
  // must not hold the daemon's shutdown for a send's whole deadline).
  std::map<std::string, grpc::ClientContext*> active_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ckptd::replication
