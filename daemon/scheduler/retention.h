// The retention executor: turns a run's catalog, pins and in-flight steps
// into the pure planner's inputs, and deletes what the plan drops, checking
// the protections again right before each delete. Also prunes for the disk
// guard. Callers hold the run's lock.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/policy/retention.h"
#include "daemon/storage/pins.h"
#include "daemon/storage/run_dir.h"

namespace ckptd::scheduler {

enum class DryRun { kNo, kYes };

struct RetentionOutcome {
  std::vector<policy::RetentionDecision> plan;
  std::vector<uint64_t> deleted;
};

policy::RetentionInputs RetentionInputsFor(const storage::Catalog& catalog,
                                           std::optional<uint64_t> latest_step,
                                           const std::map<uint64_t, std::string>& pins,
                                           const policy::RetentionPolicy& policy,
                                           const std::set<uint64_t>& in_flight, double now_s);

// Plans and (unless dry) applies retention. Stops at the first failed delete
// and returns its error; what was deleted before stays deleted.
absl::StatusOr<RetentionOutcome> ApplyRetention(storage::RunDir* dir, const storage::PinStore& pins,
                                                const policy::RetentionPolicy& policy,
                                                const std::set<uint64_t>& in_flight, double now_s,
                                                DryRun dry);

// Frees at least `needed` bytes by deleting the retention plan's own victims
// and, with OnFull::kPruneOldest, then the oldest unprotected checkpoints.
// Deletes nothing and returns RESOURCE_EXHAUSTED (with what it could free)
// when all of them together would not be enough.
absl::StatusOr<std::vector<uint64_t>> PruneForSpace(
    storage::RunDir* dir, const storage::PinStore& pins, const policy::RetentionPolicy& policy,
    const std::set<uint64_t>& in_flight, double now_s, uint64_t needed, policy::OnFull on_full);

}  // namespace ckptd::scheduler
