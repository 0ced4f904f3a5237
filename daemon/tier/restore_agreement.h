// The ranks of a multi-rank run agree, through the object store, on the
// step they restore after a restart (the decision is policy::AgreeOnStep).
//
// Each rank's daemon puts one report per restart, `attempt` (a string the
// trainer gives, the same on every rank of one restart, new for the next),
// at <run>/restores/<attempt>/rank-R.json: the steps it can restore its
// part of. A report is written once (If-None-Match where the store checks
// it) and never changed, so every rank decides from the same reports and
// takes the same step; a rank asking again in the same attempt finds its
// report and gets the same answer. Then the rank waits, listing the
// attempt's reports every `poll_s`, until every rank's is there or the
// deadline passes. No leader, no second listener: the store every node
// already reaches is where they meet, as for the step verdicts
// (step_coordinator.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/policy/restore_agreement.h"
#include "daemon/tier/object_store.h"
#include "daemon/tier/remote_keys.h"
#include "daemon/tier/remote_records.h"

namespace ckptd::tier {

struct RestoreAgreementRequest {
  std::string run_id;
  std::string attempt;
  policy::AvailabilityReport mine;
  // The newest step this rank saved itself (memory or disk), if any: a
  // report of this attempt already in the store that lists nothing as new
  // means the attempt id is being reused after training went on.
  std::optional<uint64_t> newest_local;
  std::string node;  // recorded in the report
  double timeout_s = 300;
  double poll_s = 0.3;
};

struct AgreedRestore {
  uint64_t step = 0;
  std::vector<RestoreReport> reports;  // by rank
  bool reported_before = false;        // this rank's report was there already
};

// OK with the step; NOT_FOUND with policy::kNoStepAnywhere in its message when no
// rank holds any step (a new run); DEADLINE_EXCEEDED naming the ranks that did not report;
// NOT_FOUND when no step is held by every rank (saying what each holds);
// FAILED_PRECONDITION for reports that cannot be one run's ranks, or an
// attempt id reused; INVALID_ARGUMENT for a bad attempt id; CANCELLED when
// `cancelled` says so; the store's errors as they come.
absl::StatusOr<AgreedRestore> AgreeOnRestore(ObjectStore& store, const RunKeys& keys,
                                             const RestoreAgreementRequest& request,
                                             const std::function<bool()>& cancelled);

}  // namespace ckptd::tier
