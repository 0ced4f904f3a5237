// The daemon's read side, for every transport: runs, checkpoint listings
// and details, retention's verdicts, events as API messages, and readiness
// (one source for /readyz, the gRPC health service and systemd's STATUS=).
// It reads runs through their snapshots (never their locks) and the object
// store through the replication layer. Answers are v1 API messages (gRPC
// sends them, HTTP renders them as JSON); errors are absl::Status naming
// what was wrong. Thread-safe.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/v1/ckptd.pb.h"
#include "daemon/policy/retention.h"
#include "daemon/replication/replicator.h"
#include "daemon/scheduler/run_registry.h"

namespace ckptd::query {

struct Readiness {
  bool ready = true;
  std::vector<std::string> reasons;  // why not, one line each
  std::string Summary() const;       // "ready" or the reasons joined
};

class Queries {
 public:
  // `roots` are the configured roots, for readiness (disk guard,
  // reachability); `replicator` is null when the object-storage tier is off.
  Queries(scheduler::RunRegistry* registry, std::vector<std::string> roots,
          replication::Replicator* replicator = nullptr)
      : registry_(registry), roots_(std::move(roots)), replicator_(replicator) {}

  v1::RunInfo RunInfo(const scheduler::RunSnapshot& run) const;
  v1::ListRunsResponse ListRuns() const;
  absl::StatusOr<v1::RunInfo> GetRun(const std::string& run_id) const;
  // INVALID_ARGUMENT names page_size or page_token.
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(
      const v1::ListCheckpointsRequest& req) const;
  absl::StatusOr<v1::CheckpointDetail> GetCheckpoint(const std::string& run_id,
                                                     uint64_t step) const;
  // One checkpoint as listed (record, latest, pin, retention's verdict,
  // upload state); NOT_FOUND for a step the run does not have.
  absl::StatusOr<v1::CheckpointInfo> DescribeCheckpoint(const std::string& run_id,
                                                        uint64_t step) const;

  // GetLineage: INVALID_ARGUMENT for both a uuid and a run, NOT_FOUND for
  // an unknown one.
  absl::StatusOr<v1::Lineage> Lineage(const std::string& uuid, const std::string& run_id) const;

  Readiness Ready() const;
  static v1::RunEvent EventToProto(const scheduler::Event& e);
  bool has_tier() const { return replicator_ != nullptr; }

 private:
  // A memory-tier step as listed.
  void DescribeMemory(const scheduler::RunSnapshot& run, const storage::CheckpointRecord& r,
                      v1::CheckpointInfo* out) const;
  void DescribeAny(const scheduler::RunSnapshot& run, const storage::CheckpointRecord& r,
                   scheduler::Tier tier, v1::CheckpointInfo* out) const;
  // A checkpoint as listed: record, latest, pin and retention's verdict.
  void Describe(const scheduler::RunSnapshot& run, const storage::CheckpointRecord& r,
                const std::vector<policy::RetentionDecision>& plan, v1::CheckpointInfo* out) const;

  scheduler::RunRegistry* registry_;
  std::vector<std::string> roots_;
  replication::Replicator* replicator_;
};

}  // namespace ckptd::query
