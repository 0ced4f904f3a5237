// The runs the daemon knows: found under the configured roots at startup or
// opened by trainers since. Each Run serializes its saves (one at a time, in
// arrival order) and guards its state with a short-held lock, so listings
// never wait behind a long save. Events (committed, failed, deleted) fan out
// to WatchRun subscribers through bounded queues. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/base/time.h"
#include "daemon/env/env.h"
#include "daemon/export/profile.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/value.h"
#include "daemon/policy/retention.h"
#include "daemon/policy/schedule.h"
#include "daemon/policy/step_commit.h"
#include "daemon/scheduler/events.h"
#include "daemon/storage/pins.h"
#include "daemon/storage/run_dir.h"

namespace ckptd::scheduler {

enum class RunState { kIdle, kOpen, kFinished };

// An export a run writes with each checkpoint.
struct RunExport {
  std::string name;
  std::shared_ptr<const exports::Profile> profile;
};

// How a run uses the object-storage tier (OpenRun's TierOptions).
struct RunTier {
  bool local_only = false;               // never uploaded
  std::string prefix;                    // "" = the daemon's tier.s3.prefix
  std::optional<bool> remote_retention;  // nullopt = the daemon's; true = "same"
};

// A run trained by several ranks (OpenRun's MultiRank): this node saves
// rank `rank`'s part of each step.
struct RunMultiRank {
  uint32_t world_size = 0;  // 0: a single-rank run
  uint32_t rank = 0;
  bool coordinator = false;  // this daemon decides the run's steps
  double part_timeout_s = 600;
  uint64_t total_tensors = 0;  // split.tensors.count; 0 = this rank's count x world_size
  std::map<std::string, policy::TensorSlice> slices;  // by tensor name
};

struct RunSettings {
  gguf::Metadata model_metadata;  // passed through into every checkpoint
  gguf::Metadata provenance;      // ckpt.trainer.*, ckpt.client.pid
  std::string base_model_uuid;
  std::optional<policy::Schedule> schedule;          // nullopt: the daemon's default
  std::optional<policy::RetentionPolicy> retention;  // nullopt: the daemon's default
  std::vector<RunExport> exports;
  RunTier tier;
  RunMultiRank multi_rank;
};

class Run;

// Where a run's settings come back from after they left memory (the API
// layer keeps them in the run directory and charges them to the memory
// budget).
struct SettingsStore {
  std::function<absl::StatusOr<RunSettings>(const Run&)> reload;
  std::function<void(const Run&)> unloaded;  // after a run's settings left memory
};

struct DaemonFacts {
  std::string version;
  std::string host;
  uint32_t alignment = 32;
  env::DirectIo direct_io = env::DirectIo::kAuto;
  gguf::UuidScheme uuid_scheme = gguf::UuidScheme::kContent;
  std::string export_profiles_dir;  // named profiles beyond the built-ins; "" = none
};

// One run's state. Its lock (mu()) guards everything below and is never held
// across I/O of tensor data; save_mu() is held for a whole save, so saves of
// one run never interleave (taken before mu(), never while holding it).
class Run {
 public:
  Run(std::string id, std::unique_ptr<storage::RunDir> dir, storage::PinStore pins)
      : pins(std::move(pins)), id_(std::move(id)), run_dir_(dir->run_dir()), dir_(std::move(dir)) {}
  const std::string& id() const { return id_; }
  // Fixed for the run's lifetime: readable without the lock.
  const std::string& run_dir() const { return run_dir_; }

  absl::Mutex& mu() const ABSL_LOCK_RETURNED(mu_) { return mu_; }
  absl::Mutex& save_mu() ABSL_LOCK_RETURNED(save_mu_) { return save_mu_; }

  storage::RunDir* dir() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return dir_.get(); }
  const storage::RunDir* dir() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return dir_.get(); }
  RunState state ABSL_GUARDED_BY(mu_) = RunState::kIdle;
  std::optional<RunSettings> settings ABSL_GUARDED_BY(mu_);  // set by OpenRun
  // The bulky part of `settings` (model metadata, provenance, export
  // profiles) left memory while the run was idle (RunRegistry::UnloadIdle);
  // schedule, retention, base model and export names stay.
  bool settings_unloaded ABSL_GUARDED_BY(mu_) = false;
  double reference_time_s ABSL_GUARDED_BY(mu_) = 0;  // last commit, or when opened
  double last_active_s ABSL_GUARDED_BY(mu_) = 0;     // last OpenRun, ShouldSave or save
  // A trainer's call (ShouldSave, a save): stamps the time and makes a run
  // that went idle open again (a finished run stays finished).
  void MarkActive(double now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    last_active_s = now;
    if (state == RunState::kIdle && settings) state = RunState::kOpen;
  }
  std::string last_error ABSL_GUARDED_BY(mu_);
  // An unresolved write error (I/O, not a client's mistake): retention pauses
  // until a save succeeds again.
  std::string write_error ABSL_GUARDED_BY(mu_);
  storage::PinStore pins ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> in_flight ABSL_GUARDED_BY(mu_);  // steps being written
  // Committed steps the object-storage tier has not uploaded yet: retention
  // and the disk guard keep them ("in flight") so none is lost before it
  // reaches the store.
  std::set<uint64_t> awaiting_upload ABSL_GUARDED_BY(mu_);
  // What retention must not delete besides latest and pins.
  std::set<uint64_t> RetentionHolds() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::set<uint64_t> out = in_flight;
    out.insert(awaiting_upload.begin(), awaiting_upload.end());
    return out;
  }

  void Publish(const Event& e) ABSL_LOCKS_EXCLUDED(mu_);
  void PublishLocked(const Event& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `on_change`: see Subscription.
  std::shared_ptr<Subscription> Subscribe(std::function<void()> on_change = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);
  void CloseSubscriptions() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  absl::Mutex save_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::string id_;
  std::string run_dir_;
  std::unique_ptr<storage::RunDir> dir_ ABSL_PT_GUARDED_BY(mu_);
  std::vector<std::weak_ptr<Subscription>> subscribers_ ABSL_GUARDED_BY(mu_);
};

