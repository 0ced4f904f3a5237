// The upload worker: steps in commit order, files in parallel parts, the
// manifest and `latest` last, every step of progress in the state file.
#include "daemon/tier/uploader.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <map>

#include "absl/time/clock.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/gguf/reader.h"
#include "daemon/policy/part_plan.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/split_part.h"
#include "daemon/tier/remote_keys.h"

namespace ckptd::tier {
namespace {

std::string Base(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The store's ETag for a body must be the MD5 computed here: anything else
// means it holds other bytes than those sent. No MD5 ("": a transport that
// proves the bytes arrived, StoreCapabilities) checks nothing here.
absl::Status CheckEtag(const std::string& what, const std::string& got, const std::string& sent) {
  if (got == sent || (sent.empty() && !got.empty())) return absl::OkStatus();
  return absl::DataLossError(
      StrCat(what, ": the store's ETag ", got, " is not the MD5 of the bytes sent, ", sent));
}

// The step the calling thread is uploading (the worker, inside Upload):
// Retry stops retrying once that step is withdrawn.
thread_local const StepUpload* t_uploading = nullptr;

}  // namespace

Uploader::Uploader(env::Env* env, ObjectStore* store, TierSettings settings, const TierRuns* runs,
                   UploadObserver* observer)
    : env_(env), store_(store), settings_(std::move(settings)), runs_(runs), observer_(observer) {}

Uploader::~Uploader() { Stop(); }

void Uploader::Start() {
  absl::MutexLock lock(&mu_);
  if (worker_.joinable()) return;
  stop_ = false;
  worker_ = std::thread([this] { Loop(); });
}

void Uploader::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  if (worker_.joinable()) worker_.join();
}

bool Uploader::stopping() const {
  absl::MutexLock lock(&mu_);
  return stop_;
}

RunKeys Uploader::KeysOf(const std::string& run_id) const {
  std::optional<std::string> prefix = runs_ ? runs_->PrefixOf(run_id) : std::nullopt;
  return RunKeys(prefix.value_or(settings_.prefix), run_id);
}

UploadState Uploader::LoadState(const std::string& run_dir) {
  const std::string path = StrCat(run_dir, "/", kUploadStateFile);
  auto text = env::ReadWholeFile(env_, path);
  if (!text.ok()) return {};
  absl::StatusOr<UploadState> state = UploadState::Parse(*text, path);
  if (!state.ok()) {
    spdlog::warn("tier: {}; uploads of the run start over", state.status().message());
    return {};
  }
  return *std::move(state);
}

absl::Status Uploader::UpdateState(const std::string& run_dir,
                                   const std::function<void(UploadState&)>& change) {
  absl::MutexLock lock(&state_file_mu_);
  UploadState state = LoadState(run_dir);
  change(state);
  return env::WriteFileAtomically(env_, StrCat(run_dir, "/", kUploadStateFile), state.ToJson());
}

absl::Status Uploader::Enqueue(StepUpload upload) {
  const uint64_t step = upload.record.step;
  if (absl::Status st = UpdateState(upload.run_dir,
                                    [&](UploadState& s) {
                                      s.waiting.try_emplace(step);
                                      s.withdrawn.erase(step);  // saved anew: its keys are its own
                                    });
      !st.ok()) {
    return st;
  }
  absl::MutexLock lock(&mu_);
  std::erase_if(withdrawals_,
                [&](const Withdrawal& w) { return w.run_id == upload.run_id && w.step == step; });
  run_dirs_[upload.run_id] = upload.run_dir;
  states_[upload.run_id][upload.record.step] = "queued";
  queue_.push_back({.upload = std::move(upload)});
  cv_.Signal();
  return absl::OkStatus();
}

absl::Status Uploader::Recover(const std::string& run_id, const std::string& run_dir,
                               const std::vector<storage::CheckpointRecord>& local,
                               std::optional<uint32_t> rank) {
  const UploadState state = LoadState(run_dir);
  std::set<uint64_t> waiting;
  const std::set<uint64_t>& uploaded = state.uploaded;
  std::set<std::string> known_ids;
  for (const auto& [step, w] : state.waiting) {
    waiting.insert(step);
    for (const auto& [name, f] : w.files) {
      if (!f.upload_id.empty()) known_ids.insert(f.upload_id);
    }
  }
  const uint64_t newest_known =
      std::max(waiting.empty() ? 0 : *waiting.rbegin(), uploaded.empty() ? 0 : *uploaded.rbegin());
  std::vector<StepUpload> queue;
  std::set<uint64_t> gone = waiting;
  for (const storage::CheckpointRecord& r : local) {
    if (waiting.count(r.step)) {
      gone.erase(r.step);
      queue.push_back({.run_id = run_id, .run_dir = run_dir, .record = r});
    } else if (!uploaded.count(r.step) && r.step > newest_known) {
      queue.push_back({.run_id = run_id, .run_dir = run_dir, .record = r});
    }
  }
  // Steps deleted locally before they were uploaded: nothing to send.
  if (!gone.empty()) {
    CKPTD_TRY(UpdateState(run_dir, [&](UploadState& s) {
      for (uint64_t step : gone) s.waiting.erase(step);
    }));
    for (uint64_t step : gone) {
      spdlog::info("tier: run={} step={} was deleted locally before its upload; skipped", run_id,
                   step);
    }
  }
  for (auto& up : queue) CKPTD_TRY(Enqueue(std::move(up)));
  {
    absl::MutexLock lock(&mu_);
    // Withdrawn parts whose deletes a stop cut short: both again.
    for (const auto& [step, keys] : state.withdrawn) {
      withdrawals_.push_back({.run_id = run_id, .run_dir = run_dir, .step = step, .keys = keys});
    }
    for (uint64_t s : uploaded) states_[run_id].try_emplace(s, "uploaded");
    run_dirs_[run_id] = run_dir;
  }
  // Multipart uploads of this run that no state names (a daemon died
  // between creating one and recording it, or its step was dropped) are
  // aborted by the worker before it uploads anything: the store may be
  // down now, and the daemon's start does not wait for it.
  absl::MutexLock lock(&mu_);
  stale_checks_.push_back({run_id, std::move(known_ids), rank});
  cv_.Signal();
  return absl::OkStatus();
}

absl::Status Uploader::AbortStale(const StaleCheck& check) {
  const std::string prefix = KeysOf(check.run_id).root();
  return Retry([&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(std::vector<MultipartUpload> open, store_->ListMultipartUploads(prefix));
    for (const MultipartUpload& u : open) {
      if (check.known_ids.count(u.upload_id)) continue;
      if (check.rank) {  // a multi-rank run: the other ranks' uploads are other nodes'
        auto parsed = storage::ParseFileName(Base(u.key));
        if (!parsed ||
            (parsed->kind != storage::FileKind::kPart &&
             parsed->kind != storage::FileKind::kPartTrain) ||
            parsed->rank != *check.rank) {
          continue;
        }
      }
      spdlog::info("tier: aborting a stale multipart upload run={} key={} upload_id={}",
                   check.run_id, u.key, u.upload_id);
      CKPTD_TRY(store_->AbortMultipartUpload(u.key, u.upload_id));
    }
    return absl::OkStatus();
  });
}

absl::Status Uploader::MarkUploaded(const std::string& run_id, const std::string& run_dir,
                                    uint64_t step) {
  CKPTD_TRY(UpdateState(run_dir, [&](UploadState& s) { s.uploaded.insert(step); }));
  absl::MutexLock lock(&mu_);
  run_dirs_[run_id] = run_dir;
  states_[run_id][step] = "uploaded";
  return absl::OkStatus();
}

Uploader::Health Uploader::health() const {
  absl::MutexLock lock(&mu_);
  return health_;
}

std::string Uploader::StateOf(const std::string& run_id, uint64_t step) const {
  absl::MutexLock lock(&mu_);
  auto run = states_.find(run_id);
  if (run == states_.end()) return "";
  auto it = run->second.find(step);
  return it == run->second.end() ? "" : it->second;
}

size_t Uploader::queue_depth() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

void Uploader::SetHealth(const absl::Status& st) {
  absl::MutexLock lock(&mu_);
  if (st.ok()) {
    if (!health_.healthy) spdlog::info("tier: the object store answers again");
    health_ = {};
  } else {
    if (health_.healthy) spdlog::warn("tier: unhealthy: {}", st.message());
    health_ = {.healthy = false, .error = std::string(st.message())};
  }
}

absl::Status Uploader::Retry(const std::function<absl::Status()>& op) {
  double wait = settings_.retry_initial_s;
  while (true) {
    if (t_uploading != nullptr) {
      absl::MutexLock lock(&mu_);
      if (Withdrawn(t_uploading->run_id, t_uploading->record.step)) {
        return absl::AbortedError("withdrawn while it was being sent");
      }
    }
    absl::Status st = op();
    if (st.ok() || !IsTransient(st)) {
      SetHealth(st.ok() || IsNoSuchUpload(st) ? absl::OkStatus() : st);
      return st;
    }
    SetHealth(st);
    absl::MutexLock lock(&mu_);
    if (stop_) return absl::CancelledError("the daemon is stopping");
    cv_.WaitWithTimeout(&mu_, absl::Seconds(wait));
    if (stop_) return absl::CancelledError("the daemon is stopping");
    wait = std::min(wait * 2, settings_.retry_max_s);
  }
}

namespace {

constexpr uint64_t kMaxCopyPart = 5ull << 30;  // S3's largest part

// The ranges of `mine` (a file) equal to ranges of `theirs` (the object it
// may copy from): each tensor with the same name, type, shape and digest,
// with its padding where both files pad alike.
std::vector<policy::SameRange> EqualRanges(const gguf::GgufFile& mine,
                                           const gguf::GgufFile& theirs) {
  std::vector<policy::SameRange> out;
  absl::StatusOr<std::vector<gguf::Digest128>> mine_d = gguf::StoredTensorDigests(mine);
  if (!mine_d.ok() || mine_d->size() != mine.tensors.size()) return out;
  for (const gguf::SameTensor& m : gguf::TensorsAlsoIn(mine.tensors, theirs)) {
    if (!((*mine_d)[m.index] == m.digest)) continue;
    const gguf::TensorInfo& t = mine.tensors[m.index];
    uint64_t length = t.nbytes;
    if (mine.alignment == theirs.alignment) (void)gguf::AlignUp(t.nbytes, mine.alignment, &length);
    const uint64_t at = mine.data_offset + t.offset;
    const uint64_t from = theirs.data_offset + theirs.tensors[m.other].offset;
    if (at + length > mine.file_size || from + length > theirs.file_size) length = t.nbytes;
    out.push_back({.offset = at, .length = length, .src_offset = from});
  }
  return out;
}

}  // namespace

Uploader::FilePlan Uploader::PlanFile(const StepUpload& up, const env::RandomAccessFile& file,
                                      const std::string& role, uint64_t size, bool copy) {
  const uint64_t part = settings_.part_size;
  FilePlan plain{.parts = policy::PlanParts(size, part, kMinPartSize, kMaxCopyPart, {})};
  if (!copy || !settings_.part_copy) return plain;
  const uint64_t step = up.record.step;
  std::optional<uint64_t> previous;
  for (uint64_t s : LoadState(up.run_dir).uploaded) {
    if (s < step) previous = s;
  }
  if (!previous) return plain;
  auto note = [&](const std::string& why) {
    spdlog::debug("tier: run={} step={} {}: every part sent ({})", up.run_id, step, role, why);
    return plain;
  };
  absl::StatusOr<StepManifest> manifest = RemoteManifest(up.run_id, *previous);
  if (!manifest.ok()) return note(std::string(manifest.status().message()));
  const RemoteFile* source = nullptr;
  for (const RemoteFile& f : manifest->facts.files) {
    const bool same_rank = up.record.world_size == 0 ? !f.rank : f.rank == up.record.rank;
    if (f.role == role && same_rank) source = &f;
  }
  if (source == nullptr) return note(StrCat("step ", *previous, " has no ", role, " file"));
  absl::StatusOr<gguf::GgufFile> mine = gguf::ReadHeader(file);
  if (!mine.ok()) return note(std::string(mine.status().message()));
  ObjectSource remote(store_, source->key, source->size);
  absl::StatusOr<gguf::GgufFile> theirs = gguf::ReadHeader(remote);
  if (!theirs.ok()) return note(std::string(theirs.status().message()));
  FilePlan plan{.parts = policy::PlanParts(size, part, kMinPartSize, kMaxCopyPart,
                                           EqualRanges(*mine, *theirs)),
                .source_key = source->key};
  const bool copies = std::any_of(plan.parts.begin(), plan.parts.end(),
                                  [](const policy::PlannedPart& p) { return p.copy_from; });
  if (!copies || plan.parts.size() > static_cast<size_t>(kMaxParts)) return note("nothing to copy");
  std::string layout = source->key;
  for (const policy::PlannedPart& p : plan.parts) {
    StrAppend(&layout, ";", p.offset, "+", p.length, p.copy_from ? StrCat("@", *p.copy_from) : "");
  }
  plan.layout = StrCat("copy:", Md5Hex(layout));
  return plan;
}

absl::Status Uploader::UploadFile(const StepUpload& up, const std::string& path,
                                  const std::string& name, const std::string& role, uint64_t size,
                                  std::string* key_out, std::string* etag, uint64_t* copied,
                                  std::vector<uint64_t>* part_lengths) {
  const uint64_t step = up.record.step;
  *copied = 0;
  part_lengths->clear();
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::RandomAccessFile> file, env_->OpenForRead(path));
  // Parts are read past the page cache (a committed file was written with
  // O_DIRECT, so a buffered read would fill the cache from disk first and
  // copy out of it: most of the uploader's kernel time).
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::RandomAccessFile> direct,
                         env_->OpenForDirectRead(path));
  const env::DirectReadSource parts_file(std::move(direct));
  const uint64_t part = settings_.part_size;
  // Over a transport that proves the bytes arrived (TLS), sent bodies are
  // not MD5-summed; copied parts always are (the store made those bytes).
  const bool send_md5 = !store_->capabilities().transport_protects_bytes;
  std::string& key = *key_out;
  key = KeysOf(up.run_id).Object(name);
  if (size <= part) {
    std::string body(size, '\0');
    CKPTD_ASSIGN_OR_RETURN(size_t n, file->ReadUpTo(0, size, body.data()));
    if (n != size) return absl::DataLossError(StrCat(path, ": shorter than its ", size, " bytes"));
    const std::string md5 = send_md5 ? Md5Hex(body) : std::string();
    CKPTD_TRY(Retry([&]() -> absl::Status {
      CKPTD_ASSIGN_OR_RETURN(*etag, store_->Put(key, body, Precondition::kNone, md5));
      return CheckEtag(StrCat("PUT ", key), *etag, md5);
    }));
    return Verify(key, size, *etag);
  }
  bool copy = true;
  for (int attempt = 0;; ++attempt) {
    const FilePlan plan = PlanFile(up, *file, role, size, copy);
    const size_t nparts = plan.parts.size();
    // The upload this step's state names, with the parts already done.
    std::string upload_id;
    std::vector<std::string> etags(nparts);
    {
      const UploadState state = LoadState(up.run_dir);
      const UploadState::FileProgress* f = nullptr;
      if (auto w = state.waiting.find(step); w != state.waiting.end()) {
        if (auto it = w->second.files.find(name); it != w->second.files.end()) f = &it->second;
      }
      if (f && f->part_size == part && f->layout == plan.layout && !f->upload_id.empty()) {
        upload_id = f->upload_id;
        // The key it was started with (the run's prefix may have changed since).
        if (!f->key.empty()) key = f->key;
        for (size_t i = 0; i < std::min(nparts, f->parts.size()); ++i) etags[i] = f->parts[i];
      } else if (f && !f->upload_id.empty()) {
        // Another layout (the previous step's object changed, say): that
        // upload is of no use; it goes, and this one starts afresh.
        (void)store_->AbortMultipartUpload(f->key.empty() ? key : f->key, f->upload_id);
      }
    }
    if (upload_id.empty()) {
      CKPTD_TRY(Retry([&]() -> absl::Status {
        CKPTD_ASSIGN_OR_RETURN(upload_id, store_->CreateMultipartUpload(key));
        return absl::OkStatus();
      }));
      CKPTD_TRY(UpdateState(up.run_dir, [&](UploadState& s) {
        s.waiting[step].files[name] = {
            .upload_id = upload_id, .key = key, .part_size = part, .layout = plan.layout};
      }));
    } else {
      spdlog::info("tier: resuming run={} step={} file={} upload_id={} ({} of {} parts done)",
                   up.run_id, step, name, upload_id,
                   std::count_if(etags.begin(), etags.end(), [](auto& e) { return !e.empty(); }),
                   nparts);
    }
    // Parts in parallel, each thread with one part-sized buffer. A copied
    // part's bytes are read here too: its ETag (the MD5 of what the store
    // copied) must be the MD5 of this file's bytes.
    const size_t threads = static_cast<size_t>(std::max<uint64_t>(
        1, std::min<uint64_t>(static_cast<uint64_t>(std::max(1, settings_.parallel_parts)),
                              settings_.max_memory_bytes / part)));
    std::atomic<size_t> next{0};
    absl::Mutex result_mu;
    absl::Status result;
    auto worker = [&] {
      std::string buffer;
      while (true) {
        const size_t i = next.fetch_add(1);
        if (i >= nparts) return;
        {
          absl::MutexLock lock(&result_mu);
          if (!result.ok() || !etags[i].empty()) continue;
        }
        const policy::PlannedPart& p = plan.parts[i];
        absl::Status st;
        std::string tag, md5;
        if (p.copy_from) {
          Md5Stream sum;
          for (uint64_t at = 0; st.ok() && at < p.length;) {
            const uint64_t n = std::min(part, p.length - at);
            buffer.resize(n);
            st = parts_file.ReadAt(p.offset + at, n, buffer.data());
            sum.Update(buffer);
            at += n;
          }
          md5 = sum.FinishHex();
          if (st.ok()) {
            st = Retry([&]() -> absl::Status {
              CKPTD_ASSIGN_OR_RETURN(
                  tag, store_->UploadPartCopy(key, upload_id, static_cast<int>(i + 1),
                                              plan.source_key, {*p.copy_from, p.length}));
              return CheckEtag(StrCat("copy part ", i + 1, " of ", key, " from ", plan.source_key),
                               tag, md5);
            });
          }
        } else {
          buffer.resize(p.length);
          st = parts_file.ReadAt(p.offset, p.length, buffer.data());
          if (st.ok()) {
            if (send_md5) md5 = Md5Hex(buffer);
            st = Retry([&]() -> absl::Status {
              CKPTD_ASSIGN_OR_RETURN(
                  tag, store_->UploadPart(key, upload_id, static_cast<int>(i + 1), buffer, md5));
              return CheckEtag(StrCat("upload part ", i + 1, " of ", key), tag, md5);
            });
          }
        }
        if (st.ok()) {
          st = UpdateState(up.run_dir, [&](UploadState& s) {
            std::vector<std::string>& parts = s.waiting[step].files[name].parts;
            if (parts.size() <= i) parts.resize(i + 1);
            parts[i] = tag;
          });
        }
        absl::MutexLock lock(&result_mu);
        if (st.ok()) {
          etags[i] = tag;
        } else if (result.ok()) {
          result = st;
        }
      }
    };
    std::vector<std::thread> pool;
    for (size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (std::thread& t : pool) t.join();
    if (result.ok()) {
      result = Retry([&]() -> absl::Status {
        CKPTD_ASSIGN_OR_RETURN(*etag, store_->CompleteMultipartUpload(key, upload_id, etags));
        return CheckEtag(StrCat("complete ", key), *etag, MultipartEtag(etags));
      });
    }
    if (result.ok()) {
      for (const policy::PlannedPart& p : plan.parts) {
        *copied += p.copy_from ? p.length : 0;
        if (!plan.layout.empty()) part_lengths->push_back(p.length);
      }
      return Verify(key, size, *etag);
    }
    const bool copy_refused = !plan.source_key.empty() && !IsTransient(result) && copy;
    if (!(IsNoSuchUpload(result) || copy_refused) || attempt > 1) return result;
    if (copy_refused) {
      // A copy the store refused or got wrong (its ETag is not this file's
      // bytes' MD5): this file goes up again with every byte sent.
      spdlog::warn("tier: run={} step={} {}: copying from {} failed ({}); sending every part",
                   up.run_id, step, name, plan.source_key, result.message());
      (void)store_->AbortMultipartUpload(key, upload_id);
      copy = false;
    } else {
      spdlog::warn("tier: the store forgot upload {} of {}; starting it again", upload_id, key);
    }
    CKPTD_TRY(UpdateState(up.run_dir, [&](UploadState& s) { s.waiting[step].files.erase(name); }));
  }
}

