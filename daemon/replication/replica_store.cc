// Replicas held for peers.
#include "daemon/replication/replica_store.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/file_names.h"

namespace ckptd::replication {
namespace {

constexpr std::string_view kIncoming = ".incoming.";

}  // namespace

absl::StatusOr<std::unique_ptr<ReplicaStore>> ReplicaStore::Open(env::Env* env,
                                                                 ReplicaStoreOptions options) {
  if (options.max_bytes == 0) {
    return absl::InvalidArgumentError("the replica store needs a byte budget (max_bytes > 0)");
  }
  CKPTD_TRY(env->CreateDirs(options.root));
  std::unique_ptr<ReplicaStore> s(new ReplicaStore(env, std::move(options)));
  CKPTD_ASSIGN_OR_RETURN(std::vector<std::string> runs, env->ListDir(s->options_.root));
  absl::MutexLock lock(&s->mu_);
  for (const std::string& run_id : runs) {
    if (!storage::IsValidRunId(run_id)) continue;
    const std::string dir = s->DirOf(run_id);
    auto names = env->ListDir(dir);
    if (!names.ok()) continue;
    for (const std::string& name : *names) {
      if (name.starts_with(kIncoming)) {
        (void)env->RemoveFile(StrCat(dir, "/", name));
        continue;
      }
      auto parsed = storage::ParseFileName(name);
      if (!parsed || parsed->kind != storage::FileKind::kModel) continue;
      auto record = storage::ReadCheckpointRecord(env, parsed->step, StrCat(dir, "/", name));
      if (!record.ok()) continue;  // checked again, and dropped, when read
      uint64_t bytes = record->model_bytes;
      if (auto train = env->Stat(StrCat(dir, "/", storage::TrainFileName(parsed->step)));
          train.ok()) {
        bytes += train->size;
      }
      ReplicaInfo info{.run_id = run_id,
                       .step = parsed->step,
                       .bytes = bytes,
                       .content_digest = record->content_digest,
                       .arrival = s->next_arrival_++};
      s->held_ += bytes;
      s->replicas_[run_id][parsed->step] = std::move(info);
    }
  }
  return s;
}

absl::StatusOr<std::unique_ptr<ReplicaStore::Incoming>> ReplicaStore::Begin(
    const std::string& run_id, uint64_t step, const std::string& origin,
    std::vector<ReplicaFileSpec> files) {
  if (!storage::IsValidRunId(run_id)) {
    return absl::InvalidArgumentError(
        StrCat("run_id '", Printable(run_id), "' must match [A-Za-z0-9._-]{1,128}"));
  }
  if (files.empty() || files.size() > 2 || files[0].name != storage::ModelFileName(step) ||
      (files.size() == 2 && files[1].name != storage::TrainFileName(step))) {
    return absl::InvalidArgumentError(StrCat("files: a replica of step ", step, " is ",
                                             storage::ModelFileName(step), " and optionally ",
                                             storage::TrainFileName(step), ", in that order"));
  }
  uint64_t total = 0;
  for (const ReplicaFileSpec& f : files) {
    if (f.size == 0 || f.size > options_.max_bytes) {
      return absl::ResourceExhaustedError(
          StrCat("replica of run '", run_id, "' step ", step, ": ", f.name, " is ", f.size,
                 " bytes, and this peer holds at most ", options_.max_bytes,
                 " bytes of replicas ([peers] max_bytes)"));
    }
    total += f.size;
  }
  if (total > options_.max_bytes) {
    return absl::ResourceExhaustedError(StrCat("replica of run '", run_id, "' step ", step, " is ",
                                               total, " bytes, and this peer holds at most ",
                                               options_.max_bytes,
                                               " bytes of replicas ([peers] max_bytes)"));
  }
  {
    absl::MutexLock lock(&mu_);
    // Room: the oldest arrivals go first.
    while (held_ + reserved_ + total > options_.max_bytes) {
      const ReplicaInfo* oldest = nullptr;
      for (const auto& [run, steps] : replicas_) {
        for (const auto& [s, info] : steps) {
          if (oldest == nullptr || info.arrival < oldest->arrival) oldest = &info;
        }
      }
      if (oldest == nullptr) {
        return absl::ResourceExhaustedError(
            StrCat("replica of run '", run_id, "' step ", step, " (", total,
                   " bytes): this peer's replica budget ([peers] max_bytes = ", options_.max_bytes,
                   ") is taken by replicas arriving now; try again"));
      }
      const std::string run = oldest->run_id;
      const uint64_t s = oldest->step;
      DropLocked(run, s, StrCat("room for run '", run_id, "' step ", step));
    }
    reserved_ += total;
  }
  const std::string dir = DirOf(run_id);
  if (absl::Status st = env_->CreateDirs(dir); !st.ok()) {
    Release(total);
    return st;
  }
  ReplicaInfo info{.run_id = run_id, .step = step, .origin = origin, .bytes = total};
  std::unique_ptr<Incoming> in(new Incoming(this, std::move(info), std::move(files), dir));
  if (absl::Status st = in->OpenNext(); !st.ok()) return st;  // ~Incoming releases
  return in;
}

ReplicaStore::Incoming::~Incoming() {
  if (!done_) Abandon();
}

void ReplicaStore::Incoming::Abandon() {
  done_ = true;
  if (out_) (void)out_->Close();
  out_.reset();
  for (const std::string& t : temps_) (void)store_->env_->RemoveFile(t);
  store_->Release(info_.bytes);
}

absl::Status ReplicaStore::Incoming::OpenNext() {
  if (out_) {
    CKPTD_TRY(out_->Sync());  // the env's contract (tmpfs: cheap)
    CKPTD_TRY(out_->Close());
  }
  out_.reset();
  if (file_ >= files_.size()) return absl::OkStatus();
  const std::string temp =
      StrCat(dir_, "/", kIncoming, files_[file_].name, ".", storage::NewSaveId());
  CKPTD_ASSIGN_OR_RETURN(out_, store_->env_->NewWritableFile(temp, env::DirectIo::kOff));
  temps_.push_back(temp);
  in_file_ = 0;
  return absl::OkStatus();
}

absl::Status ReplicaStore::Incoming::Write(std::string_view bytes) {
  while (!bytes.empty()) {
    if (file_ >= files_.size()) {
      return absl::InvalidArgumentError(StrCat("replica of run '", info_.run_id, "' step ",
                                               info_.step, ": more bytes than its files' sizes (",
                                               info_.bytes, ")"));
    }
    const uint64_t room = files_[file_].size - in_file_;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(room, bytes.size()));
    CKPTD_TRY(out_->Append(bytes.substr(0, n)));
    in_file_ += n;
    bytes.remove_prefix(n);
    if (in_file_ == files_[file_].size) {
      ++file_;
      CKPTD_TRY(OpenNext());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ReplicaInfo> ReplicaStore::Incoming::Finish() {
  if (file_ < files_.size()) {
    return absl::InvalidArgumentError(StrCat("replica of run '", info_.run_id, "' step ",
                                             info_.step, ": ", files_[file_].name, " ended after ",
                                             in_file_, " of ", files_[file_].size, " bytes"));
  }
  // Every digest checked before it counts as held.
  auto record = storage::VerifyStepFiles(store_->env_, info_.step, temps_[0],
                                         temps_.size() > 1 ? temps_[1] : std::string());
  if (!record.ok()) {
    return absl::DataLossError(StrCat("replica of run '", info_.run_id, "' step ", info_.step,
                                      " from ", info_.origin,
                                      " refused: ", record.status().message()));
  }
  info_.content_digest = record->content_digest;
  for (size_t i = temps_.size(); i-- > 0;) {  // the model file last
    CKPTD_TRY(store_->env_->RenameFile(temps_[i], StrCat(dir_, "/", files_[i].name)));
  }
  if (temps_.size() == 1)
    (void)store_->env_->RemoveFile(StrCat(dir_, "/", storage::TrainFileName(info_.step)));
  temps_.clear();
  done_ = true;
  store_->Arrived(info_);
  return info_;
}

void ReplicaStore::Release(uint64_t reserved) {
  absl::MutexLock lock(&mu_);
  reserved_ -= std::min(reserved_, reserved);
}

void ReplicaStore::Arrived(const ReplicaInfo& arrived) {
  absl::MutexLock lock(&mu_);
  reserved_ -= std::min(reserved_, arrived.bytes);
  auto& steps = replicas_[arrived.run_id];
  if (auto old = steps.find(arrived.step); old != steps.end()) held_ -= old->second.bytes;
  ReplicaInfo info = arrived;
  info.arrival = next_arrival_++;
  steps[arrived.step] = info;
  held_ += info.bytes;
  // Newer replicas of the run are an abandoned continuation; then keep_last.
  std::vector<uint64_t> drop;
  for (auto it = steps.upper_bound(arrived.step); it != steps.end(); ++it)
    drop.push_back(it->first);
  size_t left = steps.size() - drop.size();
  for (auto it = steps.begin();
       it != steps.end() && left > std::max<uint32_t>(1, options_.keep_last); ++it) {
    if (it->first == arrived.step) continue;
    drop.push_back(it->first);
    --left;
  }
  for (uint64_t s : drop) DropLocked(arrived.run_id, s, StrCat("newer replica ", arrived.step));
}

void ReplicaStore::DropLocked(const std::string& run_id, uint64_t step, std::string_view why) {
  auto run = replicas_.find(run_id);
  if (run == replicas_.end()) return;
  auto it = run->second.find(step);
  if (it == run->second.end()) return;
  const std::string dir = DirOf(run_id);
  (void)env_->RemoveFile(StrCat(dir, "/", storage::ModelFileName(step)));
  (void)env_->RemoveFile(StrCat(dir, "/", storage::TrainFileName(step)));
  held_ -= std::min(held_, it->second.bytes);
  spdlog::info("peers: replica evicted run={} step={} bytes={} why=\"{}\"", run_id, step,
               it->second.bytes, why);
  run->second.erase(it);
  if (run->second.empty()) replicas_.erase(run);
}

std::vector<ReplicaInfo> ReplicaStore::List(const std::string& run_id) const {
  absl::MutexLock lock(&mu_);
  std::vector<ReplicaInfo> out;
  for (const auto& [run, steps] : replicas_) {
    if (!run_id.empty() && run != run_id) continue;
    for (const auto& [step, info] : steps) out.push_back(info);
  }
  return out;
}

absl::StatusOr<std::vector<ReplicaFileSpec>> ReplicaStore::Files(const std::string& run_id,
                                                                 uint64_t step) {
  {
    absl::MutexLock lock(&mu_);
    auto run = replicas_.find(run_id);
    if (run == replicas_.end() || !run->second.contains(step)) {
      return absl::NotFoundError(
          StrCat("this peer holds no replica of run '", run_id, "' step ", step));
    }
  }
  const std::string dir = DirOf(run_id);
  std::vector<ReplicaFileSpec> files = {{StrCat(dir, "/", storage::ModelFileName(step)), 0}};
  const std::string train = StrCat(dir, "/", storage::TrainFileName(step));
  if (env_->Stat(train).ok()) files.push_back({train, 0});
  for (ReplicaFileSpec& f : files) {
    CKPTD_ASSIGN_OR_RETURN(auto st, env_->Stat(f.name));
    f.size = st.size;
  }
  return files;
}

absl::Status ReplicaStore::Check(const std::string& run_id, uint64_t step,
                                 const std::vector<ReplicaFileSpec>& files) {
  auto record = storage::VerifyStepFiles(env_, step, files[0].name,
                                         files.size() > 1 ? files[1].name : std::string());
  if (record.ok()) return absl::OkStatus();
  spdlog::error("peers: replica run={} step={} is damaged, dropped: {}", run_id, step,
                record.status().message());
  absl::MutexLock lock(&mu_);
  DropLocked(run_id, step, "damaged");
  return absl::DataLossError(StrCat("this peer's replica of run '", run_id, "' step ", step,
                                    " is damaged (dropped): ", record.status().message()));
}

absl::StatusOr<std::vector<ReplicaFileSpec>> ReplicaStore::Checked(const std::string& run_id,
                                                                   uint64_t step) {
  CKPTD_ASSIGN_OR_RETURN(std::vector<ReplicaFileSpec> files, Files(run_id, step));
  CKPTD_TRY(Check(run_id, step, files));
  return files;
}

uint64_t ReplicaStore::bytes() const {
  absl::MutexLock lock(&mu_);
  return held_;
}

}  // namespace ckptd::replication
