// The upload worker: steps in commit order, files in parallel parts, the
// manifest and `latest` last, every step of progress in the state file.
#include "daemon/tier/uploader.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>

#include "absl/time/clock.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/split_part.h"
#include "daemon/tier/remote_names.h"

namespace ckptd::tier {
namespace {

std::string Base(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// A store that forgot an upload (aborted, expired): start it again.
bool UploadGone(const absl::Status& st) {
  return absl::IsNotFound(st) && st.message().find("NoSuchUpload") != std::string_view::npos;
}

}  // namespace

Uploader::Uploader(env::Env* env, std::unique_ptr<S3Client> client, TierSettings settings,
                   Listener listener)
    : env_(env),
      client_(std::move(client)),
      settings_(std::move(settings)),
      listener_(std::move(listener)) {}

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

std::string Uploader::PrefixOf(const std::string& run_id) const {
  if (prefix_) {
    if (std::optional<std::string> p = prefix_(run_id)) return *p;
    return settings_.prefix;
  }
  if (rules_) {
    if (std::optional<RemoteRules> r = rules_(run_id)) return r->prefix;
  }
  return settings_.prefix;
}

std::string Uploader::KeyFor(const std::string& run_id, const std::string& name) const {
  const std::string prefix = PrefixOf(run_id);
  return prefix.empty() ? StrCat(run_id, "/", name) : StrCat(prefix, "/", run_id, "/", name);
}

nlohmann::json Uploader::LoadState(const std::string& run_dir) {
  auto text = env::ReadWholeFile(env_, StrCat(run_dir, "/", kUploadStateFile));
  if (!text.ok()) return nlohmann::json::object();
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    spdlog::warn("tier: {}/{} is unreadable; uploads of the run start over", run_dir,
                 kUploadStateFile);
    return nlohmann::json::object();
  }
  return j;
}

absl::Status Uploader::UpdateState(const std::string& run_dir,
                                   const std::function<void(nlohmann::json&)>& change) {
  absl::MutexLock lock(&state_file_mu_);
  nlohmann::json j = LoadState(run_dir);
  change(j);
  return env::WriteFileAtomically(env_, StrCat(run_dir, "/", kUploadStateFile), j.dump());
}

absl::Status Uploader::Enqueue(StepUpload upload) {
  const std::string step = std::to_string(upload.record.step);
  if (absl::Status st = UpdateState(upload.run_dir,
                                    [&](nlohmann::json& j) {
                                      if (!j["waiting"].contains(step)) {
                                        j["waiting"][step] = {{"files", nlohmann::json::object()}};
                                      }
                                    });
      !st.ok()) {
    return st;
  }
  absl::MutexLock lock(&mu_);
  run_dirs_[upload.run_id] = upload.run_dir;
  states_[upload.run_id][upload.record.step] = "queued";
  queue_.push_back({.upload = std::move(upload)});
  cv_.Signal();
  return absl::OkStatus();
}

absl::Status Uploader::Recover(const std::string& run_id, const std::string& run_dir,
                               const std::vector<storage::CheckpointRecord>& local,
                               std::optional<uint32_t> rank) {
  nlohmann::json j = LoadState(run_dir);
  std::set<uint64_t> waiting, uploaded;
  std::set<std::string> known_ids;
  if (j.contains("waiting")) {
    for (auto& [step, w] : j["waiting"].items()) {
      waiting.insert(std::stoull(step));
      for (auto& [name, f] : w["files"].items()) {
        if (f.contains("upload_id")) known_ids.insert(f["upload_id"].get<std::string>());
      }
    }
  }
  if (j.contains("uploaded")) {
    for (const auto& s : j["uploaded"]) uploaded.insert(s.get<uint64_t>());
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
    CKPTD_TRY(UpdateState(run_dir, [&](nlohmann::json& s) {
      for (uint64_t step : gone) s["waiting"].erase(std::to_string(step));
    }));
    for (uint64_t step : gone) {
      spdlog::info("tier: run={} step={} was deleted locally before its upload; skipped", run_id,
                   step);
    }
  }
  for (auto& up : queue) CKPTD_TRY(Enqueue(std::move(up)));
  {
    absl::MutexLock lock(&mu_);
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
  const std::string prefix = KeyFor(check.run_id, "");
  return Retry([&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(std::vector<S3Upload> open, client_->ListMultipartUploads(prefix));
    for (const S3Upload& u : open) {
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
      CKPTD_TRY(client_->AbortMultipartUpload(u.key, u.upload_id));
    }
    return absl::OkStatus();
  });
}

absl::Status Uploader::MarkUploaded(const std::string& run_id, const std::string& run_dir,
                                    uint64_t step) {
  CKPTD_TRY(UpdateState(run_dir, [&](nlohmann::json& j) {
    auto& done = j["uploaded"];
    if (!done.is_array()) done = nlohmann::json::array();
    if (std::find(done.begin(), done.end(), step) == done.end()) done.push_back(step);
  }));
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
    absl::Status st = op();
    if (st.ok() || !IsTransient(st)) {
      SetHealth(st.ok() || UploadGone(st) ? absl::OkStatus() : st);
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

absl::Status Uploader::UploadFile(const StepUpload& up, const std::string& path,
                                  const std::string& name, uint64_t size, std::string* key_out,
                                  std::string* etag) {
  const std::string step = std::to_string(up.record.step);
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::RandomAccessFile> file, env_->OpenForRead(path));
  const uint64_t part = settings_.part_size;
  std::string& key = *key_out;
  key = KeyFor(up.run_id, name);
  if (size <= part) {
    std::string body(size, '\0');
    CKPTD_ASSIGN_OR_RETURN(size_t n, file->ReadUpTo(0, size, body.data()));
    if (n != size) return absl::DataLossError(StrCat(path, ": shorter than its ", size, " bytes"));
    CKPTD_TRY(Retry([&]() -> absl::Status {
      CKPTD_ASSIGN_OR_RETURN(*etag, client_->Put(key, body));
      return absl::OkStatus();
    }));
    return Verify(key, size, *etag);
  }
  const size_t nparts = static_cast<size_t>((size + part - 1) / part);
  for (int attempt = 0;; ++attempt) {
    // The upload this step's state names, with the parts already done.
    std::string upload_id;
    std::vector<std::string> etags(nparts);
    {
      nlohmann::json j = LoadState(up.run_dir);
      const nlohmann::json* f = nullptr;
      if (j.contains("waiting") && j["waiting"].contains(step) &&
          j["waiting"][step]["files"].contains(name)) {
        f = &j["waiting"][step]["files"][name];
      }
      if (f && f->value("part_size", uint64_t{0}) == part && f->contains("upload_id")) {
        upload_id = (*f)["upload_id"].get<std::string>();
        // The key it was started with (the run's prefix may have changed since).
        key = f->value("key", key);
        const auto& parts = (*f)["parts"];
        for (size_t i = 0; i < std::min(nparts, parts.size()); ++i) {
          if (parts[i].is_string()) etags[i] = parts[i].get<std::string>();
        }
      }
    }
    if (upload_id.empty()) {
      CKPTD_TRY(Retry([&]() -> absl::Status {
        CKPTD_ASSIGN_OR_RETURN(upload_id, client_->CreateMultipartUpload(key));
        return absl::OkStatus();
      }));
      CKPTD_TRY(UpdateState(up.run_dir, [&](nlohmann::json& j) {
        j["waiting"][step]["files"][name] = {{"upload_id", upload_id},
                                             {"key", key},
                                             {"part_size", part},
                                             {"parts", nlohmann::json::array()}};
      }));
    } else {
      spdlog::info("tier: resuming run={} step={} file={} upload_id={} ({} of {} parts done)",
                   up.run_id, up.record.step, name, upload_id,
                   std::count_if(etags.begin(), etags.end(), [](auto& e) { return !e.empty(); }),
                   nparts);
    }
    // Parts in parallel, each thread with one part-sized buffer.
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
        const uint64_t offset = i * part, n = std::min(part, size - offset);
        buffer.resize(n);
        absl::Status st = file->ReadUpTo(offset, n, buffer.data()).status();
        std::string tag;
        if (st.ok()) {
          st = Retry([&]() -> absl::Status {
            CKPTD_ASSIGN_OR_RETURN(
                tag, client_->UploadPart(key, upload_id, static_cast<int>(i + 1), buffer));
            return absl::OkStatus();
          });
        }
        if (st.ok()) {
          st = UpdateState(up.run_dir, [&](nlohmann::json& j) {
            auto& parts = j["waiting"][step]["files"][name]["parts"];
            while (parts.size() <= i) parts.push_back(nullptr);
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
        CKPTD_ASSIGN_OR_RETURN(*etag, client_->CompleteMultipartUpload(key, upload_id, etags));
        return absl::OkStatus();
      });
    }
    if (result.ok()) return Verify(key, size, *etag);
    if (!UploadGone(result) || attempt > 0) return result;
    spdlog::warn("tier: the store forgot upload {} of {}; starting it again", upload_id, key);
    CKPTD_TRY(UpdateState(up.run_dir,
                          [&](nlohmann::json& j) { j["waiting"][step]["files"].erase(name); }));
  }
}

// What the store holds now is what was sent: its size, and its ETag (the
// MD5 of the bytes, or of the parts' MD5s) equal to the one computed here.
absl::Status Uploader::Verify(const std::string& key, uint64_t size, const std::string& etag) {
  std::optional<S3Object> head;
  CKPTD_TRY(Retry([&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(head, client_->Head(key));
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

void Uploader::NotifyUploaded(const StepUpload& up, uint64_t bytes, double seconds) {
  if (!listener_) return;
  listener_({.type = UploadEventType::kUploaded,
             .run_id = up.run_id,
             .step = up.record.step,
             .bytes = bytes,
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
  nlohmann::json metrics = nlohmann::json::object();
  for (const auto& [name, value] : r.metrics) metrics[name] = value;
  nlohmann::json manifest = {{"run_id", up.run_id},
                             {"step", r.step},
                             {"metrics", std::move(metrics)},
                             {"uuid", r.uuid},
                             {"content_digest", r.content_digest},
                             {"time_utc", r.time_utc},
                             {"part_size", settings_.part_size},
                             {"files", nlohmann::json::array()}};
  uint64_t bytes = 0;
  for (const File& f : files) {
    auto st = env_->Stat(f.path);
    if (!st.ok()) {
      return absl::NotFoundError(StrCat(f.path, " is gone (deleted locally before its upload)"));
    }
    std::string key, etag;
    CKPTD_TRY(UploadFile(up, f.path, f.name, st->size, &key, &etag));
    TestPause();
    bytes += st->size;
    nlohmann::json entry = {
        {"name", f.name}, {"key", key}, {"role", f.role}, {"size", st->size}, {"etag", etag}};
    if (!f.content_digest.empty()) entry["content_digest"] = f.content_digest;
    if (part) entry["rank"] = r.rank;
    manifest["files"].push_back(std::move(entry));
  }
  if (part) return ReportPart(up, std::move(manifest), bytes, start);
  // The commit record of the step in the store, then latest: last.
  const std::string manifest_name = ManifestName(r.step);
  const std::string manifest_text = manifest.dump(2);
  CKPTD_TRY(Retry([&]() -> absl::Status {
    return client_->Put(KeyFor(up.run_id, manifest_name), manifest_text).status();
  }));
  TestPause();
  uint64_t newest = r.step;
  {
    nlohmann::json j = LoadState(up.run_dir);
    if (j.contains("uploaded")) {
      for (const auto& s : j["uploaded"]) newest = std::max(newest, s.get<uint64_t>());
    }
  }
  if (newest == r.step) {
    const std::string latest =
        nlohmann::json{{"step", r.step}, {"manifest", KeyFor(up.run_id, manifest_name)}}.dump();
    CKPTD_TRY(Retry([&]() -> absl::Status {
      return client_->Put(KeyFor(up.run_id, "latest"), latest).status();
    }));
    TestPause();
  }
  std::vector<uint64_t> forgotten;
  CKPTD_TRY(UpdateState(up.run_dir, [&](nlohmann::json& j) {
    j["waiting"].erase(std::to_string(r.step));
    std::set<uint64_t> done;
    if (j["uploaded"].is_array()) {
      for (const auto& s : j["uploaded"]) done.insert(s.get<uint64_t>());
    }
    done.insert(r.step);
    // Only what is still asked about: steps still on the node, and the
    // newest (Recover and latest compare with it). The file stays small
    // however long the run.
    const uint64_t newest_done = *done.rbegin();
    auto done_json = nlohmann::json::array();
    for (uint64_t s : done) {
      if (s == newest_done ||
          env_->Stat(StrCat(up.run_dir, "/", storage::kWeightsDir, "/", storage::ModelFileName(s)))
              .ok()) {
        done_json.push_back(s);
      } else {
        forgotten.push_back(s);
      }
    }
    j["uploaded"] = std::move(done_json);
  }));
  if (!forgotten.empty()) {
    absl::MutexLock lock(&mu_);
    for (uint64_t s : forgotten) states_[up.run_id].erase(s);
  }
  const double seconds = NowSeconds() - start;
  std::optional<RemoteRules> rules = rules_ ? rules_(up.run_id) : std::nullopt;
  if (rules ? rules->remote_retention : settings_.remote_retention) {
    auto applied = PlanRemote(up.run_id, /*apply=*/true, /*retry=*/true);
    if (!applied.ok()) {
      spdlog::warn("tier: remote retention run={}: {}", up.run_id, applied.status().message());
    }
  }
  spdlog::info("tier: uploaded run={} step={} files={} bytes={} seconds={:.3f} ({:.0f} MB/s)",
               up.run_id, r.step, files.size(), bytes, seconds,
               seconds > 0 ? static_cast<double>(bytes) / seconds / 1e6 : 0.0);
  NotifyUploaded(up, bytes, seconds);
  return absl::OkStatus();
}

// A multi-rank run's part is uploaded: its report for the coordinator
// (what it holds, where its files went), then the state. The step's
// manifest and `latest` are the coordinator's to write.
absl::Status Uploader::ReportPart(const StepUpload& up, nlohmann::json report, uint64_t bytes,
                                  double start) {
  const storage::CheckpointRecord& r = up.record;
  CKPTD_ASSIGN_OR_RETURN(gguf::GgufFile header, storage::ReadGgufHeader(env_, r.model_path));
  report["rank"] = r.rank;
  report["world_size"] = r.world_size;
  report["bytes"] = bytes;
  if (const gguf::Value* count = header.metadata.Find(storage::kSplitTensorsCount)) {
    if (const auto* n = count->get_if<int32_t>()) report["split_tensors_count"] = *n;
  }
  auto tensors = nlohmann::json::array();
  for (const gguf::TensorInfo& t : header.tensors) {
    nlohmann::json entry = {{"name", t.name}, {"ne", t.ne}};
    CKPTD_ASSIGN_OR_RETURN(std::optional<policy::TensorSlice> slice,
                           storage::ShardSliceOf(header.metadata, t));
    if (slice) {
      entry["slice"] = {{"full_ne", slice->full_ne},
                        {"dim", slice->dim},
                        {"offset", slice->offset},
                        {"length", slice->length}};
    }
    tensors.push_back(std::move(entry));
  }
  report["tensors"] = std::move(tensors);
  const std::string text = report.dump(2);
  CKPTD_TRY(Retry([&]() -> absl::Status {
    return client_->Put(KeyFor(up.run_id, PartReportName(r.step, r.rank)), text).status();
  }));
  TestPause();
  CKPTD_TRY(UpdateState(up.run_dir, [&](nlohmann::json& j) {
    j["waiting"].erase(std::to_string(r.step));
    auto& done = j["uploaded"];
    if (!done.is_array()) done = nlohmann::json::array();
    // The newest only: Recover compares with it; older parts were reported.
    uint64_t newest = r.step;
    for (const auto& s : done) newest = std::max(newest, s.get<uint64_t>());
    done = nlohmann::json::array({newest});
  }));
  const double seconds = NowSeconds() - start;
  spdlog::info(
      "tier: uploaded run={} step={} rank={} part bytes={} seconds={:.3f}; reported to the "
      "coordinator",
      up.run_id, r.step, r.rank, bytes, seconds);
  NotifyUploaded(up, bytes, seconds);
  return absl::OkStatus();
}

void Uploader::Forget(const std::string& run_id, const std::string& run_dir, uint64_t step) {
  {
    absl::MutexLock lock(&mu_);
    queue_.erase(std::remove_if(queue_.begin(), queue_.end(),
                                [&](const Job& j) {
                                  return j.upload.run_id == run_id && j.upload.record.step == step;
                                }),
                 queue_.end());
    if (auto it = states_.find(run_id); it != states_.end()) it->second.erase(step);
  }
  (void)UpdateState(run_dir, [&](nlohmann::json& j) {
    if (j.contains("waiting")) j["waiting"].erase(std::to_string(step));
  });
}

bool Uploader::RemoteRetentionOf(const std::string& run_id) const {
  std::optional<RemoteRules> rules = rules_ ? rules_(run_id) : std::nullopt;
  return rules ? rules->remote_retention : settings_.remote_retention;
}

absl::StatusOr<std::set<uint64_t>> Uploader::RemoteSteps(const std::string& run_id) {
  CKPTD_ASSIGN_OR_RETURN(std::vector<S3Object> objects, client_->List(KeyFor(run_id, "")));
  std::set<uint64_t> steps;
  for (const S3Object& o : objects) {
    if (std::optional<uint64_t> step = ParseManifestName(Base(o.key))) steps.insert(*step);
  }
  return steps;
}

absl::StatusOr<nlohmann::json> Uploader::RemoteManifest(const std::string& run_id, uint64_t step) {
  const std::string key = KeyFor(run_id, ManifestName(step));
  CKPTD_ASSIGN_OR_RETURN(std::string text, client_->Get(key));
  nlohmann::json m = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!m.is_object() || !m.contains("files") || !m["files"].is_array()) {
    return absl::DataLossError(StrCat(key, " is not a ckptd step manifest"));
  }
  return m;
}

absl::StatusOr<RemotePlan> Uploader::PlanRemote(const std::string& run_id, bool apply, bool retry) {
  RemotePlan out;
  auto call = [&](const std::function<absl::Status()>& op) { return retry ? Retry(op) : op(); };
  std::optional<RemoteRules> rules = rules_ ? rules_(run_id) : std::nullopt;
  if (!rules) return absl::NotFoundError(StrCat("run '", run_id, "' is not known to this daemon"));
  const std::string prefix = KeyFor(run_id, "");
  std::vector<S3Object> objects;
  CKPTD_TRY(call([&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(objects, client_->List(prefix));
    return absl::OkStatus();
  }));
  // Each step with a manifest, and the keys its manifest names (the
  // manifest's own key last).
  std::map<uint64_t, std::vector<std::string>> keys;
  policy::RetentionInputs in;
  in.now_s = NowSeconds();
  for (const S3Object& o : objects) {
    if (!o.key.ends_with(".manifest.json")) continue;
    // A manifest is read once: the listing's ETag says whether it changed.
    nlohmann::json m;
    {
      absl::MutexLock lock(&mu_);
      if (auto it = manifests_.find(o.key); it != manifests_.end() && it->second.first == o.etag) {
        m = it->second.second;
      }
    }
    if (m.is_null()) {
      std::string text;
      CKPTD_TRY(call([&]() -> absl::Status {
        CKPTD_ASSIGN_OR_RETURN(text, client_->Get(o.key));
        return absl::OkStatus();
      }));
      m = nlohmann::json::parse(text, nullptr, false);
      absl::MutexLock lock(&mu_);
      manifests_[o.key] = {o.etag, m};
    }
    if (!m.is_object() || !m.contains("step") || !m.contains("files")) continue;
    policy::CheckpointFacts f{.step = m["step"].get<uint64_t>(),
                              .time_s = ParseUtc(m.value("time_utc", ""))};
    std::vector<std::string>& names = keys[f.step];
    for (const auto& file : m["files"]) {
      f.bytes += file.value("size", uint64_t{0});
      names.push_back(file["key"].get<std::string>());
    }
    names.push_back(o.key);
    if (m.contains("metrics") && m["metrics"].contains(rules->policy.metric)) {
      f.metric = m["metrics"][rules->policy.metric].get<double>();
    }
    if (auto pin = rules->pins.find(f.step); pin != rules->pins.end()) f.pin = pin->second;
    in.checkpoints.push_back(std::move(f));
  }
  std::string latest_text;
  absl::Status got = call([&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(latest_text, client_->Get(KeyFor(run_id, "latest")));
    return absl::OkStatus();
  });
  if (got.ok()) {
    nlohmann::json l = nlohmann::json::parse(latest_text, nullptr, false);
    if (l.is_object() && l.contains("step")) in.latest_step = l["step"].get<uint64_t>();
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
    std::vector<std::string> names = keys[d.step];
    const std::string manifest = names.back();
    names.pop_back();
    CKPTD_TRY(call([&] { return client_->Delete({manifest}); }));
    {
      absl::MutexLock lock(&mu_);
      manifests_.erase(manifest);
    }
    CKPTD_TRY(call([&] { return client_->Delete(names); }));
    if (!run_dir.empty()) {
      (void)UpdateState(run_dir, [&](nlohmann::json& j) {
        auto& done = j["uploaded"];
        if (done.is_array()) done.erase(std::remove(done.begin(), done.end(), d.step), done.end());
      });
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
    {
      absl::MutexLock lock(&mu_);
      while (!stop_) {
        const double now = NowSeconds();
        auto it = std::find_if(queue_.begin(), queue_.end(),
                               [&](const Job& j) { return j.not_before_s <= now; });
        if (it != queue_.end()) {
          job = std::move(*it);
          queue_.erase(it);
          break;
        }
        cv_.WaitWithTimeout(&mu_, absl::Seconds(queue_.empty() ? 60 : 1));
      }
      if (stop_) return;
      states_[job.upload.run_id][job.upload.record.step] = "uploading";
    }
    absl::Status st = Upload(job);
    if (st.ok()) {
      absl::MutexLock lock(&mu_);
      states_[job.upload.run_id][job.upload.record.step] = "uploaded";
      continue;
    }
    if (absl::IsCancelled(st) && stopping()) return;  // resumes at the next start
    if (absl::IsNotFound(st) && st.message().find("deleted locally") != std::string_view::npos) {
      (void)UpdateState(job.upload.run_dir, [&](nlohmann::json& j) {
        j["waiting"].erase(std::to_string(job.upload.record.step));
      });
      if (const storage::CheckpointRecord& r = job.upload.record; r.world_size > 0) {
        // A multi-rank part removed (its step aborted) while it was going
        // up: what already reached the store goes too.
        (void)client_->Delete(
            {KeyFor(job.upload.run_id, Base(r.model_path)),
             KeyFor(job.upload.run_id, storage::PartTrainFileName(r.step, r.rank, r.world_size))});
      }
      absl::MutexLock lock(&mu_);
      states_[job.upload.run_id].erase(job.upload.record.step);
      continue;
    }
    SetHealth(st);
    spdlog::error("tier: upload failed run={} step={}: {} (tried again in {:g}s)",
                  job.upload.run_id, job.upload.record.step, st.message(),
                  settings_.failed_retry_s);
    if (listener_) {
      listener_({.type = UploadEventType::kFailed,
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