// What the store holds now is what was sent: its size, and its ETag (the
// MD5 of the bytes, or of the parts' MD5s) equal to the one computed here.
absl::Status Uploader::Verify(const std::string& key, uint64_t size, const std::string& etag) {
  std::optional<ObjectInfo> head;
  CKPTD_TRY(Retry([&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(head, store_->Head(key));
    return absl::OkStatus();
  }));
  if (!head) return absl::DataLossError(StrCat("verify ", key, ": the object is not in the store"));
  if (head->size != size || head->etag != etag) {
    return absl::DataLossError(StrCat("verify ", key, ": the store holds ", head->size,
                                      " bytes with ETag ", head->etag, "; sent ", size,
                                      " bytes with ETag ", etag));
  }
  return absl::OkStatus();
}

void Uploader::NotifyUploaded(const StepUpload& up, uint64_t bytes, uint64_t copied,
                              double seconds) {
  {
    // Before anyone hears of it: an observer that asks StateOf gets the same answer.
    absl::MutexLock lock(&mu_);
    states_[up.run_id][up.record.step] = "uploaded";
  }
  if (observer_ == nullptr) return;
  observer_->OnUploadEvent({.type = UploadEventType::kUploaded,
                            .run_id = up.run_id,
                            .step = up.record.step,
                            .bytes = bytes,
                            .copied_bytes = copied,
                            .seconds = seconds});
}

