// Run directory: recovery, catalog, commit and `latest`.
#include "daemon/storage/run_dir.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/export/plan.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/reader.h"
#include "daemon/storage/file_names.h"

namespace ckptd::storage {

RunDir::RunDir(env::Env* env, std::string run_dir)
    : env_(env),
      run_dir_(std::move(run_dir)),
      weights_dir_(StrCat(run_dir_, "/", kWeightsDir)),
      quarantine_dir_(StrCat(run_dir_, "/", kQuarantineDir)) {}

absl::StatusOr<QuarantinedFile> RunDir::Quarantine(const std::string& name,
                                                   const std::string& reason) {
  CKPTD_TRY(env_->CreateDirs(quarantine_dir_));
  QuarantinedFile q{.from = PathOf(name), .reason = reason};
  q.bytes = env_->Stat(q.from).value_or(env::FileStat{}).size;
  std::string to = name;
  for (int n = 1; env_->Stat(StrCat(quarantine_dir_, "/", to)).ok(); ++n) to = StrCat(name, ".", n);
  q.path = StrCat(quarantine_dir_, "/", to);
  // The reason first: a file in quarantine/ always says why it is there.
  CKPTD_TRY(env::WriteFileAtomically(env_, StrCat(q.path, kQuarantineReasonSuffix), reason + "\n"));
  CKPTD_TRY(env_->RenameFile(q.from, q.path));
  CKPTD_TRY(env_->SyncDir(quarantine_dir_));
  CKPTD_TRY(env_->SyncDir(weights_dir_));
  quarantined_.push_back(q);
  return q;
}

std::vector<QuarantinedFile> RunDir::ScanQuarantine() const {
  std::vector<QuarantinedFile> out;
  auto names = env_->ListDir(quarantine_dir_);
  if (!names.ok()) return out;
  std::sort(names->begin(), names->end());
  for (const std::string& name : *names) {
    if (name.ends_with(kQuarantineReasonSuffix) || name.starts_with(".")) continue;
    QuarantinedFile q{.path = StrCat(quarantine_dir_, "/", name)};
    q.bytes = env_->Stat(q.path).value_or(env::FileStat{}).size;
    auto why = env::ReadWholeFile(env_, StrCat(q.path, kQuarantineReasonSuffix));
    q.reason =
        why.ok() ? std::string(absl::StripTrailingAsciiWhitespace(*why)) : "(no reason recorded)";
    out.push_back(std::move(q));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<RunDir>> RunDir::Open(env::Env* env, const std::string& run_dir,
                                                     RecoveryReport* report) {
  std::unique_ptr<RunDir> dir(new RunDir(env, run_dir));
  CKPTD_TRY(env->CreateDirs(dir->weights_dir_));
  RecoveryReport local;
  CKPTD_TRY(dir->Recover(report ? report : &local));
  return dir;
}

absl::Status RunDir::Recover(RecoveryReport* report) {
  bool changed = false;
  auto remove = [&](const std::string& path) -> absl::Status {
    CKPTD_TRY(env_->RemoveFile(path));
    report->removed.push_back(path);
    changed = true;
    return absl::OkStatus();
  };
  // The run's own state files (pins, run state) leave temps too.
  CKPTD_ASSIGN_OR_RETURN(std::vector<std::string> top, env_->ListDir(run_dir_));
  for (const std::string& name : top) {
    auto parsed = ParseFileName(name);
    if (parsed && parsed->kind == FileKind::kStateTemp) {
      CKPTD_TRY(remove(StrCat(run_dir_, "/", name)));
    }
  }
  if (changed) CKPTD_TRY(env_->SyncDir(run_dir_));
  changed = false;

  CKPTD_ASSIGN_OR_RETURN(std::vector<std::string> names, env_->ListDir(weights_dir_));
  std::set<uint64_t> models, trains, nexts;
  std::map<uint64_t, std::vector<std::string>> exported;  // step -> export names
  std::map<uint64_t, SplitName> parts;
  std::set<std::string> part_trains;
  std::set<uint64_t> markers;
  std::map<uint64_t, std::string> deleting;  // step -> .NAME.deleting
  for (const std::string& name : names) {
    auto parsed = ParseFileName(name);
    if (!parsed) continue;  // not ours: never touched
    switch (parsed->kind) {
      case FileKind::kModelTemp:
      case FileKind::kTrainTemp:
      case FileKind::kLatestTemp:
      case FileKind::kStateTemp:
      case FileKind::kExportTemp:
      case FileKind::kExportLatestTemp:
        CKPTD_TRY(remove(PathOf(name)));
        break;
      case FileKind::kModel:
        models.insert(parsed->step);
        break;
      case FileKind::kTrain:
        trains.insert(parsed->step);
        break;
      case FileKind::kTrainNext:
        nexts.insert(parsed->step);
        break;
      case FileKind::kExport:
        exported[parsed->step].push_back(parsed->export_name);
        break;
      case FileKind::kPart:
        parts.try_emplace(parsed->step, SplitName{.step = parsed->step,
                                                  .rank = parsed->rank,
                                                  .world_size = parsed->world_size});
        break;
      case FileKind::kPartTrain:
        part_trains.insert(name);
        break;
      case FileKind::kCommitMarker:
        markers.insert(parsed->step);
        break;
      case FileKind::kDeleting:
        deleting.emplace(parsed->step, name);
        break;
      case FileKind::kLatest:
      case FileKind::kStateFile:
      case FileKind::kExportLatest:
        break;
    }
  }
  // A deletion cut short after its model file was renamed away: the files
  // saved with it go first (unless the step was saved again since), then
  // the renamed model file, as Delete would have.
  for (const auto& [step, name] : deleting) {
    if (models.contains(step) || parts.contains(step)) continue;
    if (trains.erase(step) > 0) CKPTD_TRY(remove(PathOf(TrainFileName(step))));
    if (nexts.erase(step) > 0) CKPTD_TRY(remove(PathOf(TrainNextFileName(step))));
    for (auto it = part_trains.begin(); it != part_trains.end();) {
      const auto parsed = ParseFileName(*it);
      if (parsed && parsed->step == step) {
        CKPTD_TRY(remove(PathOf(*it)));
        it = part_trains.erase(it);
      } else {
        ++it;
      }
    }
    auto found = exported.extract(step);
    for (const std::string& e : found.empty() ? std::vector<std::string>{} : found.mapped()) {
      CKPTD_TRY(remove(PathOf(ExportFileName(step, e))));
    }
  }
  if (!deleting.empty()) {
    if (changed) CKPTD_TRY(env_->SyncDir(weights_dir_));
    for (const auto& [step, name] : deleting) CKPTD_TRY(remove(PathOf(name)));
  }
  // A train file belongs to a model file only if it recorded its digest, its
  // step and its save id (an interrupted overwrite can leave the previous
  // one behind; equal tensors at another step give an equal digest).
  struct Tie {
    std::string why;     // "" when the train file is the model file's
    bool stale = false;  // an intact train file of an earlier save of the same step
  };
  auto tie = [&](const std::string& train_path, const CheckpointRecord& model) -> Tie {
    auto train = ReadGgufHeader(env_, train_path);
    if (!train.ok()) return {std::string(train.status().message())};
    if (auto covered = gguf::CheckMetadataDigest(*train); !covered.ok()) {
      return {std::string(covered.status().message())};
    }
    std::string why = TrainMismatch(*train, model);
    return {why, !why.empty() && StepValue(train->metadata) == model.step};
  };
  auto quarantine = [&](const std::string& name, const std::string& reason) -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(QuarantinedFile q, Quarantine(name, reason));
    report->quarantined.push_back(std::move(q));
    return absl::OkStatus();
  };
  for (uint64_t step : models) {
    const std::string model_name = ModelFileName(step);
    auto record = ReadCheckpointRecord(env_, step, PathOf(model_name));
    if (!record.ok()) {
      // Damaged, or not this step's: out of the catalog, and so are the
      // files saved with it, none of them deleted.
      const std::string why(record.status().message());
      CKPTD_TRY(quarantine(model_name, why));
      const std::string follows =
          StrCat("saved with ", model_name, ", which was quarantined: ", why);
      if (trains.erase(step) > 0) CKPTD_TRY(quarantine(TrainFileName(step), follows));
      if (nexts.erase(step) > 0) CKPTD_TRY(quarantine(TrainNextFileName(step), follows));
      auto found = exported.extract(step);
      for (const std::string& name : found.empty() ? std::vector<std::string>{} : found.mapped()) {
        CKPTD_TRY(quarantine(ExportFileName(step, name), follows));
      }
      continue;
    }
    const std::string train_path = PathOf(TrainFileName(step));
    // A commit that stopped between its model file and moving the new train
    // file into place: finish it (replacing the overwritten step's train
    // file, as the commit would have), or drop the train file of a commit
    // that never happened.
    if (nexts.erase(step) > 0) {
      const std::string next_path = PathOf(TrainNextFileName(step));
      if (tie(next_path, *record).why.empty()) {
        CKPTD_TRY(env_->RenameFile(next_path, train_path));
        trains.insert(step);
        changed = true;
      } else {
        CKPTD_TRY(remove(next_path));
      }
    }
    if (trains.erase(step) > 0) {
      if (Tie t = tie(train_path, *record); t.why.empty()) {
        record->train_path = train_path;
        record->train_bytes = env_->Stat(train_path).value_or(env::FileStat{}).size;
      } else if (t.stale) {
        // An overwrite without training state stopped after its commit
        // point: finish it, as its step 3 would have.
        CKPTD_TRY(remove(train_path));
      } else {
        CKPTD_TRY(quarantine(TrainFileName(step), StrCat("not the training state saved with ",
                                                         model_name, ": ", t.why)));
      }
    }
    // Exports are renamed before the commit point: one belongs to this
    // model file only if it names it as its source (and, when it carries
    // one, its save id); any other is a save's that never committed.
    auto found = exported.extract(step);
    for (const std::string& name : found.empty() ? std::vector<std::string>{} : found.mapped()) {
      const std::string path = PathOf(ExportFileName(step, name));
      auto header = ReadGgufHeader(env_, path);
      auto covered = header.ok() ? gguf::CheckMetadataDigest(*header) : header.status();
      if (!covered.ok()) {
        CKPTD_TRY(quarantine(ExportFileName(step, name), std::string(covered.status().message())));
        continue;
      }
      const std::string save_id = StringValue(header->metadata, kKeySaveId);
      if (StringValue(header->metadata, exports::kKeySourceUuid) == record->uuid &&
          (save_id.empty() || save_id == record->save_id)) {
        record->exports.push_back(
            {.name = name,
             .path = path,
             .bytes = header->file_size,
             .uuid = StringValue(header->metadata, gguf::kKeyUuid),
             .profile = StringValue(header->metadata, exports::kKeyExportProfile),
             .base = StringValue(header->metadata, exports::kKeyExportBase)});
      } else {
        CKPTD_TRY(remove(path));
      }
    }
    Edit(catalog_).emplace(step, std::move(*record));
  }
  for (const auto& [step, names] : exported) {
    for (const std::string& name : names) CKPTD_TRY(remove(PathOf(ExportFileName(step, name))));
  }
  // A multi-rank run's parts: committed with their marker, pending without
  // one (the coordinator's verdict decides), their train files kept only
  // beside the part whose digest they record.
  Edit(pending_).clear();
  for (const auto& [step, part] : parts) {
    if (catalog_->contains(step)) continue;  // a whole step of the same number: not ours to judge
    const std::string part_name = SplitFileName(step, part.rank, part.world_size);
    auto record = ReadCheckpointRecord(env_, step, PathOf(part_name));
    if (!record.ok()) {
      CKPTD_TRY(quarantine(part_name, std::string(record.status().message())));
      continue;
    }
    record->rank = part.rank;
    record->world_size = part.world_size;
    const std::string train_name = PartTrainFileName(step, part.rank, part.world_size);
    if (part_trains.erase(train_name) > 0) {
      const std::string train_path = PathOf(train_name);
      if (Tie t = tie(train_path, *record); t.why.empty()) {
        record->train_path = train_path;
        record->train_bytes = env_->Stat(train_path).value_or(env::FileStat{}).size;
      } else {
        CKPTD_TRY(quarantine(train_name,
                             StrCat("not the training state saved with ", part_name, ": ", t.why)));
      }
    }
    if (markers.erase(step) > 0) {
      Edit(catalog_).emplace(step, std::move(*record));
    } else {
      Edit(pending_).emplace(step, std::move(*record));
    }
  }
  for (const std::string& name : part_trains) CKPTD_TRY(remove(PathOf(name)));
  for (uint64_t step : markers) CKPTD_TRY(remove(PathOf(CommitMarkerName(step))));
  // No model file. A .next is a save's that never reached its commit
  // point; a train file outlived its model file (a deletion cut short, or
  // a model file removed by hand): it may be all that is left of a step.
  for (uint64_t step : trains) {
    CKPTD_TRY(quarantine(TrainFileName(step),
                         StrCat("its model file ", ModelFileName(step), " is missing")));
  }
  for (uint64_t step : nexts) CKPTD_TRY(remove(PathOf(TrainNextFileName(step))));
  if (changed) CKPTD_TRY(env_->SyncDir(weights_dir_));

  std::optional<uint64_t> want = latest_step();
  auto target = env_->ReadLink(PathOf(std::string(kLatestName)));
  bool ok = want ? (target.ok() && *target == LatestTarget(*want)) : !target.ok();
  if (!ok) {
    CKPTD_TRY(PointLatestAt(want));
    report->latest_repaired = true;
  }
  CKPTD_ASSIGN_OR_RETURN(bool relinked, RelinkExports());
  report->latest_repaired |= relinked;
  quarantined_ = ScanQuarantine();
  return absl::OkStatus();
}

absl::StatusOr<bool> RunDir::RelinkExports() {
  std::map<std::string, uint64_t> newest;  // export name -> newest step that has it
  for (const auto& [step, r] : *catalog_) {
    for (const auto& e : r.exports) newest[e.name] = step;
  }
  bool changed = false;
  CKPTD_ASSIGN_OR_RETURN(std::vector<std::string> names, env_->ListDir(weights_dir_));
  for (const std::string& name : names) {
    auto parsed = ParseFileName(name);
    if (parsed && parsed->kind == FileKind::kExportLatest &&
        !newest.contains(parsed->export_name)) {
      CKPTD_TRY(env_->RemoveFile(PathOf(name)));
      changed = true;
    }
  }
  for (const auto& [name, step] : newest) {
    const std::string link = ExportLatestName(name);
    const std::string target = ExportFileName(step, name);
    auto current = env_->ReadLink(PathOf(link));
    if (current.ok() && *current == target) continue;
    CKPTD_TRY(ReplaceLink(link, target));
    changed = true;
  }
  if (changed) CKPTD_TRY(env_->SyncDir(weights_dir_));
  return changed;
}

absl::Status RunDir::ReplaceLink(const std::string& link, const std::string& target) {
  // Like leveldb's CURRENT: a new link under a temp name, renamed over.
  std::string tmp = PathOf(TempFileName(link));
  CKPTD_TRY(env_->Symlink(target, tmp));
  if (absl::Status st = env_->RenameFile(tmp, PathOf(link)); !st.ok()) {
    (void)env_->RemoveFile(tmp);
    return st;
  }
  return absl::OkStatus();
}

std::optional<uint64_t> RunDir::latest_step() const {
  if (catalog_->empty()) return std::nullopt;
  return catalog_->rbegin()->first;
}

const CheckpointRecord* RunDir::Find(uint64_t step) const {
  auto it = catalog_->find(step);
  return it == catalog_->end() ? nullptr : &it->second;
}

uint64_t RunDir::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [step, r] : *catalog_) total += r.total_bytes();
  return total;
}

