// Every rule that decides whether a save is accepted, in one place, for
// every path (ShouldSave, stream saves, queued shm and pointer saves, the
// final snapshot): the run takes saves, the schedule, final_on_close, the
// final snapshot replacing its step, at least one tensor, and the order
// against queued and committed steps. Pure: reads the run's state only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/policy/schedule.h"
#include "daemon/scheduler/run_registry.h"

namespace ckptd::scheduler {

enum class SaveKind { kSave, kClose };

struct AdmitRequest {
  uint64_t step = 0;
  SaveKind kind = SaveKind::kSave;
  bool force = false;
  bool overwrite = false;
  // Tensors in the save; nullopt for ShouldSave's question (no tensors yet).
  std::optional<size_t> tensor_count;
};

struct Admission {
  bool due = false;  // false: skipped, nothing is written
  std::string reason;
  bool overwrite = false;  // the request's, or set for a final snapshot at a committed step
  // kMemory: a memory step (schedule.memory_every_steps, not a disk step),
  // written to the run's memory-tier directory. A memory step may replace
  // one the memory tier holds (a step retaken after a restore).
  Tier tier = Tier::kDisk;
};

// Decides for `run` (its mu held) under `schedule` (the run's effective one).
// `queued_last`: the highest step accepted but not yet written, if any.
// A step the disk schedule does not want is a memory step when
// policy::IsMemoryDue says so against the newest disk or queued step.
// Errors: FAILED_PRECONDITION (run not opened since the daemon started, or
// finished; a step not above a queued one; below the last without
// overwrite), ALREADY_EXISTS (committed step without overwrite),
// INVALID_ARGUMENT (no tensors).
absl::StatusOr<Admission> Admit(const Run& run, const policy::Schedule& schedule,
                                const AdmitRequest& request, std::optional<uint64_t> queued_last,
                                double now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);

}  // namespace ckptd::scheduler
