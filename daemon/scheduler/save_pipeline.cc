// Entry points of the save path.
#include "daemon/scheduler/save_pipeline.h"

#include <spdlog/spdlog.h>

#include "daemon/base/status.h"

namespace ckptd::scheduler {

absl::StatusOr<Admission> SavePipeline::ShouldSave(const std::string& run_id, uint64_t step) const {
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<Run> run, registry_->Get(run_id));
  const std::optional<uint64_t> queued = queue_ ? queue_->LastQueued(run_id) : std::nullopt;
  absl::MutexLock lock(&run->mu());
  run->MarkActive(NowSeconds());
  run->SawStep(step);
  registry_->ObserveStep(*run, step, run->last_active_s_);
  return Admit(*run, registry_->EffectiveSchedule(*run), {.step = step}, queued,
               run->last_active_s_);
}

absl::StatusOr<SaveOutcome> SavePipeline::SaveNow(SaveParams params,
                                                  ingest::TensorSource& source) const {
  const std::string run_id = params.run_id;
  CKPTD_ASSIGN_OR_RETURN(auto session,
                         SaveSession::Begin(registry_, std::move(params), source.transport()));
  auto outcome = session->Run(source);
  // A newer checkpoint not from an arena: the run's in-memory copy is stale.
  if (outcome.ok() && !outcome->skipped) DropHotCopy(run_id);
  return outcome;
}

void SavePipeline::RecordStall(const std::string& run_id, double seconds) const {
  if (auto run = registry_->Get(run_id); run.ok()) registry_->RecordStall(**run, seconds);
}

void SavePipeline::DropHotCopy(const std::string& run_id) const {
  if (queue_ != nullptr && queue_->hot_copies() != nullptr) queue_->hot_copies()->Drop(run_id);
}

absl::StatusOr<SaveQueue::Accepted> SavePipeline::Enqueue(
    SaveParams params, std::unique_ptr<ingest::TensorSource> source) const {
  if (queue_ == nullptr) {
    return absl::UnavailableError(
        "saves by reference are off in this daemon (shm.enabled); use Save");
  }
  return queue_->Submit(std::move(params), std::move(source));
}

absl::StatusOr<std::optional<SaveOutcome>> SavePipeline::Close(SaveParams final_params,
                                                               ingest::TensorSource& source) const {
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<Run> run, registry_->Get(final_params.run_id));
  // Saves accepted before the close are committed before it.
  if (queue_ != nullptr) queue_->WaitIdle(final_params.run_id);
  std::optional<SaveOutcome> final_save;
  if (!final_params.tensors.empty()) {
    final_params.kind = SaveKind::kClose;
    CKPTD_ASSIGN_OR_RETURN(final_save, SaveNow(std::move(final_params), source));
  }
  CKPTD_TRY(registry_->MarkFinished(run.get()));
  DropHotCopy(run->id());
  std::optional<uint64_t> last;
  {
    absl::MutexLock lock(&run->mu());
    last = run->dir()->latest_step();
  }
  spdlog::info("run finished run={} last_step={}", run->id(),
               last ? std::to_string(*last) : "none");
  return final_save;
}

}  // namespace ckptd::scheduler