class RunRegistry {
 public:
  // `roots` must be absolute and resolved (realpath).
  RunRegistry(env::Env* env, std::vector<std::string> roots, policy::Schedule default_schedule,
              DaemonFacts facts, policy::RetentionPolicy default_retention = {},
              policy::DiskGuard disk_guard = {});

  // Opens every <root>/<run_id>/weights under the roots (recovering each);
  // problems are returned as warnings, not errors.
  std::vector<std::string> Scan();

  // Registers or resumes a run. INVALID_ARGUMENT for a bad id, PERMISSION_DENIED
  // for a directory outside the roots, FAILED_PRECONDITION if the id already
  // lives in another directory or the directory belongs to (or nests with)
  // another run's. The first open records the run id in the directory.
  absl::StatusOr<std::shared_ptr<Run>> Open(const std::string& run_id,
                                            const std::string& requested_dir, RunSettings settings,
                                            bool* resumed);
  // Gives a run found by Scan the settings it was last opened with: it takes
  // saves again as if opened (unless it was finished).
  void Restore(Run& run, RunSettings settings) ABSL_LOCKS_EXCLUDED(run.mu());
  absl::StatusOr<std::shared_ptr<Run>> Get(const std::string& run_id) const;
  std::vector<std::shared_ptr<Run>> List() const;

  // Idle runs give their settings' memory back: a run with no OpenRun,
  // ShouldSave or save for `idle_s` (closed, or its trainer went away) and
  // no save in progress drops the bulky part of its settings (with a
  // SettingsStore) and, if it was open, is idle until it is used again.
  // Returns the ids unloaded.
  void SetSettingsStore(SettingsStore store);
  // Called after every commit (on the saving thread, no lock held): the
  // object-storage tier queues the step. Set before serving.
  using CommitHook = std::function<void(Run& run, const storage::CheckpointRecord& record)>;
  void SetCommitHook(CommitHook hook) { commit_hook_ = std::move(hook); }
  void Committed(Run& run, const storage::CheckpointRecord& record) {
    if (commit_hook_) commit_hook_(run, record);
  }
  // Called after a multi-rank run's part is durable here (its step not
  // committed yet): the tier uploads it and reports it to the coordinator.
  void SetStagedHook(CommitHook hook) { staged_hook_ = std::move(hook); }
  void Staged(Run& run, const storage::CheckpointRecord& record) {
    if (staged_hook_) staged_hook_(run, record);
  }
  std::vector<std::string> UnloadIdle(double idle_s, double now);
  // Before a save uses a run's settings: reads them back if they were
  // unloaded. FAILED_PRECONDITION (reopen the run) when they cannot be.
  absl::Status EnsureSettings(Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.save_mu())
      ABSL_LOCKS_EXCLUDED(run.mu());

  policy::Schedule EffectiveSchedule(const Run& run) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu());
  policy::RetentionPolicy EffectiveRetention(const Run& run) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu());
  void SetDefaults(const policy::Schedule& s, const policy::RetentionPolicy& r,
                   const policy::DiskGuard& g);
  policy::DiskGuard disk_guard() const;

  // Plans retention for a run and, unless dry or paused by a write error,
  // deletes what it drops (logging and publishing DELETED events). `paused`
  // receives the reason nothing was deleted, if so.
  struct RetentionResult {
    std::vector<policy::RetentionDecision> plan;
    std::vector<uint64_t> deleted;
    std::string paused;
  };
  absl::StatusOr<RetentionResult> RunRetention(Run& run, bool dry) ABSL_LOCKS_EXCLUDED(run.mu());
  absl::StatusOr<RetentionResult> RunRetentionLocked(Run& run, bool dry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu());
  // Marks a run finished (persisted beside its weights/).
  absl::Status MarkFinished(Run* run);
  void CloseAllSubscriptions();

  env::Env* env() const { return env_; }
  const DaemonFacts& facts() const { return facts_; }

 private:
  CommitHook commit_hook_;
  CommitHook staged_hook_;
  absl::StatusOr<std::shared_ptr<Run>> Load(const std::string& run_id, const std::string& dir);
  // FAILED_PRECONDITION naming the owner when `dir` is another known run's
  // directory, inside one, or contains one, or its marker names another run.
  absl::Status CheckDirFreeLocked(const std::string& run_id, const std::string& dir) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  env::Env* env_;
  std::vector<std::string> roots_;
  DaemonFacts facts_;
  // The runs. Taken before a run's lock (Scan and Open load runs under it).
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Run>> runs_ ABSL_GUARDED_BY(mu_);
  // The daemon's defaults (SIGHUP replaces them). A leaf: read under a
  // run's lock (EffectiveSchedule/Retention), so it must not be mu_, which
  // is taken before run locks (absl's deadlock detector aborts on the cycle).
  mutable absl::Mutex defaults_mu_;
  policy::Schedule default_schedule_ ABSL_GUARDED_BY(defaults_mu_);
  policy::RetentionPolicy default_retention_ ABSL_GUARDED_BY(defaults_mu_);
  policy::DiskGuard disk_guard_ ABSL_GUARDED_BY(defaults_mu_);
  SettingsStore store_;  // set once, before the daemon serves
};

}  // namespace ckptd::scheduler
