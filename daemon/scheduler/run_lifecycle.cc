// Opening, storing, restoring and reloading runs' settings.
#include "daemon/scheduler/run_lifecycle.h"

#include <spdlog/spdlog.h>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/scheduler/save_session.h"
#include "daemon/storage/roots.h"

namespace ckptd::scheduler {

RunLifecycle::RunLifecycle(RunRegistry* registry, const SettingsCodec* codec, MemoryBudget* budget,
                           LifecycleOptions options)
    : registry_(registry), codec_(codec), budget_(budget), options_(options) {
  registry_->SetSettingsStore(this);
}

absl::Status RunLifecycle::Check(const DeclaredSettings& d) const {
  const RunSettings& s = d.settings;
  if (d.tier_options && !s.tier.local_only && !options_.tier_configured) {
    return absl::FailedPreconditionError(
        "tier: this daemon has no object-storage tier ([tier.s3] endpoint is unset), so the "
        "run's checkpoints would not be copied; configure [tier.s3] or drop the tier options");
  }
  if (s.schedule && (s.schedule->memory_every_steps > 0 || s.schedule->memory_auto)) {
    if (registry_->memory_tier().root.empty()) {
      return absl::FailedPreconditionError(
          "schedule.memory_every_steps: this daemon has no memory tier ([memory] root is "
          "unset); configure it, or drop memory_every_steps");
    }
    if (s.multi_rank.world_size > 1 && s.schedule->memory_auto) {
      return absl::InvalidArgumentError(
          "schedule.memory_auto: each rank would measure and pick its own interval, but a "
          "multi-rank memory step is only worth restoring when every rank took it; give "
          "memory_every_steps (the same on every rank) instead");
    }
  }
  if (s.multi_rank.world_size > 1) {
    if (!options_.tier_configured || s.tier.local_only) {
      return absl::FailedPreconditionError(
          "multi_rank: the ranks' daemons agree on each step through the object-storage tier, "
          "and this run has none ([tier.s3] endpoint is unset, or tier.local_only); configure "
          "[tier.s3] on every node");
    }
    if (!s.exports.empty()) {
      return absl::InvalidArgumentError(
          "exports: a multi-rank run's parts are not exported one by one; drop the exports and "
          "export the step from its parts (ckptctl export FIRST_PART, or ckptctl merge)");
    }
  }
  if (d.model_tensors.empty() || s.exports.empty()) return absl::OkStatus();
  gguf::Metadata md = s.model_metadata;
  for (const auto& [key, value] : s.provenance.entries()) md.Set(key, value);
  std::vector<std::shared_ptr<const exports::ExportPlan>> plans;
  return PlanExports(s.exports, d.model_tensors, md, registry_->facts().version, &plans);
}

absl::StatusOr<std::shared_ptr<Run>> RunLifecycle::Open(const std::string& run_id,
                                                        const std::string& run_dir,
                                                        DeclaredSettings declared,
                                                        std::string_view stored, bool* resumed) {
  CKPTD_TRY(Check(declared));
  const uint64_t charge = declared.charge;
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<Run> run,
                         registry_->Open(run_id, run_dir, std::move(declared.settings), resumed));
  // Converted and kept: from here the settings are charged to the run.
  (void)budget_->ReserveForRun(run_id, charge, /*force=*/true);
  // The settings survive a restart (RestoreAll). A run whose settings
  // cannot be stored is not opened.
  if (absl::Status st = storage::WriteRunSettings(registry_->env(), run->run_dir(), stored);
      !st.ok()) {
    return absl::Status(st.code(), StrCat("storing the run's settings: ", st.message()));
  }
  return run;
}

absl::StatusOr<DeclaredSettings> RunLifecycle::ReadStored(const Run& run) const {
  const std::string path = StrCat(run.run_dir(), "/", storage::kRunSettingsFile);
  CKPTD_ASSIGN_OR_RETURN(std::string text,
                         storage::ReadRunSettings(registry_->env(), run.run_dir()));
  absl::StatusOr<DeclaredSettings> d = codec_->Decode(text);
  if (d.ok()) {
    if (absl::Status st = Check(*d); !st.ok()) d = st;
  }
  if (!d.ok()) return absl::Status(d.status().code(), StrCat(path, ": ", d.status().message()));
  return d;
}

std::vector<std::string> RunLifecycle::RestoreAll() {
  std::vector<std::string> warnings;
  for (const std::shared_ptr<Run>& run : registry_->List()) {
    absl::StatusOr<DeclaredSettings> d = ReadStored(*run);
    if (absl::IsNotFound(d.status())) continue;  // never opened with settings: defaults
    if (!d.ok()) {
      warnings.push_back(StrCat(
          "run '", run->id(), "': the stored settings cannot be used (the ",
          "run keeps the daemon's defaults until it is opened again): ", d.status().message()));
      continue;
    }
    const uint64_t charge = d->charge;
    registry_->Restore(*run, std::move(d->settings));
    if (absl::Status st = budget_->ReserveForRun(run->id(), charge, /*force=*/true); !st.ok()) {
      warnings.push_back(StrCat("run '", run->id(), "': ", st.message()));
    }
  }
  return warnings;
}

absl::StatusOr<RunSettings> RunLifecycle::Reload(const Run& run) {
  CKPTD_ASSIGN_OR_RETURN(DeclaredSettings d, ReadStored(run));
  (void)budget_->ReserveForRun(run.id(), d.charge, /*force=*/true);
  return std::move(d.settings);
}

void RunLifecycle::Unloaded(const Run& run) { budget_->ReleaseRun(run.id()); }

}  // namespace ckptd::scheduler
