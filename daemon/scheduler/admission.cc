// The admission rules.
#include "daemon/scheduler/admission.h"

#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::scheduler {

absl::StatusOr<Admission> Admit(const Run& run, const policy::Schedule& schedule,
                                const AdmitRequest& r, std::optional<uint64_t> queued_last,
                                double now) {
  if (!run.settings_) {
    return absl::FailedPreconditionError(
        StrCat("run '", run.id(), "' has not been opened since the daemon started; call OpenRun"));
  }
  if (run.state_ == RunState::kFinished) {
    return absl::FailedPreconditionError(
        StrCat("run '", run.id(), "' is finished; call OpenRun to resume it"));
  }
  Admission a{.due = true, .overwrite = r.overwrite};
  if (r.kind == SaveKind::kClose) {
    if (!schedule.final_on_close) return Admission{.reason = "final_on_close is off for this run"};
    a.reason = "final snapshot";
    // The final snapshot is authoritative: at a step the schedule already
    // saved, it replaces that checkpoint instead of failing the close.
    if (!queued_last && run.dir()->Find(r.step) != nullptr) a.overwrite = true;
  } else if (r.force) {
    a.reason = "forced";
  } else {
    const std::optional<uint64_t> last = queued_last ? queued_last : run.dir()->latest_step();
    policy::Decision d = policy::IsDue(schedule, {last, run.reference_time_s_}, r.step, now);
    if (!d.due && schedule.memory_every_steps > 0) {
      // Memory steps count from the newest disk step this rank saved: for a
      // multi-rank run that may be a part still waiting for its verdict,
      // and every rank must count from the same step to take the same
      // memory steps.
      std::optional<uint64_t> base = last;
      if (const storage::Catalog& pending = run.dir()->pending();
          !queued_last && !pending.empty() && (!base || pending.rbegin()->first > *base)) {
        base = pending.rbegin()->first;
      }
      policy::Decision m = policy::IsMemoryDue(schedule, base, r.step);
      if (!m.due) return Admission{.reason = d.reason};
      a.tier = Tier::kMemory;
      a.overwrite = true;
      d = std::move(m);
    }
    if (!d.due) return Admission{.reason = d.reason};
    a.reason = d.reason;
  }
  if (r.tensor_count && *r.tensor_count == 0) {
    return absl::InvalidArgumentError("tensors: a save needs at least one tensor");
  }
  if (queued_last) {
    if (r.step <= *queued_last) {
      return absl::FailedPreconditionError(
          StrCat("step ", r.step, " is not above step ", *queued_last,
                 ", which is still queued; a run's steps are saved in increasing order (to "
                 "overwrite, WaitSaved for the queued save first)"));
    }
    return a;
  }
  if (a.tier == Tier::kDisk) {
    CKPTD_TRY(run.dir()->CheckCanSave(
        r.step, a.overwrite ? storage::Overwrite::kYes : storage::Overwrite::kNo));
  }
  return a;
}

}  // namespace ckptd::scheduler