absl::Status RunDir::CheckCanSave(uint64_t step, Overwrite overwrite) const {
  if (pending_->contains(step)) {
    return absl::AlreadyExistsError(
        StrCat("step ", step, "'s part is already written here and waits for the other ranks' (",
               pending_->at(step).model_path, ")"));
  }
  if (overwrite == Overwrite::kYes) return absl::OkStatus();
  if (const CheckpointRecord* r = Find(step)) {
    return absl::AlreadyExistsError(StrCat("step ", step, " is already committed (", r->model_path,
                                           "); pass overwrite to replace it"));
  }
  if (auto last = latest_step(); last && step < *last) {
    return absl::FailedPreconditionError(StrCat("step ", step, " is below the last committed step ",
                                                *last, "; pass overwrite to roll back"));
  }
  return absl::OkStatus();
}

absl::Status RunDir::PointLatestAt(std::optional<uint64_t> step) {
  std::string latest = PathOf(std::string(kLatestName));
  if (!step) {
    absl::Status st = env_->RemoveFile(latest);
    if (!st.ok() && !absl::IsNotFound(st)) return st;
    return env_->SyncDir(weights_dir_);
  }
  CKPTD_TRY(ReplaceLink(std::string(kLatestName), LatestTarget(*step)));
  return env_->SyncDir(weights_dir_);
}