void Uploader::TestPause() {
  if (settings_.test_pause_s > 0) absl::SleepFor(absl::Seconds(settings_.test_pause_s));
}

absl::Status Uploader::Upload(const Job& job) {
  const StepUpload& up = job.upload;
  const storage::CheckpointRecord& r = up.record;
  struct File {
    std::string path, name, role, content_digest;
    uint64_t bytes;
  };
  std::vector<File> files = {
      {r.model_path, Base(r.model_path), "model", r.content_digest, r.model_bytes}};
  if (!r.train_path.empty())
    files.push_back({r.train_path, Base(r.train_path), "train", "", r.train_bytes});
  for (const storage::ExportRecord& e : r.exports) {
    files.push_back({e.path, Base(e.path), "export:" + e.name, "", e.bytes});
  }
  const bool part = r.world_size > 0;
  const double start = NowSeconds();
  const RunKeys keys = KeysOf(up.run_id);
  StepFacts facts{.run_id = up.run_id,
                  .step = r.step,
                  .metrics = r.metrics,
                  .uuid = r.uuid,
                  .content_digest = r.content_digest,
                  .time_utc = r.time_utc,
                  .part_size = settings_.part_size};
  uint64_t bytes = 0, copied = 0;
  for (const File& f : files) {
    auto st = env_->Stat(f.path);
    if (!st.ok()) {
      return absl::NotFoundError(StrCat(f.path, " is gone (deleted locally before its upload)"));
    }
    std::string key, etag;
    uint64_t file_copied = 0;
    std::vector<uint64_t> part_lengths;
    CKPTD_TRY(
        UploadFile(up, f.path, f.name, f.role, st->size, &key, &etag, &file_copied, &part_lengths));
    TestPause();
    bytes += st->size;
    copied += file_copied;
    RemoteFile entry{.name = f.name,
                     .key = key,
                     .role = f.role,
                     .size = st->size,
                     .etag = etag,
                     .content_digest = f.content_digest,
                     .copied_bytes = file_copied,
                     .part_lengths = std::move(part_lengths)};
    if (part) entry.rank = r.rank;
    facts.files.push_back(std::move(entry));
  }
  if (part) return ReportPart(up, std::move(facts), bytes, start);
  // The commit record of the step in the store, then latest: last.
  const std::string manifest_key = keys.Manifest(r.step);
  const std::string manifest_text = StepManifest{.facts = std::move(facts)}.ToJson();
  CKPTD_TRY(Retry([&]() -> absl::Status {
    return store_->Put(manifest_key, manifest_text, Precondition::kNone, {}).status();
  }));
  TestPause();
  const UploadState before = LoadState(up.run_dir);
  if (before.uploaded.empty() || *before.uploaded.rbegin() <= r.step) {
    const std::string latest = LatestRecord{.step = r.step, .manifest = manifest_key}.ToJson();
    CKPTD_TRY(Retry([&]() -> absl::Status {
      return store_->Put(keys.Latest(), latest, Precondition::kNone, {}).status();
    }));
    TestPause();
  }
  std::vector<uint64_t> forgotten;
  CKPTD_TRY(UpdateState(up.run_dir, [&](UploadState& s) {
    s.waiting.erase(r.step);
    s.uploaded.insert(r.step);
    // Only what is still asked about: steps still on the node, and the
    // newest (Recover and latest compare with it). The file stays small
    // however long the run.
    const uint64_t newest_done = *s.uploaded.rbegin();
    for (auto it = s.uploaded.begin(); it != s.uploaded.end();) {
      const bool keep =
          *it == newest_done || env_->Stat(StrCat(up.run_dir, "/", storage::kWeightsDir, "/",
                                                  storage::ModelFileName(*it)))
                                    .ok();
      if (keep) {
        ++it;
      } else {
        forgotten.push_back(*it);
        it = s.uploaded.erase(it);
      }
    }
  }));
  if (!forgotten.empty()) {
    absl::MutexLock lock(&mu_);
    for (uint64_t s : forgotten) states_[up.run_id].erase(s);
  }
  const double seconds = NowSeconds() - start;
  if (RemoteRetentionOf(up.run_id)) {
    auto applied = PlanRemote(up.run_id, /*apply=*/true, /*retry=*/true);
    if (!applied.ok()) {
      spdlog::warn("tier: remote retention run={}: {}", up.run_id, applied.status().message());
    }
  }
  spdlog::info(
      "tier: uploaded run={} step={} files={} bytes={} copied_in_store={} seconds={:.3f} ({:.0f} "
      "MB/s sent)",
      up.run_id, r.step, files.size(), bytes, copied, seconds,
      seconds > 0 ? static_cast<double>(bytes - copied) / seconds / 1e6 : 0.0);
  NotifyUploaded(up, bytes, copied, seconds);
  return absl::OkStatus();
}

