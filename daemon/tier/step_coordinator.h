// Multi-rank steps: every node's daemon learns each of its parts' verdict
// from the object store, and the run's coordinator (one daemon per run,
// rank 0's by default) gives it.
//
// A rank's part is durable on its node (staged, invisible), then uploaded
// and reported (tier/remote_keys.h: parts/step_N/rank-R.json, written by
// the Uploader). The coordinator lists the reports of the steps not
// decided yet, feeds them to policy::DecideStep, and writes either the
// step's manifest (every rank's files and tensors) and then `latest`, or
// step_N.failed.json with the reason; then it deletes the reports (and,
// for a failed step, the files they name). Every node checks its pending
// parts against the store: a manifest commits the part locally (its commit
// marker), a failed record deletes it. A node that cannot reach the store
// keeps its parts pending (invisible) until it can; a restarted node finds
// its pending parts on disk and asks again. The coordinator's verdict is
// final: it never writes a manifest for a step with a failed record, nor
// the other way round (it checks for both before deciding, and it alone
// writes them).
//
// The reports and verdicts are small objects, polled every `poll_s`: per
// pending part two HEADs per node, per undecided step one LIST of the run's
// parts/ prefix (only undecided steps' reports live there) at the
// coordinator. Thread-safe; one thread.
#pragma once

#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/policy/step_commit.h"
#include "daemon/tier/uploader.h"

namespace ckptd::tier {

// A multi-rank run as this node sees it.
struct MultiRankRun {
  std::string run_id;
  std::string run_dir;
  uint32_t rank = 0;
  uint32_t world_size = 0;
  bool coordinator = false;
  double part_timeout_s = 600;
  std::set<uint64_t> pending;  // this node's parts waiting for their verdict
};

// This node, as the coordinator sees it (the replication layer answers):
// its multi-rank runs, and where the verdicts on its parts go.
class MultiRankNode {
 public:
  virtual ~MultiRankNode() = default;
  virtual std::vector<MultiRankRun> MultiRankRuns() = 0;
  // Every rank's part is durable: commit this node's part of the step.
  virtual void CommitPart(const std::string& run_id, uint64_t step) = 0;
  // The step failed: delete this node's part.
  virtual void AbortPart(const std::string& run_id, uint64_t step, const std::string& reason) = 0;
};

class StepCoordinator {
 public:
  static constexpr double kQuietPollS = 5;
  // `uploader` (its store and keys) and `node` must outlive the coordinator.
  StepCoordinator(Uploader* uploader, MultiRankNode* node, double poll_s);
  ~StepCoordinator();
  StepCoordinator(const StepCoordinator&) = delete;
  StepCoordinator& operator=(const StepCoordinator&) = delete;

  void Start();
  void Stop();
  // One round: decide what this node coordinates, then apply the verdicts
  // on this node's parts. Errors are logged; the next round tries again.
  void PollOnce();
  // Wakes the thread now; `run_id`'s reports are listed at once even if
  // it was quiet (a part of it was just staged or reported here).
  void Poke(const std::string& run_id = "");

 private:
  void Loop();
  absl::Status Coordinate(const MultiRankRun& run);
  absl::Status Decide(const MultiRankRun& run, uint64_t step,
                      const std::vector<std::pair<std::string, std::string>>& reports);
  absl::Status Commit(const MultiRankRun& run, uint64_t step, const std::vector<PartReport>& parts);
  absl::Status Abort(const MultiRankRun& run, uint64_t step, const std::string& reason,
                     const std::vector<uint32_t>& missing, const std::vector<PartReport>& parts);
  absl::Status ApplyVerdicts(const MultiRankRun& run);
  // Points `latest` at `step` unless it names a newer one already.
  absl::Status AdvanceLatest(const RunKeys& keys, uint64_t step);
  // Deletes step's reports (and for a failed step the files they name).
  absl::Status Cleanup(const std::vector<std::string>& report_keys,
                       const std::vector<PartReport>& parts, bool with_files);

  Uploader* uploader_;
  ObjectStore& store_;
  MultiRankNode* node_;
  double poll_s_;

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool poked_ ABSL_GUARDED_BY(mu_) = false;
  std::set<std::string> poked_runs_ ABSL_GUARDED_BY(mu_);
  absl::CondVar cv_;
  std::thread worker_;
  // Only the worker thread (PollOnce) touches these.
  std::map<std::pair<std::string, uint64_t>, double> first_seen_;      // (run, step) -> when
  std::map<std::string, std::pair<std::string, PartReport>> reports_;  // key -> {ETag, parsed}
  std::string last_error_;  // logged once until it changes
  // A coordinated run whose parts/ listing was empty is listed again only
  // after kQuietPollS (or a Poke naming it): idle and finished runs cost
  // one LIST per kQuietPollS, not per poll.
  std::map<std::string, double> quiet_until_;
};

}  // namespace ckptd::tier
