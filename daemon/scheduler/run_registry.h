// The runs the daemon knows: found under the configured roots at startup or
// opened by trainers since. Each Run serializes its saves (one at a time, in
// arrival order) and guards its state with a short-held lock, so listings
// never wait behind a long save; readers get snapshots. Every change to a
// run outside a save (a multi-rank part's verdict, a step fetched back,
// pins, retention) is a RunRegistry method, and every commit ends in one
// tail (catalog, events, metrics, log line, observers, retention). Events
// fan out to WatchRun subscribers through bounded queues. Thread-safe.
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
#include <utility>
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

// Where a step is kept on this node: the disk tier is the run directory;
// the memory tier is a second run directory on a memory-backed file system
// (the daemon's [memory] root, tmpfs), holding the run's last few memory
// steps as complete checkpoints with the same commit recipe.
enum class Tier { kDisk, kMemory };
std::string_view TierName(Tier t);

// The daemon's memory tier ([memory]).
struct MemoryTierOptions {
  std::string root;        // "" = off: a run asking for memory steps is refused
  uint32_t keep_last = 2;  // memory steps kept per run (a run's schedule may say otherwise)
  uint64_t max_bytes = 0;  // all runs' memory steps together; 0 = no cap beyond tmpfs's size
};

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
class RunRegistry;
struct AdmitRequest;
struct Admission;

// Where a run's settings come back from after they left memory (the run
// lifecycle keeps them in the run directory and charges them to the
// memory budget).
class SettingsStore {
 public:
  virtual ~SettingsStore() = default;
  virtual absl::StatusOr<RunSettings> Reload(const Run& run) = 0;
  virtual void Unloaded(const Run& run) = 0;  // after a run's settings left memory
};

// Where a committed checkpoint came from.
enum class CommitSource {
  kSave,     // a trainer's save, written here
  kStep,     // a multi-rank run's part, committed by its step's verdict
  kFetched,  // brought back from the object store
};

// Told of every checkpoint that becomes durable here, on the committing
// thread with no run lock held. Set before serving.
class CommitObserver {
 public:
  virtual ~CommitObserver() = default;
  virtual void OnCommitted(Run& run, const storage::CheckpointRecord& record,
                           CommitSource source) = 0;
  // A multi-rank run's part is durable here; its step is not committed yet.
  virtual void OnStaged(Run& run, const storage::CheckpointRecord& record) = 0;
  // A committed step was found damaged after its commit and quarantined:
  // it is no longer in the catalog (a copy elsewhere may bring it back).
  virtual void OnQuarantined(Run& /*run*/, uint64_t /*step*/) {}
  // The scrubber found `path` of committed `step` intact: a copy elsewhere
  // may be checked against it (and replaced from it). Returns the bytes
  // that check read, charged to the scrubber's rate.
  virtual uint64_t OnIntact(Run& /*run*/, uint64_t /*step*/, const std::string& /*path*/) {
    return 0;
  }
};

// Told of every step a trainer's save made durable on this node, in either
// tier (a multi-rank part and a fetched step are not), on the committing
// thread with no run lock held: the peers' replication. Set before serving.
class TierObserver {
 public:
  virtual ~TierObserver() = default;
  virtual void OnTierCommitted(Run& run, const storage::CheckpointRecord& record, Tier tier) = 0;
};

struct DaemonFacts {
  std::string version;
  std::string host;
  uint32_t alignment = 32;
  env::DirectIo direct_io = env::DirectIo::kAuto;
  gguf::UuidScheme uuid_scheme = gguf::UuidScheme::kContent;
  std::string export_profiles_dir;  // named profiles beyond the built-ins; "" = none
  // Disk saves share tensors equal to the run's previous checkpoint's
  // (storage::CloneSource) where the file system can.
  bool share_unchanged = true;
};

