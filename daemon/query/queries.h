// The daemon's read side, for every transport: runs, checkpoint listings
// and details, retention's verdicts, events as API messages, and readiness
// (one source for /readyz, the gRPC health service and systemd's STATUS=).
// Answers are v1 API messages (gRPC sends them, HTTP renders them as JSON);
// errors are absl::Status naming what was wrong. Thread-safe.
#pragma once

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/v1/ckptd.pb.h"
#include "daemon/policy/retention.h"
#include "daemon/scheduler/run_registry.h"

namespace ckptd::query {

struct Readiness {
  bool ready = true;
  std::vector<std::string> reasons;  // why not, one line each
  std::string Summary() const;       // "ready" or the reasons joined
};

class Queries {
 public:
  // `roots` are the configured roots, for readiness (disk guard, reachability).
  Queries(scheduler::RunRegistry* registry, std::vector<std::string> roots)
      : registry_(registry), roots_(std::move(roots)) {}

  v1::RunInfo RunInfo(scheduler::Run& run) const ABSL_LOCKS_EXCLUDED(run.mu());
  v1::ListRunsResponse ListRuns() const;
  absl::StatusOr<v1::RunInfo> GetRun(const std::string& run_id) const;
  // INVALID_ARGUMENT names page_size or page_token.
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(
      const v1::ListCheckpointsRequest& req) const;
  absl::StatusOr<v1::CheckpointDetail> GetCheckpoint(const std::string& run_id,
                                                     uint64_t step) const;

  // A checkpoint as listed: record, latest, pin and retention's verdict.
  void Describe(scheduler::Run& run, const storage::CheckpointRecord& r,
                const std::vector<policy::RetentionDecision>& plan, v1::CheckpointInfo* out) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu());
  // What retention would do now (nothing is deleted).
  std::vector<policy::RetentionDecision> DryPlan(scheduler::Run& run) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu());

  // GetLineage: INVALID_ARGUMENT for both a uuid and a run, NOT_FOUND for
  // an unknown one.
  absl::StatusOr<v1::Lineage> Lineage(const std::string& uuid, const std::string& run_id) const;

  Readiness Ready() const;
  static v1::RunEvent EventToProto(const scheduler::Event& e);

  // The object-storage tier, when it is on: a checkpoint's upload state,
  // and why the tier is unhealthy (nullopt: healthy). Set before serving.
  struct Tier {
    std::function<std::string(const std::string& run_id, uint64_t step)> upload_state;
    std::function<std::optional<std::string>()> unhealthy;
    // PlanRetention / ApplyRetention with `remote`.
    std::function<absl::StatusOr<v1::RetentionPlan>(const std::string& run_id, bool apply)>
        remote_retention;
    // ListCheckpoints with include_remote: the steps with a manifest in the
    // store, and a remote-only step described from its manifest.
    std::function<absl::StatusOr<std::set<uint64_t>>(const std::string& run_id)> remote_steps;
    std::function<absl::Status(const std::string& run_id, uint64_t step, v1::CheckpointInfo* out)>
        describe_remote;
    // FetchRemote.
    std::function<absl::StatusOr<v1::CheckpointInfo>(const std::string& run_id,
                                                     std::optional<uint64_t> step)>
        fetch_remote;
  };
  const Tier& tier() const { return tier_; }
  void SetTier(Tier tier) { tier_ = std::move(tier); }

 private:
  scheduler::RunRegistry* registry_;
  Tier tier_;
  std::vector<std::string> roots_;
};

}  // namespace ckptd::query
