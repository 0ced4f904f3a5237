// The object-storage tier: every committed checkpoint is copied to an
// S3-compatible store as soon as it is durable locally.
//
// Layout, per run: <prefix>/<run>/step_N.gguf, step_N.train.gguf and the
// step's exports; then <prefix>/<run>/step_N.manifest.json (files, sizes,
// ETags, part size, ckptd's content digests, uuid) once every file is
// complete; then <prefix>/<run>/latest naming the newest uploaded step,
// written last. A reader that trusts manifests never sees a partial step.
// A multi-rank run's part ends with its report for the coordinator
// instead (tier/remote_names.h, tier/step_coordinator.h).
//
// Files larger than a part go up as multipart uploads, several parts at
// once, read from the committed file part by part: memory is
// parallel_parts x part_size whatever the file size, and never more than
// max_memory_bytes. Every part is sent with its SHA-256 and MD5 and its
// ETag checked; a completed object's ETag is checked against its parts'.
//
// Durable state: <run_dir>/ckptd-uploads.json records the steps waiting,
// each multipart upload's id and the parts done, and the steps uploaded. A
// restarted daemon resumes each upload where it stopped (an upload the
// store forgot is started again) and aborts multipart uploads under the
// run's prefix that the state does not name. Transient failures (5xx,
// SlowDown, connection errors) are retried with backoff and mark the tier
// unhealthy until an upload succeeds; a permanent one (403, a missing
// bucket) fails the step's upload (UPLOAD_FAILED), marks the tier
// unhealthy, and the step is tried again later. Local saves never wait.
//
// The runs above it answer through TierRuns (prefixes, retention rules) and
// hear of each upload through UploadObserver: interfaces, so the uploader
// knows nothing of runs' locks. Every store call goes through ObjectStore.
//
// Thread-safety: every public method may be called from any thread.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/env/env.h"
#include "daemon/policy/part_plan.h"
#include "daemon/policy/retention.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/tier/object_store.h"
#include "daemon/tier/remote_keys.h"
#include "daemon/tier/remote_records.h"

namespace ckptd::tier {

struct TierSettings {
  std::string prefix;                // key prefix, no trailing '/'
  uint64_t part_size = 16ull << 20;  // 5 MiB .. 5 GiB
  int parallel_parts = 4;
  uint64_t max_memory_bytes = 64ull << 20;  // part buffers, all together
  double retry_initial_s = 0.2;
  double retry_max_s = 10;
  double failed_retry_s = 30;  // a step whose upload failed for good is tried again after this
  // Remote retention: false keeps every uploaded step ("keep_all"); true
  // applies each run's own retention policy to its remote copies ("same")
  // after every upload, with the same protections (latest, pins, steps
  // still uploading).
  bool remote_retention = false;
  // A multipart part whose bytes equal a range of the run's previous
  // uploaded step's object (its unchanged tensors) is copied inside the
  // store (UploadPartCopy) instead of sent ([tier.s3] part_copy).
  bool part_copy = true;
  // A withdrawn part's objects are deleted once its upload in flight ends,
  // then again this long after: a PUT the node gave up on (a timeout across
  // a partition) can still land in the store after the first delete.
  double withdraw_recheck_s = 15;
  // Tests only (CKPTD_TEST_TIER_PAUSE_S): a pause after each object of a
  // step, so a reader polling the store sees every intermediate state.
  double test_pause_s = 0;
};

// What one step's upload carries, from its commit.
struct StepUpload {
  std::string run_id;
  std::string run_dir;
  storage::CheckpointRecord record;
};

enum class UploadEventType { kUploaded, kFailed };
struct UploadEvent {
  UploadEventType type;
  std::string run_id;
  uint64_t step = 0;
  uint64_t bytes = 0;
  uint64_t copied_bytes = 0;  // of `bytes`, copied inside the store (kUploaded)
  double seconds = 0;
  std::string error;  // kFailed
};

// A run as the tier sees it (the daemon's [tier.s3] unless OpenRun's
// TierOptions override it): where its objects go, and what its remote
// copies are judged by.
struct RemoteRules {
  std::string prefix;             // the run's key prefix
  bool remote_retention = false;  // "same": the run's policy applies to its remote copies
  policy::RetentionPolicy policy;
  std::map<uint64_t, std::string> pins;
};

// What the tier asks of the runs above it (the replication layer answers).
class TierRuns {
 public:
  virtual ~TierRuns() = default;
  // The run's key prefix; nullopt for a run not known (the daemon's applies).
  virtual std::optional<std::string> PrefixOf(const std::string& run_id) const = 0;
  // How the run's remote copies are judged; nullopt: not known (left alone).
  virtual std::optional<RemoteRules> RulesOf(const std::string& run_id) const = 0;
};

// Told of every step uploaded, or whose upload failed (on the upload thread).
class UploadObserver {
 public:
  virtual ~UploadObserver() = default;
  virtual void OnUploadEvent(const UploadEvent& e) = 0;
};

struct RemotePlan {
  std::string policy;                                // described, or why everything is kept
  std::vector<policy::RetentionDecision> decisions;  // ascending step
  std::vector<uint64_t> deleted;                     // when applied
};

class Uploader {
 public:
  // `store`, `runs` and `observer` must outlive the uploader; `observer`
  // may be null.
  Uploader(env::Env* env, ObjectStore* store, TierSettings settings, const TierRuns* runs,
           UploadObserver* observer);
  ~Uploader();
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;