// A run as readers see it at one moment: a copy made under the run's lock,
// which readers never take. The catalogs are shared, never copied.
struct RunSnapshot {
  std::string id;
  std::string run_dir;
  RunState state = RunState::kIdle;
  bool opened = false;                // has settings (OpenRun, or restored at start)
  policy::Schedule schedule;          // effective (the run's or the daemon's)
  policy::RetentionPolicy retention;  // effective
  std::vector<std::string> export_names;
  std::string base_model_uuid;
  RunTier tier;
  RunMultiRank multi_rank;
  std::string last_error;
  std::string write_error;
  std::map<uint64_t, std::string> pins;  // step -> reason
  std::set<uint64_t> holds;              // in flight or awaiting upload: retention keeps them
  std::shared_ptr<const storage::Catalog> catalog;
  std::shared_ptr<const storage::Catalog> pending;
  std::vector<storage::QuarantinedFile> quarantined;
  std::optional<uint64_t> latest_step;
  // The memory tier: its steps (null when the run has none) and directory.
  std::shared_ptr<const storage::Catalog> memory_catalog;
  std::string memory_dir;
  // The highest step the trainer asked about (ShouldSave) or saved since
  // the daemon started: what a restore now would lose is measured from it.
  std::optional<uint64_t> last_seen_step;
  double reference_time_s = 0;  // the disk schedule's clock: last commit, or when opened
  double last_active_s = 0;     // the last open, save or commit in this daemon (0: none)
  double step_seconds = 0;      // measured time per step (0 = not yet)
  double stall_seconds = 0;     // measured save stall (0 = not yet)

  std::optional<uint64_t> memory_step() const;  // the newest memory step
  std::optional<uint64_t> newest_step() const;  // the newest step in either tier

  const storage::CheckpointRecord* Find(uint64_t step) const;  // on disk
  // On disk, else in the memory tier (`tier` says which).
  const storage::CheckpointRecord* FindAny(uint64_t step, Tier* tier) const;
  uint64_t total_bytes() const;
  // What retention would do now (nothing is deleted).
  std::vector<policy::RetentionDecision> DryPlan(double now_s) const;
};

// A random token naming one Run object's event ids (Run::event_epoch).
std::string NewEventEpoch();

// One run's state, owned by the scheduler: mu_ guards everything below and
// is never held across I/O of tensor data; save_mu_ is held for a whole
// save, so saves of one run never interleave (taken before mu_, never while
// holding it). Outside scheduler/ a run is read through Snapshot() and
// changed through RunRegistry: no other layer takes its locks (they are
// private, so the compiler says so).
class Run {
 public:
  Run(std::string id, std::unique_ptr<storage::RunDir> dir, storage::PinStore pins,
      const RunRegistry* registry)
      : id_(std::move(id)),
        run_dir_(dir->run_dir()),
        registry_(registry),
        pins_(std::move(pins)),
        dir_(std::move(dir)),
        event_epoch_(NewEventEpoch()) {}
  const std::string& id() const { return id_; }
  // Fixed for the run's lifetime.
  const std::string& run_dir() const { return run_dir_; }

  RunSnapshot Snapshot() const ABSL_LOCKS_EXCLUDED(mu_);

  // Committed steps the object-storage tier has not uploaded yet:
  // retention and the disk guard keep them so none is lost before it
  // reaches the store.
  void HoldForUpload(uint64_t step) ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseUploadHold(uint64_t step) ABSL_LOCKS_EXCLUDED(mu_);

  void Publish(const Event& e) ABSL_LOCKS_EXCLUDED(mu_);
  // `on_change`: see Subscription. With `after` (an Event::id this run's
  // object published), the kept events after it come first; `*gap` (when
  // given) says whether some were published after it but are no longer kept.
  std::shared_ptr<Subscription> Subscribe(std::function<void()> on_change = nullptr,
                                          std::optional<uint64_t> after = std::nullopt,
                                          bool* gap = nullptr) ABSL_LOCKS_EXCLUDED(mu_);
  // Names this run object's event ids: a random token, other for every Run
  // object (a daemon restart, a run forgotten and opened again), so an id
  // from another cannot be taken for one of this one's.
  const std::string& event_epoch() const { return event_epoch_; }
  // Events kept for subscribers that reconnect (Subscribe's `after`).
  static constexpr size_t kKeptEvents = 256;
  void CloseSubscriptions() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The scheduler's own: they change a run under its locks.
  friend class RunRegistry;
  friend class RunLifecycle;
  friend class SaveSession;
  friend class SaveQueue;
  friend class SavePipeline;
  friend class RunTestPeer;  // tests/scheduler
  friend absl::StatusOr<Admission> Admit(const Run& run, const policy::Schedule& schedule,
                                         const AdmitRequest& request,
                                         std::optional<uint64_t> queued_last, double now);
  friend void RecordFailure(Run& run, uint64_t step, const absl::Status& why,
                            std::string_view detail);