// A multi-rank run's part is uploaded: its report for the coordinator
// (what it holds, where its files went), then the state. The step's
// manifest and `latest` are the coordinator's to write.
absl::Status Uploader::ReportPart(const StepUpload& up, StepFacts facts, uint64_t bytes,
                                  double start) {
  const storage::CheckpointRecord& r = up.record;
  CKPTD_ASSIGN_OR_RETURN(gguf::GgufFile header, storage::ReadGgufHeader(env_, r.model_path));
  PartReport report{
      .facts = std::move(facts), .rank = r.rank, .world_size = r.world_size, .bytes = bytes};
  if (const gguf::Value* count = header.metadata.Find(storage::kSplitTensorsCount)) {
    if (const auto* n = count->get_if<int32_t>()) report.split_tensors_count = *n;
  }
  for (const gguf::TensorInfo& t : header.tensors) {
    CKPTD_ASSIGN_OR_RETURN(std::optional<policy::TensorSlice> slice,
                           storage::ShardSliceOf(header.metadata, t));
    report.tensors.push_back({.name = t.name, .ne = t.ne, .slice = std::move(slice)});
  }
  const std::string text = report.ToJson();
  const std::string key = KeysOf(up.run_id).PartReport(r.step, r.rank);
  CKPTD_TRY(Retry(
      [&]() -> absl::Status { return store_->Put(key, text, Precondition::kNone, {}).status(); }));
  TestPause();
  CKPTD_TRY(UpdateState(up.run_dir, [&](UploadState& s) {
    s.waiting.erase(r.step);
    // The newest only: Recover compares with it; older parts were reported.
    const uint64_t newest = std::max(r.step, s.uploaded.empty() ? 0 : *s.uploaded.rbegin());
    s.uploaded = {newest};
  }));
  const double seconds = NowSeconds() - start;
  spdlog::info(
      "tier: uploaded run={} step={} rank={} part bytes={} seconds={:.3f}; reported to the "
      "coordinator",
      up.run_id, r.step, r.rank, bytes, seconds);
  uint64_t copied = 0;
  for (const RemoteFile& f : report.facts.files) copied += f.copied_bytes;
  NotifyUploaded(up, bytes, copied, seconds);
  return absl::OkStatus();
}

