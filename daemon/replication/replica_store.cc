// Replicas held for peers.
#include "daemon/replication/replica_store.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/file_names.h"

namespace ckptd::replication {
namespace {

constexpr std::string_view kIncoming = ".incoming.";
constexpr std::string_view kRankDirPrefix = "rank-";

std::optional<uint32_t> ReplicaRankOf(const ReplicaInfo& r) {
  if (r.world_size == 0) return std::nullopt;
  return r.rank;
}

std::string ReplicaModelName(const ReplicaInfo& r) {
  return r.world_size ? storage::SplitFileName(r.step, r.rank, r.world_size)
                      : storage::ModelFileName(r.step);
}

std::string ReplicaTrainName(const ReplicaInfo& r) {
  return r.world_size ? storage::PartTrainFileName(r.step, r.rank, r.world_size)
                      : storage::TrainFileName(r.step);
}

}  // namespace

std::string ReplicaStore::KeyOf(const std::string& run_id, std::optional<uint32_t> rank) {
  return rank ? StrCat(run_id, "/", kRankDirPrefix, *rank) : run_id;
}

void ReplicaStore::ScanLocked(const std::string& key, const std::string& run_id) {
  const std::string dir = DirOf(key);
  auto names = env_->ListDir(dir);
  if (!names.ok()) return;
  for (const std::string& name : *names) {
    if (name.starts_with(kIncoming)) {
      (void)env_->RemoveFile(StrCat(dir, "/", name));
      continue;
    }
    auto parsed = storage::ParseFileName(name);
    if (!parsed ||
        (parsed->kind != storage::FileKind::kModel && parsed->kind != storage::FileKind::kPart)) {
      continue;
    }
    auto record = storage::ReadCheckpointRecord(env_, parsed->step, StrCat(dir, "/", name));
    if (!record.ok()) continue;  // checked again, and dropped, when read
    ReplicaInfo info{.run_id = run_id,
                     .step = parsed->step,
                     .content_digest = record->content_digest,
                     .arrival = next_arrival_++};
    if (parsed->kind == storage::FileKind::kPart) {
      info.rank = parsed->rank;
      info.world_size = parsed->world_size;
    }
    info.bytes = record->model_bytes;
    if (auto train = env_->Stat(StrCat(dir, "/", ReplicaTrainName(info))); train.ok()) {
      info.bytes += train->size;
    }
    held_ += info.bytes;
    replicas_[key][parsed->step] = std::move(info);
  }
}

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
    s->ScanLocked(run_id, run_id);
    auto names = env->ListDir(s->DirOf(run_id));
    if (!names.ok()) continue;
    for (const std::string& name : *names) {
      uint32_t rank = 0;
      if (name.starts_with(kRankDirPrefix) &&
          absl::SimpleAtoi(name.substr(kRankDirPrefix.size()), &rank)) {
        s->ScanLocked(StrCat(run_id, "/", name), run_id);
      }
    }
  }
  return s;
}

absl::StatusOr<std::unique_ptr<ReplicaStore::Incoming>> ReplicaStore::Begin(
    const std::string& run_id, uint32_t rank, uint32_t world_size, uint64_t step,
    const std::string& origin, std::vector<ReplicaFileSpec> files) {
  if (!storage::IsValidRunId(run_id)) {
    return absl::InvalidArgumentError(
        StrCat("run_id '", Printable(run_id), "' must match [A-Za-z0-9._-]{1,128}"));
  }
  if (world_size > 0 && (rank >= world_size || world_size > 65535)) {
    return absl::InvalidArgumentError(StrCat("rank ", rank, " of world_size ", world_size,
                                             ": a part's rank is below its world "
                                             "size, which is at most 65535"));
  }
  ReplicaInfo info{
      .run_id = run_id, .step = step, .rank = rank, .world_size = world_size, .origin = origin};
  const std::string model_name = ReplicaModelName(info), train_name = ReplicaTrainName(info);
  if (files.empty() || files.size() > 2 || files[0].name != model_name ||
      (files.size() == 2 && files[1].name != train_name)) {
    return absl::InvalidArgumentError(StrCat("files: a replica of step ", step, " is ", model_name,
                                             " and optionally ", train_name, ", in that order"));
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
      std::string oldest_key;
      for (const auto& [key, steps] : replicas_) {
        for (const auto& [s, held] : steps) {
          if (oldest == nullptr || held.arrival < oldest->arrival) {
            oldest = &held;
            oldest_key = key;
          }
        }
      }
      if (oldest == nullptr) {
        return absl::ResourceExhaustedError(
            StrCat("replica of run '", run_id, "' step ", step, " (", total,
                   " bytes): this peer's replica budget ([peers] max_bytes = ", options_.max_bytes,
                   ") is taken by replicas arriving now; try again"));
      }
      const uint64_t s = oldest->step;
      DropLocked(oldest_key, s, StrCat("room for run '", run_id, "' step ", step));
    }
    reserved_ += total;
  }
  const std::string dir = DirOf(KeyOf(run_id, ReplicaRankOf(info)));
  if (absl::Status st = env_->CreateDirs(dir); !st.ok()) {
    Release(total);
    return st;
  }
  info.bytes = total;
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
    (void)store_->env_->RemoveFile(StrCat(dir_, "/", ReplicaTrainName(info_)));
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
  const std::string key = KeyOf(arrived.run_id, ReplicaRankOf(arrived));
  auto& steps = replicas_[key];
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
  for (uint64_t s : drop) DropLocked(key, s, StrCat("newer replica ", arrived.step));
}