  absl::Mutex& mu() const ABSL_LOCK_RETURNED(mu_) { return mu_; }
  absl::Mutex& save_mu() ABSL_LOCK_RETURNED(save_mu_) { return save_mu_; }
  storage::RunDir* dir() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return dir_.get(); }
  const storage::RunDir* dir() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return dir_.get(); }
  // The tier's directory; the memory tier's only once opened
  // (RunRegistry::OpenMemoryDir), else null.
  storage::RunDir* dir(Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return t == Tier::kDisk ? dir_.get() : mem_dir_.get();
  }
  // The memory tier's `auto`: the time per step, from ShouldSave's steps and
  // times, and the trainer's save stall, as it reports it (moving averages).
  void ObserveStep(uint64_t step, double now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (last_ask_ && step > last_ask_->first) {
      const double per_step =
          (now - last_ask_->second) / static_cast<double>(step - last_ask_->first);
      step_s_ = step_s_ > 0 ? 0.8 * step_s_ + 0.2 * per_step : per_step;
    }
    last_ask_ = std::pair(step, now);
  }
  // After an OpenRun the first step seen starts afresh (a resumed trainer
  // counts from its restored step); until then the old one stays, so the
  // resumed trainer's restore is told what it lost.
  void SawStep(uint64_t step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (std::exchange(reopened_, false) || !last_seen_step_ || step > *last_seen_step_) {
      last_seen_step_ = step;
    }
  }
  // A trainer's call (ShouldSave, a save): stamps the time and makes a run
  // that went idle open again (a finished run stays finished).
  void MarkActive(double now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    last_active_s_ = now;
    if (state_ == RunState::kIdle && settings_) state_ = RunState::kOpen;
  }
  // What retention must not delete besides latest and pins.
  std::set<uint64_t> RetentionHolds() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::set<uint64_t> out = in_flight_;
    out.insert(awaiting_upload_.begin(), awaiting_upload_.end());
    return out;
  }
  void PublishLocked(const Event& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string id_;
  const std::string run_dir_;
  const RunRegistry* const registry_;  // the daemon's defaults
  mutable absl::Mutex mu_;
  absl::Mutex save_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  RunState state_ ABSL_GUARDED_BY(mu_) = RunState::kIdle;
  std::optional<RunSettings> settings_ ABSL_GUARDED_BY(mu_);  // set by OpenRun
  // The bulky part of `settings_` (model metadata, provenance, export
  // profiles) left memory while the run was idle (RunRegistry::UnloadIdle);
  // schedule, retention, base model and export names stay.
  bool settings_unloaded_ ABSL_GUARDED_BY(mu_) = false;
  double reference_time_s_ ABSL_GUARDED_BY(mu_) = 0;  // last commit, or when opened
  double last_active_s_ ABSL_GUARDED_BY(mu_) = 0;     // last OpenRun, ShouldSave or save
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  // An unresolved write error (I/O, not a client's mistake): retention
  // pauses until a save succeeds again.
  std::string write_error_ ABSL_GUARDED_BY(mu_);
  bool buffered_noted_ ABSL_GUARDED_BY(mu_) = false;  // said once: no direct I/O here
  // A disk save found that the run's file system cannot share extents:
  // later saves do not open the previous checkpoint to try again.
  bool cannot_share_ ABSL_GUARDED_BY(mu_) = false;
  storage::PinStore pins_ ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> in_flight_ ABSL_GUARDED_BY(mu_);  // steps being written
  std::set<uint64_t> awaiting_upload_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<storage::RunDir> dir_ ABSL_PT_GUARDED_BY(mu_);
  std::unique_ptr<storage::RunDir> mem_dir_ ABSL_PT_GUARDED_BY(mu_);  // the memory tier's
  std::optional<uint64_t> last_seen_step_ ABSL_GUARDED_BY(mu_);
  bool reopened_ ABSL_GUARDED_BY(mu_) = false;  // OpenRun since the last step seen
  std::optional<std::pair<uint64_t, double>> last_ask_ ABSL_GUARDED_BY(mu_);  // step, time
  double step_s_ ABSL_GUARDED_BY(mu_) = 0;           // measured seconds per step
  double stall_s_ ABSL_GUARDED_BY(mu_) = 0;          // measured save stall
  uint64_t auto_interval_ ABSL_GUARDED_BY(mu_) = 0;  // memory_auto's choice; 0 = none yet
  std::vector<std::weak_ptr<Subscription>> subscribers_ ABSL_GUARDED_BY(mu_);
  const std::string event_epoch_;
  uint64_t last_event_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Event> kept_events_ ABSL_GUARDED_BY(mu_);  // the newest kKeptEvents
};