void Uploader::Withdraw(const std::string& run_id, const std::string& run_dir, uint64_t step,
                        uint32_t rank, uint32_t world_size) {
  std::vector<std::string> keys = KeysOf(run_id).PartObjects(step, rank, world_size);
  if (!run_dir.empty()) {
    if (absl::Status st = UpdateState(run_dir,
                                      [&](UploadState& s) {
                                        s.waiting.erase(step);
                                        s.withdrawn[step] = keys;
                                      });
        !st.ok()) {
      // The deletes below still run; only a restart before them forgets them.
      spdlog::warn("tier: run={} step={}: the withdrawn part not recorded: {}", run_id, step,
                   st.message());
    }
  }
  absl::MutexLock lock(&mu_);
  queue_.erase(std::remove_if(queue_.begin(), queue_.end(),
                              [&](const Job& j) {
                                return j.upload.run_id == run_id && j.upload.record.step == step;
                              }),
               queue_.end());
  if (auto it = states_.find(run_id); it != states_.end()) it->second.erase(step);
  std::erase_if(withdrawals_,
                [&](const Withdrawal& w) { return w.run_id == run_id && w.step == step; });
  withdrawals_.push_back(
      {.run_id = run_id, .run_dir = run_dir, .step = step, .keys = std::move(keys)});
  cv_.Signal();
}