  // The run's retention over its remote copies (the steps with a manifest).
  // With `apply`, deletes what it drops: a step's manifest first (so no
  // manifest ever names a missing object), then its files; never latest's
  // step, a pinned one or one still uploading.
  // `retry`: transient failures are retried until they succeed (the upload
  // worker); without it one attempt each (a client waits on the answer).
  absl::StatusOr<RemotePlan> PlanRemote(const std::string& run_id, bool apply, bool retry);

  // The run's steps with a manifest in the store, and one step's manifest
  // (NOT_FOUND when it has none). One attempt each: a caller waiting on an
  // answer gets UNAVAILABLE rather than a retry loop.
  absl::StatusOr<std::set<uint64_t>> RemoteSteps(const std::string& run_id);
  absl::StatusOr<StepManifest> RemoteManifest(const std::string& run_id, uint64_t step);

  // A step fetched back from the store into `run_dir`: recorded as
  // uploaded, so it is not sent again.
  absl::Status MarkUploaded(const std::string& run_id, const std::string& run_dir, uint64_t step);

  // Rank `rank`'s part of a multi-rank step that was aborted: it will not
  // be uploaded (dropped from the queue and the state), and what this node
  // may have sent of it (RunKeys::PartObjects) is deleted from the store
  // by the worker: after the part's upload in flight, if any, has ended
  // (the worker runs one upload at a time), and again
  // settings.withdraw_recheck_s later. The keys stay in the run's state
  // file until both deletes are done, so a restarted daemon does them too.
  // A step enqueued again (saved anew) cancels its withdrawal.
  void Withdraw(const std::string& run_id, const std::string& run_dir, uint64_t step, uint32_t rank,
                uint32_t world_size);
  // Whether the run's retention policy applies to its remote copies.
  bool RemoteRetentionOf(const std::string& run_id) const;

  void Start();
  // Stops after the parts in flight; what is left resumes at the next start.
  void Stop();

  // Records the step as waiting (durably) and queues it.
  absl::Status Enqueue(StepUpload upload);
  // At start, per run: queues the steps its state says are waiting and
  // aborts multipart uploads under its prefix the state does not name.
  // `local`: the run's committed checkpoints; steps newer than any the
  // state knows (committed while the daemon was down) are queued too.
  // `rank`: a multi-rank run's rank on this node; its stale check then
  // leaves the other ranks' uploads (other nodes') alone.
  absl::Status Recover(const std::string& run_id, const std::string& run_dir,
                       const std::vector<storage::CheckpointRecord>& local,
                       std::optional<uint32_t> rank = std::nullopt);

