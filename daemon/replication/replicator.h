// The replication layer: what happens to a run's checkpoints beyond this
// node's disk. It sits above scheduler/ (runs, commits) and tier/ (the
// object store) and joins them through their interfaces, so neither knows
// the other:
//   - every committed save is queued for upload (scheduler::CommitObserver),
//     held from local retention until it is in the store, and retention
//     runs again once it is (tier::UploadObserver);
//   - a multi-rank run's staged part is uploaded and reported, and the
//     coordinator's verdicts commit or abort it here (tier::MultiRankNode);
//   - the tier asks runs' prefixes and retention rules (tier::TierRuns);
//   - a step is fetched back from the store and adopted by the run
//     (Fetch), and the read side asks what the store holds.
// Errors a client waits on say "object store: ..." first, so an
// UNAVAILABLE from the store is not taken for the daemon being down.
// Thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/tier/object_store.h"
#include "daemon/tier/restore_agreement.h"
#include "daemon/tier/step_coordinator.h"
#include "daemon/tier/uploader.h"

namespace ckptd::replication {

struct ReplicationOptions {
  tier::TierSettings tier;  // the daemon's [tier.s3] (prefix, parts, remote retention)
  double coordinator_poll_s = 1.0;
};

class Replicator final : public scheduler::CommitObserver,
                         public tier::TierRuns,
                         public tier::UploadObserver,
                         public tier::MultiRankNode {
 public:
  // `registry` must outlive the replicator; it observes the registry's
  // commits from Start() on.
  Replicator(env::Env* env, scheduler::RunRegistry* registry,
             std::unique_ptr<tier::ObjectStore> store, ReplicationOptions options);
  ~Replicator() override;

  // Before serving: what each run still has to upload (its state file,
  // steps committed while the daemon was down), then the upload and
  // coordinator threads.
  void Start();
  // What is left resumes at the next start.
  void Stop();

  // FetchRemote: the step (latest's when nullopt) from the store into the
  // run, verified and committed by its marker; an already committed step
  // is returned as it is.
  absl::StatusOr<storage::CheckpointRecord> Fetch(const std::string& run_id,
                                                  std::optional<uint64_t> step);
  // Retention over the run's remote copies; `apply` deletes what it drops.
  absl::StatusOr<tier::RemotePlan> PlanRemote(const std::string& run_id, bool apply);

  // The read side. "uploaded", "uploading", "queued", "failed: ...", or "".
  std::string UploadState(const std::string& run_id, uint64_t step) const;
  // Why the store is unhealthy; nullopt when it is healthy.
  std::optional<std::string> Unhealthy() const;
  size_t queue_depth() const;
  absl::StatusOr<std::set<uint64_t>> RemoteSteps(const std::string& run_id);
  // A multi-rank run's ranks agree, through the store, on the step they
  // restore (tier/restore_agreement.h); `request.run_id` names the run.
  absl::StatusOr<tier::AgreedRestore> AgreeOnRestore(const tier::RestoreAgreementRequest& request,
                                                     const std::function<bool()>& cancelled);
  absl::StatusOr<tier::StepManifest> RemoteManifest(const std::string& run_id, uint64_t step);
  std::string UrlOf(const std::string& key) const { return store_->UrlOf(key); }

  // scheduler::CommitObserver
  void OnCommitted(scheduler::Run& run, const storage::CheckpointRecord& record,
                   scheduler::CommitSource source) override;
  void OnStaged(scheduler::Run& run, const storage::CheckpointRecord& record) override;
  // A damaged step the store holds is fetched back (self-heal).
  void OnQuarantined(scheduler::Run& run, uint64_t step) override;
  // An intact local file of an uploaded step: the store's copy is checked
  // (its manifest, the object's size, then every digest through ranged
  // GETs) and, when missing or damaged, the step is uploaded again.
  uint64_t OnIntact(scheduler::Run& run, uint64_t step, const std::string& path) override;
  // tier::TierRuns
  std::optional<std::string> PrefixOf(const std::string& run_id) const override;
  std::optional<tier::RemoteRules> RulesOf(const std::string& run_id) const override;
  // tier::UploadObserver
  void OnUploadEvent(const tier::UploadEvent& e) override;
  // tier::MultiRankNode
  std::vector<tier::MultiRankRun> MultiRankRuns() override;
  void CommitPart(const std::string& run_id, uint64_t step) override;
  void AbortPart(const std::string& run_id, uint64_t step, const std::string& reason) override;

 private:
  // Queues what each run's state file says is left, at Start().
  void RecoverUploads();
  // Why the store's copy of `name` of `step` cannot be trusted ("" when it
  // can, or when the store did not answer: a later pass asks again); adds
  // the bytes read to `*read`.
  std::string RemoteDamage(const std::string& run_id, uint64_t step, const std::string& name,
                           uint64_t* read);

  env::Env* env_;
  scheduler::RunRegistry* registry_;
  const std::unique_ptr<tier::ObjectStore> store_;
  const ReplicationOptions options_;
  tier::Uploader uploader_;                             // uses store_
  std::unique_ptr<tier::StepCoordinator> coordinator_;  // after uploader_, whose events poke it
};

}  // namespace ckptd::replication