bool Uploader::Withdrawn(const std::string& run_id, uint64_t step) const {
  return std::any_of(withdrawals_.begin(), withdrawals_.end(),
                     [&](const Withdrawal& w) { return w.run_id == run_id && w.step == step; });
}

void Uploader::RunWithdrawal(const Withdrawal& w) {
  const absl::Status st = Retry([&]() -> absl::Status {
    // A multipart upload of the part left open (withdrawn before its
    // completion): aborted, so the store drops its parts.
    for (const std::string& key : w.keys) {
      CKPTD_ASSIGN_OR_RETURN(std::vector<MultipartUpload> open, store_->ListMultipartUploads(key));
      for (const MultipartUpload& u : open) {
        if (u.key != key) continue;
        if (absl::Status a = store_->AbortMultipartUpload(u.key, u.upload_id);
            !a.ok() && !IsNoSuchUpload(a)) {
          return a;
        }
      }
    }
    return store_->Delete(w.keys);
  });
  if (!st.ok() && stopping()) return;  // the state file still names it: the next start
  if (!st.ok()) {
    spdlog::warn(
        "tier: run={} step={}: deleting the withdrawn part's objects: {} (tried again in "
        "{:g}s)",
        w.run_id, w.step, st.message(), settings_.failed_retry_s);
  }
  bool done = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(withdrawals_.begin(), withdrawals_.end(), [&](const Withdrawal& x) {
      return x.run_id == w.run_id && x.step == w.step && x.running;
    });
    if (it == withdrawals_.end()) return;  // the step was saved anew meanwhile (Enqueue)
    it->running = false;
    if (!st.ok()) {
      it->not_before_s = NowSeconds() + settings_.failed_retry_s;
    } else if (++it->deletes_done == 1) {
      it->not_before_s = NowSeconds() + settings_.withdraw_recheck_s;
    } else {
      withdrawals_.erase(it);
      done = true;
    }
    cv_.Signal();
  }
  if (!done) return;
  if (!w.run_dir.empty()) {
    (void)UpdateState(w.run_dir, [&](UploadState& s) { s.withdrawn.erase(w.step); });
  }
  spdlog::info("tier: run={} step={}: the aborted part's objects are deleted from the store",
               w.run_id, w.step);
}