std::string RunDir::LatestTarget(uint64_t step) const {
  const CheckpointRecord* r = Find(step);
  if (r == nullptr || r->world_size == 0) return ModelFileName(step);
  return SplitFileName(step, r->rank, r->world_size);
}

absl::StatusOr<RunDir::Damaged> RunDir::QuarantineDamaged(uint64_t step, const std::string& path,
                                                          const std::string& reason) {
  const CheckpointRecord* r = Find(step);
  if (r == nullptr) return absl::NotFoundError(StrCat("no checkpoint at step ", step));
  const CheckpointRecord record = *r;
  auto name_of = [](const std::string& p) { return p.substr(p.rfind('/') + 1); };
  Damaged out;
  for (size_t i = 0; i < record.exports.size(); ++i) {
    if (record.exports[i].path != path) continue;
    CKPTD_ASSIGN_OR_RETURN(QuarantinedFile q, Quarantine(name_of(path), reason));
    out.files.push_back(std::move(q));
    auto& exports = Edit(catalog_).at(step).exports;
    exports.erase(exports.begin() + static_cast<std::ptrdiff_t>(i));
    CKPTD_TRY(RelinkExports().status());
    return out;
  }
  if (path != record.model_path && path != record.train_path) {
    return absl::NotFoundError(StrCat(path, " is not a file of step ", step));
  }
  // The model file first: from here the step is no longer committed.
  if (record.world_size > 0) CKPTD_TRY(env_->RemoveFile(PathOf(CommitMarkerName(step))));
  const std::string follows = StrCat("saved with ", name_of(path), ", which was damaged: ", reason);
  std::vector<std::pair<std::string, std::string>> moves = {
      {record.model_path, record.model_path == path ? reason : follows}};
  if (!record.train_path.empty()) {
    moves.emplace_back(record.train_path, record.train_path == path ? reason : follows);
  }
  for (const auto& e : record.exports) moves.emplace_back(e.path, follows);
  Edit(catalog_).erase(step);
  out.step_lost = true;
  for (const auto& [file, why] : moves) {
    CKPTD_ASSIGN_OR_RETURN(QuarantinedFile q, Quarantine(name_of(file), why));
    out.files.push_back(std::move(q));
  }
  std::optional<uint64_t> want = latest_step();
  auto target = env_->ReadLink(PathOf(std::string(kLatestName)));
  if (!(want ? (target.ok() && *target == LatestTarget(*want)) : !target.ok())) {
    CKPTD_TRY(PointLatestAt(want));
  }
  CKPTD_TRY(RelinkExports().status());
  return out;
}