  struct Health {
    bool healthy = true;
    std::string error;  // the last failure while unhealthy
  };
  Health health() const;
  // "uploaded", "uploading", "queued", "failed: ..." or "" (not for the tier).
  std::string StateOf(const std::string& run_id, uint64_t step) const;
  size_t queue_depth() const;
  // The run's keys under its prefix (the daemon's unless the run overrides it).
  RunKeys KeysOf(const std::string& run_id) const;
  const TierSettings& settings() const { return settings_; }
  ObjectStore& store() { return *store_; }

 private:
  struct Job {
    StepUpload upload;
    double not_before_s = 0;
  };
  struct Withdrawal {
    std::string run_id;
    std::string run_dir;
    uint64_t step = 0;
    std::vector<std::string> keys;
    int deletes_done = 0;  // of 2
    double not_before_s = 0;
    bool running = false;  // the worker is deleting; stays listed so Enqueue can cancel it
  };
  struct StaleCheck {
    std::string run_id;
    std::set<std::string> known_ids;
    std::optional<uint32_t> rank;  // only this rank's part files
  };
  void Loop();
  absl::Status AbortStale(const StaleCheck& check);
  // One delete of a withdrawal's keys; the second ends it.
  void RunWithdrawal(const Withdrawal& w) ABSL_LOCKS_EXCLUDED(mu_);
  bool Withdrawn(const std::string& run_id, uint64_t step) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status Upload(const Job& job);
  absl::Status ReportPart(const StepUpload& up, StepFacts facts, uint64_t bytes, double start);
  // Uploads one file of a step; `key` is where it went (a resumed upload
  // keeps the key it was started with).
  // How one file's parts go up: copied from the previous uploaded step's
  // object where its tensors are unchanged (policy::PlanParts), else sent.
  struct FilePlan {
    std::vector<policy::PlannedPart> parts;
    std::string source_key;  // the object copied from ("" = none)
    std::string layout;      // UploadState::FileProgress::layout
  };
  FilePlan PlanFile(const StepUpload& up, const env::RandomAccessFile& file,
                    const std::string& role, uint64_t size, bool copy);
  absl::Status UploadFile(const StepUpload& up, const std::string& path, const std::string& name,
                          const std::string& role, uint64_t size, std::string* key,
                          std::string* etag, uint64_t* copied, std::vector<uint64_t>* part_lengths);
  void TestPause();
  void NotifyUploaded(const StepUpload& up, uint64_t bytes, uint64_t copied, double seconds)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Verify(const std::string& key, uint64_t size, const std::string& etag);
  // Read-modify-write of a run's state file.
  absl::Status UpdateState(const std::string& run_dir,
                           const std::function<void(UploadState&)>& change);
  UploadState LoadState(const std::string& run_dir);
  // Runs `op` until it succeeds, fails permanently, or the uploader stops;
  // transient failures are retried with backoff and make the tier unhealthy.
  absl::Status Retry(const std::function<absl::Status()>& op);
  void SetHealth(const absl::Status& st);
  bool stopping() const;

  env::Env* env_;
  ObjectStore* store_;
  TierSettings settings_;
  const TierRuns* runs_;
  UploadObserver* observer_;

  mutable absl::Mutex mu_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  std::deque<StaleCheck> stale_checks_ ABSL_GUARDED_BY(mu_);
  std::deque<Withdrawal> withdrawals_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::map<uint64_t, std::string>> states_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> run_dirs_ ABSL_GUARDED_BY(mu_);
  Health health_ ABSL_GUARDED_BY(mu_);
  // Remote manifests read by PlanRemote, by key: {ETag, parsed}.
  std::map<std::string, std::pair<std::string, StepManifest>> manifests_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::CondVar cv_;
  // Serializes read-modify-write of the runs' state files (never held
  // with mu_).
  absl::Mutex state_file_mu_;
  std::thread worker_;
};

}  // namespace ckptd::tier