bool Uploader::RemoteRetentionOf(const std::string& run_id) const {
  std::optional<RemoteRules> rules = runs_ ? runs_->RulesOf(run_id) : std::nullopt;
  return rules ? rules->remote_retention : settings_.remote_retention;
}

absl::StatusOr<std::set<uint64_t>> Uploader::RemoteSteps(const std::string& run_id) {
  const RunKeys keys = KeysOf(run_id);
  CKPTD_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store_->List(keys.root()));
  std::set<uint64_t> steps;
  for (const ObjectInfo& o : objects) {
    std::optional<std::string_view> name = keys.NameOf(o.key);
    if (!name) continue;
    if (std::optional<uint64_t> step = ParseManifestName(*name)) steps.insert(*step);
  }
  return steps;
}

absl::StatusOr<StepManifest> Uploader::RemoteManifest(const std::string& run_id, uint64_t step) {
  const std::string key = KeysOf(run_id).Manifest(step);
  CKPTD_ASSIGN_OR_RETURN(std::string text, store_->Get(key));
  return StepManifest::Parse(text, key);
}

absl::StatusOr<RemotePlan> Uploader::PlanRemote(const std::string& run_id, bool apply, bool retry) {
  RemotePlan out;
  auto call = [&](const std::function<absl::Status()>& op) { return retry ? Retry(op) : op(); };
  std::optional<RemoteRules> rules = runs_ ? runs_->RulesOf(run_id) : std::nullopt;
  if (!rules) return absl::NotFoundError(StrCat("run '", run_id, "' is not known to this daemon"));
  const RunKeys keys = KeysOf(run_id);
  std::vector<ObjectInfo> objects;
  CKPTD_TRY(call([&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(objects, store_->List(keys.root()));
    return absl::OkStatus();
  }));
  // Each step with a manifest, and the keys its manifest names (the
  // manifest's own key last).
  std::map<uint64_t, std::vector<std::string>> step_keys;
  policy::RetentionInputs in;
  in.now_s = NowSeconds();
  for (const ObjectInfo& o : objects) {
    std::optional<std::string_view> name = keys.NameOf(o.key);
    if (!name || !ParseManifestName(*name)) continue;
    // A manifest is read once: the listing's ETag says whether it changed.
    std::optional<StepManifest> m;
    {
      absl::MutexLock lock(&mu_);
      if (auto it = manifests_.find(o.key); it != manifests_.end() && it->second.first == o.etag) {
        m = it->second.second;
      }
    }
    if (!m) {
      std::string text;
      absl::Status got = call([&]() -> absl::Status {
        CKPTD_ASSIGN_OR_RETURN(text, store_->Get(o.key));
        return absl::OkStatus();
      });
      if (absl::IsNotFound(got)) continue;  // deleted since the listing
      CKPTD_TRY(got);
      absl::StatusOr<StepManifest> parsed = StepManifest::Parse(text, o.key);
      if (!parsed.ok()) {
        // Not ours to judge (damaged, or a newer ckptd's): kept, and said so.
        spdlog::warn("tier: remote retention run={}: {}; that step is kept", run_id,
                     parsed.status().message());
        continue;
      }
      m = *std::move(parsed);
      absl::MutexLock lock(&mu_);
      manifests_[o.key] = {o.etag, *m};
    }
    policy::CheckpointFacts f{
        .step = m->facts.step, .bytes = m->bytes(), .time_s = ParseUtc(m->facts.time_utc)};
    std::vector<std::string>& names = step_keys[f.step];
    for (const RemoteFile& file : m->facts.files) names.push_back(file.key);
    names.push_back(o.key);
    if (auto metric = m->facts.metrics.find(rules->policy.metric);
        metric != m->facts.metrics.end()) {
      f.metric = metric->second;
    }
    if (auto pin = rules->pins.find(f.step); pin != rules->pins.end()) f.pin = pin->second;
    in.checkpoints.push_back(std::move(f));
  }
  std::string latest_text;
  absl::Status got = call([&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(latest_text, store_->Get(keys.Latest()));
    return absl::OkStatus();
  });
  if (got.ok()) {
    absl::StatusOr<LatestRecord> latest = LatestRecord::Parse(latest_text, keys.Latest());
    if (!latest.ok()) return latest.status();  // cannot tell which step to protect: delete nothing
    in.latest_step = latest->step;
  } else if (!absl::IsNotFound(got)) {
    return got;
  }
  std::string run_dir;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = states_.find(run_id); it != states_.end()) {
      for (const auto& [step, state] : it->second) {
        if (state == "queued" || state == "uploading") in.in_flight.insert(step);
      }
    }
    if (auto it = run_dirs_.find(run_id); it != run_dirs_.end()) run_dir = it->second;
  }
  if (!rules->remote_retention) {
    out.policy = "remote_retention \"keep_all\": remote copies are never deleted";
    for (const auto& f : in.checkpoints) {
      out.decisions.push_back(
          {.step = f.step, .keep = true, .reason = "keep_all", .bytes = f.bytes});
    }
    std::sort(out.decisions.begin(), out.decisions.end(),
              [](const auto& a, const auto& b) { return a.step < b.step; });
    return out;
  }
  out.policy = policy::Describe(rules->policy);
  out.decisions = policy::PlanRetention(rules->policy, in);
  if (!apply) return out;
  for (const policy::RetentionDecision& d : out.decisions) {
    if (d.keep || (in.latest_step && d.step == *in.latest_step) || rules->pins.count(d.step) ||
        in.in_flight.count(d.step)) {
      continue;  // the protections, checked again before each delete
    }
    std::vector<std::string> names = step_keys[d.step];
    const std::string manifest = names.back();
    names.pop_back();
    CKPTD_TRY(call([&] { return store_->Delete({manifest}); }));
    {
      absl::MutexLock lock(&mu_);
      manifests_.erase(manifest);
    }
    CKPTD_TRY(call([&] { return store_->Delete(names); }));
    if (!run_dir.empty()) {
      (void)UpdateState(run_dir, [&](UploadState& s) { s.uploaded.erase(d.step); });
    }
    out.deleted.push_back(d.step);
    spdlog::info("tier: remote retention deleted run={} step={} ({})", run_id, d.step, d.reason);
    absl::MutexLock lock(&mu_);
    if (auto it = states_.find(run_id); it != states_.end()) it->second.erase(d.step);
  }
  return out;
}