absl::Status RunDir::Delete(uint64_t step) {
  const CheckpointRecord* r = Find(step);
  if (r == nullptr) return absl::NotFoundError(StrCat("no checkpoint at step ", step));
  if (latest_step() == step) {
    return absl::FailedPreconditionError(
        StrCat("step ", step, " is latest's target; not deleting it"));
  }
  return DeleteStep(step);
}

absl::Status RunDir::DeleteStep(uint64_t step) {
  const CheckpointRecord* r = Find(step);
  if (r == nullptr) return absl::NotFoundError(StrCat("no checkpoint at step ", step));
  const std::string model_path = r->model_path;
  const std::string train_path = r->train_path;
  const std::vector<ExportRecord> exports = r->exports;
  // In three durable steps, so that a crash anywhere leaves the whole step
  // or what recovery knows to finish deleting, never a model file without
  // the train file saved with it, nor a train file it must quarantine: the
  // model file is renamed away (the step is no longer committed), then the
  // files saved with it go, then the renamed model file.
  if (r->world_size > 0) CKPTD_TRY(env_->RemoveFile(PathOf(CommitMarkerName(step))));
  const std::string deleting =
      PathOf(DeletingFileName(model_path.substr(model_path.rfind('/') + 1)));
  CKPTD_TRY(env_->RenameFile(model_path, deleting));
  Edit(catalog_).erase(step);
  CKPTD_TRY(env_->SyncDir(weights_dir_));
  if (!train_path.empty()) CKPTD_TRY(env_->RemoveFile(train_path));
  for (const auto& e : exports) CKPTD_TRY(env_->RemoveFile(e.path));
  if (!train_path.empty() || !exports.empty()) CKPTD_TRY(env_->SyncDir(weights_dir_));
  CKPTD_TRY(env_->RemoveFile(deleting));
  CKPTD_TRY(env_->SyncDir(weights_dir_));
  if (!exports.empty()) CKPTD_TRY(RelinkExports().status());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint64_t>> RunDir::DeleteAbove(uint64_t step) {
  std::vector<uint64_t> above;
  const auto first = catalog_->upper_bound(step);
  for (auto it = first; it != catalog_->end(); ++it) above.push_back(it->first);
  if (above.empty()) return above;
  std::optional<uint64_t> keep;
  if (first != catalog_->begin()) keep = std::prev(first)->first;
  CKPTD_TRY(PointLatestAt(keep));
  std::vector<uint64_t> deleted;
  for (auto it = above.rbegin(); it != above.rend(); ++it) {
    CKPTD_TRY(DeleteStep(*it));
    deleted.push_back(*it);
  }
  return deleted;
}

absl::StatusOr<CheckpointRecord> RunDir::Commit(CheckpointWriter* writer, Overwrite overwrite) {
  const uint64_t step = writer->step();
  CKPTD_TRY(CheckCanSave(step, overwrite));
  const CheckpointRecord* old = Find(step);
  const bool old_train = old != nullptr && !old->train_path.empty();
  const std::vector<ExportRecord> old_exports = old ? old->exports : std::vector<ExportRecord>{};
  const std::string train_final = PathOf(TrainFileName(step));
  const std::string train_next = PathOf(TrainNextFileName(step));

  // The new train file waits beside the old one under its own name, durably,
  // so whichever model file survives a crash finds its own training state.
  // Exports go to their final names too: recovery keeps one only if the
  // model file it names as its source exists.
  std::vector<std::string> placed;
  auto undo = [&] {
    for (const std::string& path : placed) (void)env_->RemoveFile(path);
  };
  if (const WrittenFile* train = writer->train()) {
    CKPTD_TRY(env_->RenameFile(train->temp_path, train_next));
    placed.push_back(train_next);
  }
  for (const auto& e : writer->exports()) {
    const std::string path = PathOf(e->written().final_name);
    if (absl::Status st = env_->RenameFile(e->written().temp_path, path); !st.ok()) {
      undo();
      return st;
    }
    placed.push_back(path);
  }
  if (!placed.empty()) {
    if (absl::Status synced = env_->SyncDir(weights_dir_); !synced.ok()) {
      undo();
      return synced;
    }
  }
  // The commit point: from here the checkpoint exists.
  absl::Status renamed =
      env_->RenameFile(writer->model().temp_path, PathOf(writer->model().final_name));
  if (!renamed.ok()) {
    undo();
    return renamed;
  }
  writer->Release();
  // Memory follows disk from the commit point on, whatever fails after it.
  CheckpointRecord record;
  record.step = step;
  record.model_path = PathOf(writer->model().final_name);
  record.model_bytes = writer->model().bytes;
  const gguf::Layout& layout = writer->model_layout();
  FillFromHeader(layout.metadata, layout.tensors.size(), &record);
  for (const auto& e : writer->exports()) {
    record.exports.push_back({.name = e->plan().name,
                              .path = PathOf(e->written().final_name),
                              .bytes = e->written().bytes,
                              .uuid = e->written().digest.uuid,
                              .profile = e->plan().profile,
                              .base = e->plan().base_export});
  }
  Edit(catalog_)[step] = record;

  CKPTD_TRY(env_->SyncDir(weights_dir_));
  if (const WrittenFile* train = writer->train()) {
    CKPTD_TRY(env_->RenameFile(train_next, train_final));
    record.train_path = train_final;
    record.train_bytes = train->bytes;
  } else if (old_train) {
    CKPTD_TRY(env_->RemoveFile(train_final));
  }
  Edit(catalog_)[step] = record;
  // An overwritten step's exports that this save did not write again.
  bool stale_exports = false;
  if (old != nullptr) {
    for (const auto& e : old_exports) {
      bool kept = std::any_of(record.exports.begin(), record.exports.end(),
                              [&](const ExportRecord& n) { return n.name == e.name; });
      if (!kept) {
        CKPTD_TRY(env_->RemoveFile(e.path));
        stale_exports = true;
      }
    }
  }
  if (latest_step() == step) {
    CKPTD_TRY(PointLatestAt(step));  // fsyncs the directory
  } else if (writer->has_train() || old_train || stale_exports) {
    CKPTD_TRY(env_->SyncDir(weights_dir_));
  }
  if (!record.exports.empty() || stale_exports) CKPTD_TRY(RelinkExports().status());
  return record;
}

absl::StatusOr<CheckpointRecord> RunDir::StagePart(CheckpointWriter* writer, Overwrite overwrite) {
  const uint64_t step = writer->step();
  CKPTD_TRY(CheckCanSave(step, overwrite));
  if (Find(step) != nullptr) {
    return absl::AlreadyExistsError(StrCat("step ", step, " is already committed here"));
  }
  const std::optional<SplitName> part = ParseSplitFileName(writer->model().final_name);
  if (!part) {
    return absl::InternalError(StrCat(writer->model().final_name, " is not a part's name"));
  }
  std::vector<std::string> placed;
  auto undo = [&] {
    for (const std::string& path : placed) (void)env_->RemoveFile(path);
  };
  // The train file first: a part found without its train file was never
  // staged whole, and a train file found alone is an orphan.
  CheckpointRecord record;
  if (const WrittenFile* train = writer->train()) {
    record.train_path = PathOf(train->final_name);
    record.train_bytes = train->bytes;
    CKPTD_TRY(env_->RenameFile(train->temp_path, record.train_path));
    placed.push_back(record.train_path);
  }
  record.model_path = PathOf(writer->model().final_name);
  if (absl::Status st = env_->RenameFile(writer->model().temp_path, record.model_path); !st.ok()) {
    undo();
    return st;
  }
  placed.push_back(record.model_path);
  writer->Release();
  if (absl::Status st = env_->SyncDir(weights_dir_); !st.ok()) {
    undo();
    return st;
  }
  record.step = step;
  record.model_bytes = writer->model().bytes;
  record.rank = part->rank;
  record.world_size = part->world_size;
  const gguf::Layout& layout = writer->model_layout();
  FillFromHeader(layout.metadata, layout.tensors.size(), &record);
  Edit(pending_)[step] = record;
  return record;
}

Catalog& RunDir::Edit(std::shared_ptr<Catalog>& c) {
  // Handed out only under the caller's lock, so a count of 1 cannot grow
  // meanwhile; a stale higher count only costs a needless copy.
  if (c.use_count() > 1) c = std::make_shared<Catalog>(*c);
  return *c;
}

absl::Status RunDir::WriteCommitMarker(uint64_t step, uint32_t rank, uint32_t world_size) {
  return env::WriteFileAtomically(
      env_, PathOf(CommitMarkerName(step)),
      StrCat("{\"step\": ", step, ", \"rank\": ", rank, ", \"world_size\": ", world_size, "}\n"));
}

absl::StatusOr<CheckpointRecord> RunDir::CommitPart(uint64_t step) {
  auto it = pending_->find(step);
  if (it == pending_->end()) {
    if (const CheckpointRecord* r = Find(step); r != nullptr && r->world_size > 0) return *r;
    return absl::NotFoundError(StrCat("step ", step, " has no part waiting here"));
  }
  CheckpointRecord record = it->second;
  // The commit point on this node.
  CKPTD_TRY(WriteCommitMarker(step, record.rank, record.world_size));
  Edit(pending_).erase(step);
  Edit(catalog_)[step] = record;
  if (latest_step() == step) CKPTD_TRY(PointLatestAt(step));
  return record;
}

absl::StatusOr<CheckpointRecord> RunDir::Adopt(uint64_t step, RecoveryReport* report) {
  CKPTD_ASSIGN_OR_RETURN(std::vector<std::string> names, env_->ListDir(weights_dir_));
  for (const std::string& name : names) {
    const std::optional<SplitName> part = ParseSplitFileName(name);
    if (part && part->step == step)
      CKPTD_TRY(WriteCommitMarker(step, part->rank, part->world_size));
  }
  CKPTD_TRY(Recover(report));
  const CheckpointRecord* r = Find(step);
  if (r == nullptr) {
    return absl::NotFoundError(
        StrCat("step ", step, " was placed in ", weights_dir_, " but is not a checkpoint there"));
  }
  return *r;
}

absl::Status RunDir::AbortPart(uint64_t step) {
  auto it = pending_->find(step);
  if (it == pending_->end()) return absl::OkStatus();
  const CheckpointRecord r = it->second;
  Edit(pending_).erase(step);
  for (const std::string& path : {r.model_path, r.train_path}) {
    if (path.empty()) continue;
    absl::Status st = env_->RemoveFile(path);
    if (!st.ok() && !absl::IsNotFound(st)) return st;
  }
  return env_->SyncDir(weights_dir_);
}

}  // namespace ckptd::storage
