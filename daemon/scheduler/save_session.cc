// A save's lifecycle: checks, provenance, streaming write, commit.
#include "daemon/scheduler/save_session.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/posix_error.h"
#include "daemon/gguf/layout.h"
#include "daemon/metrics/metrics.h"
#include "daemon/scheduler/retention.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/split_part.h"

namespace ckptd::scheduler {
namespace {

// Free space to leave beyond the files themselves (filesystem metadata).
constexpr uint64_t kSpaceMargin = 4 << 20;

using gguf::Value;

void AddProvenance(const RunSettings& s, const DaemonFacts& facts, const SaveParams& p,
                   std::string_view transport, double now, const std::string& parent_uuid,
                   const std::string& save_id, gguf::Metadata* md) {
  if (!s.base_model_uuid.empty()) {
    md->Set("general.base_model.count", Value(uint32_t{1}));
    md->Set("general.base_model.0.uuid", Value::String(s.base_model_uuid));
  }
  md->Set(std::string(storage::kKeyRole), Value("model"));
  md->Set(std::string(storage::kKeyRunId), Value::String(p.run_id));
  md->Set(std::string(storage::kKeyStep), Value(p.step));
  md->Set(std::string(storage::kKeyTimeUtc), Value::String(FormatUtc(now)));
  md->Set(std::string(storage::kKeyDaemonVersion), Value::String(facts.version));
  md->Set(std::string(storage::kKeyDaemonHost), Value::String(facts.host));
  md->Set(std::string(storage::kKeyTransport), Value::String(std::string(transport)));
  for (const auto& [key, value] : s.provenance.entries()) md->Set(key, value);
  for (const auto& [name, value] : p.metrics) {
    md->Set(StrCat(storage::kMetricsPrefix, name), Value(value));
  }
  if (!parent_uuid.empty())
    md->Set(std::string(storage::kKeyParentUuid), Value::String(parent_uuid));
  md->Set(std::string(storage::kKeySaveId), Value::String(save_id));
}

// The ckpt.shard.<name>.* keys of the tensors this rank holds a slice of,
// after checking each slice against the tensor saved.
absl::Status AddShardKeys(const std::map<std::string, policy::TensorSlice>& slices,
                          const std::vector<storage::PlannedTensor>& tensors, gguf::Metadata* md) {
  for (const auto& entry : slices) {
    const std::string& name = entry.first;
    const policy::TensorSlice& slice = entry.second;
    auto t = std::find_if(tensors.begin(), tensors.end(), [&](const storage::PlannedTensor& p) {
      return p.group == storage::TensorGroup::kModel && p.spec.name == name;
    });
    if (t == tensors.end()) {
      return absl::InvalidArgumentError(
          StrCat("multi_rank.slices names tensor '", name,
                 "' but this save has no model tensor of that name; save it or reopen the run "
                 "without that slice"));
    }
    const std::vector<uint64_t>& ne = t->spec.ne;
    bool fits = ne.size() == slice.full_ne.size();
    for (size_t d = 0; fits && d < ne.size(); ++d) {
      fits = d == slice.dim ? slice.offset + ne[d] <= slice.full_ne[d] : ne[d] == slice.full_ne[d];
    }
    if (!fits) {
      return absl::InvalidArgumentError(
          StrCat("tensor '", name, "': saved with ne [", fmt::format("{}", fmt::join(ne, ", ")),
                 "], which is not a slice at offset ", slice.offset, " along dim ", slice.dim,
                 " of the full ne [", fmt::format("{}", fmt::join(slice.full_ne, ", ")),
                 "] multi_rank.slices declares (the other dims must be whole)"));
    }
    storage::SetShardKeys(name, slice, md);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PlanExports(const std::vector<RunExport>& run_exports,
                         const std::vector<storage::PlannedTensor>& tensors,
                         const gguf::Metadata& model_metadata, std::string_view version,
                         std::vector<std::shared_ptr<const exports::ExportPlan>>* out) {
  if (run_exports.empty()) return absl::OkStatus();
  std::vector<gguf::TensorSpec> model;
  for (const auto& t : tensors) {
    if (t.group == storage::TensorGroup::kModel) model.push_back(t.spec);
  }
  std::vector<exports::ExportPlan> plans;
  for (const RunExport& e : run_exports) {
    CKPTD_ASSIGN_OR_RETURN(exports::ExportPlan plan,
                           exports::PlanExport(*e.profile, e.name, model, model_metadata, version));
    plans.push_back(std::move(plan));
  }
  exports::LinkAdapters(&plans);
  for (exports::ExportPlan& plan : plans) {
    out->push_back(std::make_shared<const exports::ExportPlan>(std::move(plan)));
  }
  return absl::OkStatus();
}

void RecordFailure(Run& run, uint64_t step, const absl::Status& why, std::string_view detail) {
  metrics::Metrics::Get().CountSave(run.id(), "failed");
  std::string error = StrCat(absl::StatusCodeToString(why.code()), ": ", why.message());
  {
    absl::MutexLock lock(&run.mu());
    run.last_error_ = error;
    if (env::IsIoError(why)) run.write_error_ = error;
  }
  spdlog::warn("save failed run={} step={} {}error=\"{}\"", run.id(), step, detail, error);
  run.Publish({.type = Event::Type::kFailed,
               .run_id = run.id(),
               .step = step,
               .error = error,
               .time_utc = FormatUtc(NowSeconds())});
}

SaveSession::SaveSession(RunRegistry* registry, std::shared_ptr<scheduler::Run> run,
                         SaveParams params, std::string_view transport)
    : registry_(registry),
      run_(std::move(run)),
      params_(std::move(params)),
      transport_(transport),
      start_s_(NowSeconds()) {}

SaveSession::~SaveSession() {
  if (writer_ && !done_) (void)Fail(absl::AbortedError("the save was abandoned before its commit"));
  if (in_flight_) {
    absl::MutexLock lock(&run_->mu());
    LeaveInFlight();
  }
}

absl::StatusOr<std::unique_ptr<SaveSession>> SaveSession::Begin(RunRegistry* registry,
                                                                SaveParams params,
                                                                std::string_view transport,
                                                                const Admission* admitted) {
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<scheduler::Run> run, registry->Get(params.run_id));
  std::unique_ptr<SaveSession> s(new SaveSession(registry, run, std::move(params), transport));
  const SaveParams& p = s->params_;
  absl::StatusOr<Admission> admission;
  {
    absl::MutexLock lock(&run->mu());
    run->MarkActive(NowSeconds());
    run->SawStep(p.step);
    if (admitted == nullptr) {
      admission = Admit(*run, registry->EffectiveSchedule(*run), p.admit_request(), std::nullopt,
                        NowSeconds());
    } else {
      // Admitted when it was queued: the schedule was consulted then; the
      // run's state and the step order may have changed since.
      AdmitRequest again = p.admit_request();
      again.force = true;
      again.overwrite = admitted->overwrite;
      admission = Admit(*run, registry->EffectiveSchedule(*run), again, std::nullopt, NowSeconds());
      if (admission.ok()) {
        admission->reason = admitted->reason;
        admission->tier = admitted->tier;
      }
    }
  }
  if (!admission.ok()) return s->Fail(admission.status());
  s->reason_ = admission->reason;
  if (!admission->due) {
    metrics::Metrics::Get().CountSave(p.run_id, "skipped");
    return s;
  }
  metrics::Metrics::Get().AddQueued(1);
  s->save_lock_ = std::make_unique<absl::MutexLock>(&run->save_mu());  // one save at a time
  metrics::Metrics::Get().AddQueued(-1);
  if (absl::Status st = s->Prepare(*admission); !st.ok()) return s->Fail(st);
  return s;
}

absl::Status SaveSession::Prepare(const Admission& admission) {
  const SaveParams& p = params_;
  overwrite_ = admission.overwrite;
  tier_ = admission.tier;
  storage::SavePlan plan;
  plan.step = p.step;
  plan.alignment = registry_->facts().alignment;
  plan.direct_io = registry_->facts().direct_io;
  plan.uuid_scheme = registry_->facts().uuid_scheme;
  plan.tensors = p.tensors;
  const double now = NowSeconds();
  const std::string save_id = storage::NewSaveId();
  std::string weights_dir;
  std::vector<RunExport> run_exports;
  const storage::CheckpointRecord* share_from = nullptr;  // the run's previous disk checkpoint
  bool cannot_share = false;
  storage::CheckpointRecord previous;
  run_->save_mu().AssertHeld();                 // by save_lock_, taken in Begin
  CKPTD_TRY(registry_->EnsureSettings(*run_));  // an idle run's come back from its directory
  {
    absl::MutexLock lock(&run_->mu());
    if (tier_ == Tier::kMemory) CKPTD_TRY(registry_->OpenMemoryDir(*run_));
    storage::RunDir* dir = run_->dir(tier_);
    // Checked again under the save lock: another save may have committed meanwhile.
    CKPTD_TRY(
        dir->CheckCanSave(p.step, overwrite_ ? storage::Overwrite::kYes : storage::Overwrite::kNo));
    std::string parent;
    const auto& catalog = run_->dir()->catalog();
    auto it = catalog.lower_bound(p.step);
    cannot_share = run_->cannot_share_;
    if (it != catalog.begin()) {
      parent = std::prev(it)->second.uuid;
      previous = std::prev(it)->second;
      share_from = &previous;
    }
    if (const RunMultiRank& mr = run_->settings_->multi_rank; mr.world_size > 1) {
      if (overwrite_ && tier_ == Tier::kDisk) {
        return absl::FailedPreconditionError(
            StrCat("overwrite: step ", p.step, " of multi-rank run '", p.run_id,
                   "' cannot be rewritten or rolled back (every rank's part commits together); "
                   "save a new step"));
      }
      uint64_t model_tensors = 0;
      for (const auto& t : p.tensors) model_tensors += t.group == storage::TensorGroup::kModel;
      const uint64_t total = mr.total_tensors ? mr.total_tensors : model_tensors * mr.world_size;
      CKPTD_ASSIGN_OR_RETURN(plan.model_metadata,
                             storage::SplitPartMetadata(run_->settings_->model_metadata, mr.rank,
                                                        mr.world_size, total));
      CKPTD_TRY(AddShardKeys(mr.slices, p.tensors, &plan.model_metadata));
      plan.part = storage::SplitName{.step = p.step, .rank = mr.rank, .world_size = mr.world_size};
      part_ = tier_ == Tier::kDisk;
      memory_part_ = tier_ == Tier::kMemory;
    } else {
      plan.model_metadata = run_->settings_->model_metadata;
    }
    AddProvenance(*run_->settings_, registry_->facts(), p, transport_, now, parent, save_id,
                  &plan.model_metadata);
    weights_dir = dir->weights_dir();
    // Exports are made from disk steps only: a memory step is for resuming.
    if (tier_ == Tier::kDisk) run_exports = run_->settings_->exports;
  }
  CKPTD_TRY(PlanExports(run_exports, p.tensors, plan.model_metadata, registry_->facts().version,
                        &plan.exports));
  // Tensors equal to the previous checkpoint's are shared with it, not
  // written again, where the file system can (same kind of step only: a
  // part from a part of the same rank, a whole step from a whole step).
  if (share_from != nullptr && tier_ == Tier::kDisk && registry_->facts().share_unchanged &&
      !cannot_share && share_from->world_size == (plan.part ? plan.part->world_size : 0) &&
      share_from->rank == (plan.part ? plan.part->rank : 0)) {
    auto source =
        storage::OpenCloneSource(registry_->env(), share_from->model_path, share_from->train_path);
    if (source.ok()) {
      plan.clone_from = *std::move(source);
    } else {
      spdlog::debug("save run={} step={}: not sharing with step {}: {}", p.run_id, p.step,
                    share_from->step, source.status().message());
    }
  }
  bool has_train = false;
  for (const auto& t : p.tensors) has_train |= t.group == storage::TensorGroup::kTrain;
  if (!has_train && !p.train_metadata.entries().empty()) {
    return absl::InvalidArgumentError("train_metadata: given without any TRAIN tensor");
  }
  plan.train_metadata = p.train_metadata;
  plan.train_metadata.Set(std::string(storage::kKeyRole), Value("train"));
  plan.train_metadata.Set(std::string(storage::kKeyRunId), Value::String(p.run_id));
  plan.train_metadata.Set(std::string(storage::kKeyStep), Value(p.step));
  plan.train_metadata.Set(std::string(storage::kKeyTimeUtc), Value::String(FormatUtc(now)));
  plan.train_metadata.Set(std::string(storage::kKeySaveId), Value::String(save_id));

  auto writer = storage::CheckpointWriter::Plan(registry_->env(), weights_dir, std::move(plan));
  if (!writer.ok()) return writer.status();
  // Before a byte is written: make room under the disk guard (and the
  // memory tier's budget), or refuse.
  if (tier_ == Tier::kMemory) CKPTD_TRY(EnsureMemory((*writer)->planned_bytes()));
  CKPTD_TRY(EnsureSpace((*writer)->planned_bytes(), weights_dir));
  {
    absl::MutexLock lock(&run_->mu());
    run_->in_flight_.insert(p.step);
    in_flight_ = true;
  }
  CKPTD_TRY((*writer)->Start());
  writer_ = std::move(*writer);
  metrics::Metrics::Get().AddInFlightBytes(static_cast<int64_t>(writer_->data_bytes()));
  spdlog::info("save started run={} step={} tier={} tensors={} bytes={} reason=\"{}\"", p.run_id,
               p.step, TierName(tier_), p.tensors.size(), writer_->data_bytes(), reason_);
  return absl::OkStatus();
}

absl::Status SaveSession::EnsureMemory(uint64_t planned) {
  const uint64_t cap = registry_->memory_tier().max_bytes;
  if (cap == 0) return absl::OkStatus();
  const uint64_t held = registry_->MemoryTierBytes();
  if (held + planned <= cap) return absl::OkStatus();
  std::vector<uint64_t> evicted;
  uint64_t freed = 0;
  absl::MutexLock lock(&run_->mu());
  storage::RunDir* mem = run_->dir(Tier::kMemory);
  // This run's oldest memory steps make room for its newest; other runs'
  // are theirs.
  while (held - freed + planned > cap && !mem->catalog().empty()) {
    const auto& [step, record] = *mem->catalog().begin();
    const uint64_t bytes = record.total_bytes();
    const uint64_t s = step;
    CKPTD_TRY(s == mem->latest_step() ? mem->DeleteAbove(s - 1).status() : mem->Delete(s));
    freed += bytes;
    evicted.push_back(s);
  }
  registry_->EvictMemoryForRoom(*run_, evicted, params_.step);
  if (held - freed + planned <= cap) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      StrCat("run '", params_.run_id, "' memory step ", params_.step, " needs ", planned,
             " bytes, but the memory tier holds ", held - freed,
             " bytes of other runs' memory steps and "
             "[memory] max_bytes is ",
             cap,
             "; nothing was written. Raise [memory] max_bytes, lower "
             "memory_keep_last, or save less often to memory"));
}

absl::Status SaveSession::EnsureSpace(uint64_t planned, const std::string& weights_dir) {
  const policy::DiskGuard guard = registry_->disk_guard();
  CKPTD_ASSIGN_OR_RETURN(env::FsSpace space, registry_->env()->Space(weights_dir));
  const uint64_t needed =
      policy::BytesToFree(guard, space.free_bytes, space.total_bytes, planned + kSpaceMargin);
  if (needed == 0) return absl::OkStatus();
  if (tier_ == Tier::kMemory) {
    return absl::ResourceExhaustedError(
        StrCat("run '", params_.run_id, "' memory step ", params_.step, " needs ", planned,
               " bytes, but the memory tier's file system (", weights_dir, ") has ",
               space.free_bytes, " free, ", needed,
               " short of the disk guard's margin; nothing was written. Give the tmpfs more "
               "room, or set [memory] max_bytes below its size"));
  }
  absl::MutexLock lock(&run_->mu());
  auto pruned = PruneForSpace(run_->dir(), run_->pins_, registry_->EffectiveRetention(*run_),
                              run_->RetentionHolds(), NowSeconds(), needed, guard.on_full);
  if (!pruned.ok()) {
    metrics::Metrics::Get().CountDiskGuardRefusal(params_.run_id);
    const uint64_t keep = policy::GuardKeepsFree(guard, space.total_bytes);
    return absl::ResourceExhaustedError(StrCat(
        "run '", params_.run_id, "' step ", params_.step, " needs ", planned,
        " bytes (its files) + ", kSpaceMargin, " (margin for filesystem metadata) + ", keep,
        " the disk guard keeps free (the larger of disk_guard.min_free_bytes = ",
        guard.min_free_bytes, " and disk_guard.min_free_percent = ", guard.min_free_percent,
        "% of ", space.total_bytes, ") = ", planned + kSpaceMargin + keep, " bytes, but ",
        weights_dir, " has ", space.free_bytes, " free: ", needed, " short; ",
        pruned.status().message(),
        ". Nothing was written or deleted: free space on that filesystem, keep fewer checkpoints "
        "(retention), unpin checkpoints, lower the guard, set disk_guard.on_full = "
        "\"prune_oldest\" to delete the oldest for room, or move the run to another root"));
  }
  for (uint64_t step : *pruned) {
    spdlog::info("disk guard deleted run={} step={} to make room for step={} ({} bytes needed)",
                 params_.run_id, step, params_.step, needed);
    metrics::Metrics::Get().CountDeletion(params_.run_id, "disk_guard");
    run_->PublishLocked({.type = Event::Type::kDeleted,
                         .run_id = params_.run_id,
                         .step = step,
                         .time_utc = FormatUtc(NowSeconds()),
                         .reason = StrCat("disk guard: room for step ", params_.step)});
  }
  return absl::OkStatus();
}

void SaveSession::Written() {
  run_->reference_time_s_ = NowSeconds();
  run_->last_error_.clear();
  run_->write_error_.clear();
  LeaveInFlight();
}

void SaveSession::LeaveInFlight() {
  if (!in_flight_) return;
  run_->in_flight_.erase(params_.step);
  in_flight_ = false;
}

absl::StatusOr<SaveOutcome> SaveSession::Run(ingest::TensorSource& source) {
  SaveOutcome out{.skipped = skipped(), .reason = reason_};
  if (skipped()) return out;
  const bool stable = source.stable();
  std::vector<std::optional<gguf::Digest128>> known = source.KnownDigests();
  if (!stable && source.can_hash_tensors()) {
    // Bytes that cannot be held back while they are hashed: a tensor that
    // may equal the previous checkpoint's is hashed first where the source
    // can read it twice (the pointer path), and shared when it does.
    const auto candidates = writer_->CandidateDigests();
    known.resize(candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (!candidates[i] || known[i]) continue;
      auto digest = source.HashTensor(i);
      if (!digest.ok()) return Fail(digest.status());
      if (*digest == candidates[i]) known[i] = *digest;
    }
  }
  writer_->SetKnownDigests(known);
  absl::Status copied =
      source.CopyTo([&](std::string_view bytes) { return writer_->WriteData(bytes, stable); });
  if (!copied.ok()) {
    if (copied.code() == absl::StatusCode::kCancelled) {
      copied = absl::CancelledError(StrCat(copied.message(), " after ", writer_->received_bytes(),
                                           " of ", writer_->data_bytes(), " tensor bytes"));
    }
    return Fail(std::move(copied));
  }
  auto record = Commit(&out.timings, &out.is_latest);
  if (!record.ok()) return Fail(record.status());
  source.Learn(writer_->TensorDigests());
  out.record = std::move(*record);
  return out;
}

absl::StatusOr<storage::CheckpointRecord> SaveSession::Commit(SaveTimings* t, bool* is_latest) {
  t->received_s = NowSeconds() - start_s_;
  CKPTD_TRY(writer_->Finish());
  t->durable_s = NowSeconds() - start_s_;
  metrics::Metrics::Get().AddKnownDigestBytes(params_.run_id, writer_->known_bytes());
  storage::CheckpointRecord record;
  bool note_buffered = false;
  if (part_) return StagePart(t);
  if (tier_ == Tier::kMemory) return CommitToMemory(t);
  {
    absl::MutexLock lock(&run_->mu());
    CKPTD_ASSIGN_OR_RETURN(
        record, run_->dir()->Commit(writer_.get(), overwrite_ ? storage::Overwrite::kYes
                                                              : storage::Overwrite::kNo));
    *is_latest = run_->dir()->latest_step() == record.step;
    Written();
    note_buffered = writer_->direct_io_refused() && !std::exchange(run_->buffered_noted_, true);
    if (writer_->sharing_refused()) run_->cannot_share_ = true;
  }
  if (note_buffered) {
    spdlog::warn(
        "direct I/O refused run={} step={} dir={}: the file system does not take O_DIRECT "
        "(tmpfs, FUSE and some network file systems); this run's checkpoints are written through "
        "the page cache, each still fdatasync'd before its commit",
        params_.run_id, record.step, run_->run_dir());
  }
  done_ = true;
  t->committed_s = NowSeconds() - start_s_;
  metrics::Metrics::Get().RecordCommit(params_.run_id, record.total_bytes(),
                                       writer_->zero_copy_bytes(), writer_->shared_bytes(),
                                       t->committed_s);
  metrics::Metrics::Get().AddInFlightBytes(-static_cast<int64_t>(writer_->data_bytes()));
  registry_->Committed(
      *run_, record, CommitSource::kSave,
      fmt::format("bytes={} zero_copy={} shared={} io={} received={:.3f}s durable={:.3f}s "
                  "committed={:.3f}s ",
                  record.total_bytes(), writer_->zero_copy_bytes(), writer_->shared_bytes(),
                  writer_->model().direct ? "direct" : "buffered", t->received_s, t->durable_s,
                  t->committed_s));
  return record;
}

// A memory step: committed in the memory tier's directory by the same
// recipe; the disk schedule's clock (every_seconds) does not restart.
absl::StatusOr<storage::CheckpointRecord> SaveSession::CommitToMemory(SaveTimings* t) {
  storage::CheckpointRecord record;
  {
    absl::MutexLock lock(&run_->mu());
    storage::RunDir* mem = run_->dir(Tier::kMemory);
    if (memory_part_) {
      // A part's commit point is its marker; a memory step saved again (a
      // resumed trainer) replaces the one there.
      // (DeleteAbove moves `latest` off it when it is the newest.)
      if (mem->Find(params_.step) != nullptr) {
        CKPTD_TRY(params_.step == mem->latest_step() ? mem->DeleteAbove(params_.step - 1).status()
                                                     : mem->Delete(params_.step));
      }
      CKPTD_TRY(mem->StagePart(writer_.get(), storage::Overwrite::kYes).status());
      CKPTD_ASSIGN_OR_RETURN(record, mem->CommitPart(params_.step));
    } else {
      CKPTD_ASSIGN_OR_RETURN(record, mem->Commit(writer_.get(), storage::Overwrite::kYes));
    }
    run_->last_error_.clear();
    LeaveInFlight();
  }
  done_ = true;
  t->committed_s = NowSeconds() - start_s_;
  metrics::Metrics::Get().AddInFlightBytes(-static_cast<int64_t>(writer_->data_bytes()));
  registry_->CommittedToMemory(
      *run_, record,
      fmt::format("bytes={} received={:.3f}s durable={:.3f}s committed={:.3f}s ",
                  record.total_bytes(), t->received_s, t->durable_s, t->committed_s));
  return record;
}

// A multi-rank run's part: durable here, invisible until the step's verdict
// (the coordinator's, through the object store) commits or aborts it.
absl::StatusOr<storage::CheckpointRecord> SaveSession::StagePart(SaveTimings* t) {
  storage::CheckpointRecord record;
  {
    absl::MutexLock lock(&run_->mu());
    CKPTD_ASSIGN_OR_RETURN(record, run_->dir()->StagePart(writer_.get()));
    Written();
  }
  done_ = true;
  t->committed_s = NowSeconds() - start_s_;
  metrics::Metrics::Get().CountSave(params_.run_id, "staged");
  metrics::Metrics::Get().AddInFlightBytes(-static_cast<int64_t>(writer_->data_bytes()));
  spdlog::info(
      "save staged run={} step={} rank={} world_size={} bytes={} received={:.3f}s "
      "durable={:.3f}s staged={:.3f}s file={} (the step commits when every rank's part is durable)",
      params_.run_id, record.step, record.rank, record.world_size, record.total_bytes(),
      t->received_s, t->durable_s, t->committed_s, record.model_path);
  registry_->Staged(*run_, record);
  return record;
}

absl::Status SaveSession::Fail(absl::Status why) {
  if (done_) return why;
  done_ = true;
  if (writer_)
    metrics::Metrics::Get().AddInFlightBytes(-static_cast<int64_t>(writer_->data_bytes()));
  {
    absl::MutexLock lock(&run_->mu());
    LeaveInFlight();
  }
  RecordFailure(*run_, params_.step, why,
                fmt::format("transport={} after={:.3f}s ", transport_, NowSeconds() - start_s_));
  return why;
}

}  // namespace ckptd::scheduler