class RunRegistry {
 public:
  // `roots` must be absolute and resolved (realpath).
  RunRegistry(env::Env* env, std::vector<std::string> roots, policy::Schedule default_schedule,
              DaemonFacts facts, policy::RetentionPolicy default_retention = {},
              policy::DiskGuard disk_guard = {});

  // Before Scan: the memory tier's directory and budget.
  void SetMemoryTier(MemoryTierOptions options) { memory_ = std::move(options); }
  const MemoryTierOptions& memory_tier() const { return memory_; }

  // Opens every <root>/<run_id>/weights under the roots (recovering each),
  // and each run's memory-tier directory found under the memory root;
  // problems are returned as warnings, not errors.
  std::vector<std::string> Scan();

  // The run's memory-tier directory (<memory root>/<run_id>), opened (and
  // recovered) if it is not yet. FAILED_PRECONDITION when the daemon has no
  // memory tier.
  absl::Status OpenMemoryDir(Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);
  // The bytes every run's memory steps hold, together.
  uint64_t MemoryTierBytes() const;

  // Registers or resumes a run. INVALID_ARGUMENT for a bad id, PERMISSION_DENIED
  // for a directory outside the roots, FAILED_PRECONDITION if the id already
  // lives in another directory or the directory belongs to (or nests with)
  // another run's. The first open records the run id in the directory.
  absl::StatusOr<std::shared_ptr<Run>> Open(const std::string& run_id,
                                            const std::string& requested_dir, RunSettings settings,
                                            bool* resumed);
  // Gives a run found by Scan the settings it was last opened with: it takes
  // saves again as if opened (unless it was finished).
  void Restore(Run& run, RunSettings settings);
  absl::StatusOr<std::shared_ptr<Run>> Get(const std::string& run_id) const;
  std::vector<std::shared_ptr<Run>> List() const;

  // Both set once, before the daemon serves; either may stay unset.
  void SetSettingsStore(SettingsStore* store) { store_ = store; }
  void SetObserver(CommitObserver* observer) { observer_ = observer; }
  void SetTierObserver(TierObserver* observer) { tier_observer_ = observer; }

  // Idle runs give their settings' memory back: a run with no OpenRun,
  // ShouldSave or save for `idle_s` (closed, or its trainer went away) and
  // no save in progress drops the bulky part of its settings (with a
  // SettingsStore) and, if it was open, is idle until it is used again.
  // Returns the ids unloaded.
  std::vector<std::string> UnloadIdle(double idle_s, double now);
  // Before a save uses a run's settings: reads them back if they were
  // unloaded. FAILED_PRECONDITION (reopen the run) when they cannot be.
  absl::Status EnsureSettings(Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.save_mu_)
      ABSL_LOCKS_EXCLUDED(run.mu_);