void Uploader::Loop() {
  while (true) {
    std::optional<StaleCheck> check;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      if (!stale_checks_.empty()) {
        check = std::move(stale_checks_.front());
        stale_checks_.pop_front();
      }
    }
    if (check) {
      if (absl::Status st = AbortStale(*check); !st.ok()) {
        if (stopping()) return;
        spdlog::warn("tier: run={}: stale multipart uploads not checked: {}", check->run_id,
                     st.message());
      }
      continue;
    }
    Job job;
    std::optional<Withdrawal> withdrawal;
    {
      absl::MutexLock lock(&mu_);
      while (!stop_) {
        const double now = NowSeconds();
        // Withdrawals first: they are two DELETEs, and a part withdrawn
        // while this thread was uploading it goes as soon as that ends.
        auto w = std::find_if(withdrawals_.begin(), withdrawals_.end(), [&](const Withdrawal& x) {
          return !x.running && x.not_before_s <= now;
        });
        if (w != withdrawals_.end()) {
          w->running = true;
          withdrawal = *w;
          break;
        }
        auto it = std::find_if(queue_.begin(), queue_.end(),
                               [&](const Job& j) { return j.not_before_s <= now; });
        if (it != queue_.end()) {
          job = std::move(*it);
          queue_.erase(it);
          break;
        }
        double wait_s = queue_.empty() ? 60 : 1;
        for (const Withdrawal& x : withdrawals_) {
          wait_s = std::min(wait_s, std::max(0.01, x.not_before_s - now));
        }
        cv_.WaitWithTimeout(&mu_, absl::Seconds(wait_s));
      }
      if (stop_) return;
      if (!withdrawal) states_[job.upload.run_id][job.upload.record.step] = "uploading";
    }
    if (withdrawal) {
      RunWithdrawal(*withdrawal);
      continue;
    }
    t_uploading = &job.upload;
    absl::Status st = Upload(job);
    t_uploading = nullptr;
    if (st.ok()) {
      absl::MutexLock lock(&mu_);
      if (Withdrawn(job.upload.run_id, job.upload.record.step)) {
        states_[job.upload.run_id].erase(job.upload.record.step);  // the withdrawal deletes it
      } else {
        states_[job.upload.run_id][job.upload.record.step] = "uploaded";
      }
      continue;
    }
    if (absl::IsCancelled(st) && stopping()) return;  // resumes at the next start
    bool withdrawn = false;
    {
      absl::MutexLock lock(&mu_);
      if (Withdrawn(job.upload.run_id, job.upload.record.step)) {
        // Its step was aborted while it went up (it failed as the local
        // part went, or across the partition that aborted it): not tried
        // again; the withdrawal deletes what it sent (and the waiting
        // entry a multipart upload started since wrote goes too).
        states_[job.upload.run_id].erase(job.upload.record.step);
        withdrawn = true;
        spdlog::info("tier: run={} step={}: upload stopped, its multi-rank step was aborted ({})",
                     job.upload.run_id, job.upload.record.step, st.message());
      }
    }
    if (withdrawn) {
      (void)UpdateState(job.upload.run_dir,
                        [&](UploadState& s) { s.waiting.erase(job.upload.record.step); });
      continue;
    }
    if (absl::IsNotFound(st) && st.message().find("deleted locally") != std::string_view::npos) {
      (void)UpdateState(job.upload.run_dir,
                        [&](UploadState& s) { s.waiting.erase(job.upload.record.step); });
      if (const storage::CheckpointRecord& r = job.upload.record; r.world_size > 0) {
        // A multi-rank part removed (its step aborted) while it was going
        // up: what already reached the store goes too.
        const RunKeys keys = KeysOf(job.upload.run_id);
        (void)store_->Delete(
            {keys.Object(Base(r.model_path)),
             keys.Object(storage::PartTrainFileName(r.step, r.rank, r.world_size))});
      }
      absl::MutexLock lock(&mu_);
      states_[job.upload.run_id].erase(job.upload.record.step);
      continue;
    }
    SetHealth(st);
    spdlog::error("tier: upload failed run={} step={}: {} (tried again in {:g}s)",
                  job.upload.run_id, job.upload.record.step, st.message(),
                  settings_.failed_retry_s);
    if (observer_ != nullptr) {
      observer_->OnUploadEvent({.type = UploadEventType::kFailed,
                                .run_id = job.upload.run_id,
                                .step = job.upload.record.step,
                                .error = std::string(st.message())});
    }
    absl::MutexLock lock(&mu_);
    states_[job.upload.run_id][job.upload.record.step] = StrCat("failed: ", st.message());
    job.not_before_s = NowSeconds() + settings_.failed_retry_s;
    queue_.push_back(std::move(job));
  }
}

}  // namespace ckptd::tier