void ReplicaStore::DropLocked(const std::string& key, uint64_t step, std::string_view why) {
  auto run = replicas_.find(key);
  if (run == replicas_.end()) return;
  auto it = run->second.find(step);
  if (it == run->second.end()) return;
  const std::string dir = DirOf(key);
  (void)env_->RemoveFile(StrCat(dir, "/", ReplicaModelName(it->second)));
  (void)env_->RemoveFile(StrCat(dir, "/", ReplicaTrainName(it->second)));
  held_ -= std::min(held_, it->second.bytes);
  spdlog::info("peers: replica evicted run={} step={}{} bytes={} why=\"{}\"", it->second.run_id,
               step, it->second.world_size ? StrCat(" rank=", it->second.rank) : std::string(),
               it->second.bytes, why);
  run->second.erase(it);
  if (run->second.empty()) replicas_.erase(run);
}

std::vector<ReplicaInfo> ReplicaStore::List(const std::string& run_id) const {
  absl::MutexLock lock(&mu_);
  std::vector<ReplicaInfo> out;
  for (const auto& [key, steps] : replicas_) {
    for (const auto& [step, info] : steps) {
      if (run_id.empty() || info.run_id == run_id) out.push_back(info);
    }
  }
  return out;
}

absl::StatusOr<std::vector<ReplicaFileSpec>> ReplicaStore::Files(const std::string& run_id,
                                                                 std::optional<uint32_t> rank,
                                                                 uint64_t step) {
  const std::string key = KeyOf(run_id, rank);
  ReplicaInfo info;
  {
    absl::MutexLock lock(&mu_);
    auto run = replicas_.find(key);
    if (run == replicas_.end() || !run->second.contains(step)) {
      return absl::NotFoundError(StrCat("this peer holds no replica of run '", run_id, "' step ",
                                        step, rank ? StrCat(" rank ", *rank) : std::string()));
    }
    info = run->second.at(step);
  }
  const std::string dir = DirOf(key);
  std::vector<ReplicaFileSpec> files = {{StrCat(dir, "/", ReplicaModelName(info)), 0}};
  const std::string train = StrCat(dir, "/", ReplicaTrainName(info));
  if (env_->Stat(train).ok()) files.push_back({train, 0});
  for (ReplicaFileSpec& f : files) {
    CKPTD_ASSIGN_OR_RETURN(auto st, env_->Stat(f.name));
    f.size = st.size;
  }
  return files;
}

absl::Status ReplicaStore::Check(const std::string& run_id, std::optional<uint32_t> rank,
                                 uint64_t step, const std::vector<ReplicaFileSpec>& files) {
  auto record = storage::VerifyStepFiles(env_, step, files[0].name,
                                         files.size() > 1 ? files[1].name : std::string());
  if (record.ok()) return absl::OkStatus();
  spdlog::error("peers: replica run={} step={} is damaged, dropped: {}", run_id, step,
                record.status().message());
  absl::MutexLock lock(&mu_);
  DropLocked(KeyOf(run_id, rank), step, "damaged");
  return absl::DataLossError(StrCat("this peer's replica of run '", run_id, "' step ", step,
                                    " is damaged (dropped): ", record.status().message()));
}

absl::StatusOr<std::vector<ReplicaFileSpec>> ReplicaStore::Checked(const std::string& run_id,
                                                                   std::optional<uint32_t> rank,
                                                                   uint64_t step) {
  CKPTD_ASSIGN_OR_RETURN(std::vector<ReplicaFileSpec> files, Files(run_id, rank, step));
  CKPTD_TRY(Check(run_id, rank, step, files));
  return files;
}

uint64_t ReplicaStore::bytes() const {
  absl::MutexLock lock(&mu_);
  return held_;
}

}  // namespace ckptd::replication