  policy::Schedule EffectiveSchedule(const Run& run) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);
  policy::RetentionPolicy EffectiveRetention(const Run& run) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);
  void SetDefaults(const policy::Schedule& s, const policy::RetentionPolicy& r,
                   const policy::DiskGuard& g);
  policy::DiskGuard disk_guard() const;

  // The one commit tail, after the files are durable and in the catalog:
  // the schedule's clock restarts and the run's errors clear, then the
  // metric, the log line (`how` and `details` in it), the COMMITTED event,
  // the observer, and retention (whose failure does not fail the commit).
  void Committed(Run& run, const storage::CheckpointRecord& record, CommitSource source,
                 std::string_view details) ABSL_LOCKS_EXCLUDED(run.mu_);
  // The commit tail of a memory step: the metric, the log line, the
  // COMMITTED event, then the run's memory steps beyond its keep_last and
  // those above this step (an abandoned continuation: the trainer resumed
  // from an older step) are evicted. No observer, no retention: the memory
  // tier is this node's alone.
  void CommittedToMemory(Run& run, const storage::CheckpointRecord& record,
                         std::string_view details) ABSL_LOCKS_EXCLUDED(run.mu_);
  // A trainer's save stall as it reported it (SaveShared): measured for the
  // memory tier's `auto`, whose interval follows.
  void RecordStall(Run& run, double seconds) ABSL_LOCKS_EXCLUDED(run.mu_);
  // ShouldSave saw `step` now: measured for `auto` (the interval follows).
  void ObserveStep(Run& run, uint64_t step, double now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);
  // Memory steps `steps` of `run` were evicted to make room for `for_step`
  // under [memory] max_bytes (logged, counted, published).
  void EvictMemoryForRoom(Run& run, const std::vector<uint64_t>& steps, uint64_t for_step)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);
  // A multi-rank part durable here: the observer uploads and reports it.
  void Staged(Run& run, const storage::CheckpointRecord& record) ABSL_LOCKS_EXCLUDED(run.mu_);

  // A multi-rank step's verdict on this node's part. Commit: the part's
  // marker, the catalog and `latest`, then the commit tail. Abort: the
  // part's files removed and the failure recorded as a save's is (event,
  // metric, last_error).
  absl::StatusOr<storage::CheckpointRecord> CommitPart(Run& run, uint64_t step)
      ABSL_LOCKS_EXCLUDED(run.mu_);
  void AbortPart(Run& run, uint64_t step, const std::string& reason) ABSL_LOCKS_EXCLUDED(run.mu_);

  // Brings a step into the run from elsewhere: `place` runs with the run's
  // saves held off and puts the step's files into `weights_dir` (model file
  // last); the run directory then adopts them (storage::RunDir::Adopt) and
  // the commit tail runs with CommitSource::kFetched. A step already
  // committed here is returned without calling `place`.
  using PlaceFn = std::function<absl::StatusOr<uint64_t>(const std::string& weights_dir)>;
  // The scrubber found `path` of committed `step` intact: the observer's
  // OnIntact, or 0 without one.
  uint64_t ScrubbedIntact(Run& run, uint64_t step, const std::string& path) {
    return observer_ != nullptr ? observer_->OnIntact(run, step, path) : 0;
  }
  // The scrubber found `path` of committed `step` damaged: quarantined
  // (storage::RunDir::QuarantineDamaged) with saves held off, each file
  // logged, counted (by = scrub) and published as QUARANTINED; the observer
  // is told when the step left the catalog.
  absl::StatusOr<storage::RunDir::Damaged> QuarantineDamaged(Run& run, uint64_t step,
                                                             const std::string& path,
                                                             const std::string& reason)
      ABSL_LOCKS_EXCLUDED(run.mu_, run.save_mu_);
  absl::StatusOr<storage::CheckpointRecord> Adopt(Run& run, std::optional<uint64_t> step,
                                                  const PlaceFn& place)
      ABSL_LOCKS_EXCLUDED(run.mu_, run.save_mu_);

  // Pins: NOT_FOUND for a step the run does not have.
  absl::StatusOr<storage::CheckpointRecord> Pin(Run& run, uint64_t step, const std::string& reason)
      ABSL_LOCKS_EXCLUDED(run.mu_);
  absl::Status Unpin(Run& run, uint64_t step) ABSL_LOCKS_EXCLUDED(run.mu_);

  // Plans retention for a run and, unless dry or paused by a write error,
  // deletes what it drops (logging and publishing DELETED events). `paused`
  // receives the reason nothing was deleted, if so.
  struct RetentionResult {
    std::string policy;  // described
    std::vector<policy::RetentionDecision> plan;
    std::vector<uint64_t> deleted;
    std::string paused;
  };
  absl::StatusOr<RetentionResult> RunRetention(Run& run, bool dry) ABSL_LOCKS_EXCLUDED(run.mu_);
  // Marks a run finished (persisted beside its weights/).
  absl::Status MarkFinished(Run* run);
  void CloseAllSubscriptions();

  env::Env* env() const { return env_; }
  const DaemonFacts& facts() const { return facts_; }
  const std::vector<std::string>& roots() const { return roots_; }

 private:
  friend class Run;
  absl::StatusOr<RetentionResult> RunRetentionLocked(Run& run, bool dry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);
  absl::StatusOr<std::shared_ptr<Run>> Load(const std::string& run_id, const std::string& dir);
  // FAILED_PRECONDITION naming the owner when `dir` is another known run's
  // directory, inside one, or contains one, or its marker names another run.
  absl::Status CheckDirFreeLocked(const std::string& run_id, const std::string& dir) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // memory_auto: the interval for what is measured now (logged when it changes).
  void UpdateAutoInterval(Run& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);
  // Evicts memory steps `steps` (logged, counted, published as DELETED with `why`).
  void EvictMemory(Run& run, const std::vector<uint64_t>& steps, std::string_view why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run.mu_);

  env::Env* env_;
  std::vector<std::string> roots_;
  MemoryTierOptions memory_;
  DaemonFacts facts_;
  SettingsStore* store_ = nullptr;
  CommitObserver* observer_ = nullptr;
  TierObserver* tier_observer_ = nullptr;
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
};

}  // namespace ckptd::scheduler
