// The runs the daemon knows: found under the configured roots at startup or
// opened by trainers since. Each Run serializes its saves (one at a time, in
// arrival order) and guards its state with a short-held lock, so listings
// never wait behind a long save. Events (committed, failed, deleted) fan out
// to WatchRun subscribers through bounded queues. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/value.h"
#include "daemon/policy/retention.h"
#include "daemon/policy/schedule.h"
#include "daemon/storage/pins.h"
#include "daemon/storage/run_dir.h"

namespace ckptd::scheduler {

enum class RunState { kIdle, kOpen, kFinished };

struct RunSettings {
  gguf::Metadata model_metadata;  // passed through into every checkpoint
  gguf::Metadata provenance;      // ckpt.trainer.*, ckpt.client.pid
  std::string base_model_uuid;
  std::optional<policy::Schedule> schedule;          // nullopt: the daemon's default
  std::optional<policy::RetentionPolicy> retention;  // nullopt: the daemon's default
};

struct Event {
  enum class Type { kCommitted, kFailed, kDeleted };
  Type type = Type::kCommitted;
  std::string run_id;
  uint64_t step = 0;
  std::optional<storage::CheckpointRecord> record;  // kCommitted
  bool is_latest = false;
  std::string error;  // kFailed: the error; kDeleted: retention's reason
  std::string time_utc;
};

// One subscriber's queue. Bounded: a subscriber that falls kMaxQueued
// events behind is closed rather than let memory grow.
class Subscription {
 public:
  static constexpr size_t kMaxQueued = 1024;
  // Waits up to `timeout`; false when nothing arrived or the subscription closed.
  bool Next(Event* out, std::chrono::milliseconds timeout);
  bool closed() const;
  bool overflowed() const;
  void Push(const Event& e);
  void Close();

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> queue_;
  bool closed_ = false;
  bool overflowed_ = false;
};

struct DaemonFacts {
  std::string version;
  std::string host;
  uint32_t alignment = 32;
  env::DirectIo direct_io = env::DirectIo::kAuto;
  gguf::UuidScheme uuid_scheme = gguf::UuidScheme::kContent;
};

class Run {
 public:
  Run(std::string id, std::unique_ptr<storage::RunDir> dir, storage::PinStore pins)
      : pins(std::move(pins)), id_(std::move(id)), dir_(std::move(dir)) {}
  const std::string& id() const { return id_; }

  std::mutex save_mu;     // held for a whole save: saves of one run never interleave
  mutable std::mutex mu;  // guards everything below; never held across I/O of tensor data

  storage::RunDir* dir() { return dir_.get(); }
  const storage::RunDir* dir() const { return dir_.get(); }
  RunState state = RunState::kIdle;
  std::optional<RunSettings> settings;  // set by OpenRun
  double reference_time_s = 0;          // last commit, or when opened
  std::string last_error;
  // An unresolved write error (I/O, not a client's mistake): retention pauses
  // until a save succeeds again.
  std::string write_error;
  storage::PinStore pins;
  std::set<uint64_t> in_flight;  // steps being written

  void Publish(const Event& e);
  void PublishLocked(const Event& e);  // mu held
  std::shared_ptr<Subscription> Subscribe();
  void CloseSubscriptions();

 private:
  std::string id_;
  std::unique_ptr<storage::RunDir> dir_;
  std::vector<std::weak_ptr<Subscription>> subscribers_;  // guarded by mu
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
  // lives in another directory.
  absl::StatusOr<std::shared_ptr<Run>> Open(const std::string& run_id,
                                            const std::string& requested_dir, RunSettings settings,
                                            bool* resumed);
  absl::StatusOr<std::shared_ptr<Run>> Get(const std::string& run_id) const;
  std::vector<std::shared_ptr<Run>> List() const;

  policy::Schedule EffectiveSchedule(const Run& run) const;          // run.mu held by the caller
  policy::RetentionPolicy EffectiveRetention(const Run& run) const;  // run.mu held
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
  absl::StatusOr<RetentionResult> RunRetention(Run& run, bool dry);        // takes run.mu
  absl::StatusOr<RetentionResult> RunRetentionLocked(Run& run, bool dry);  // run.mu held
  // Marks a run finished (persisted beside its weights/).
  absl::Status MarkFinished(Run* run);
  void CloseAllSubscriptions();

  env::Env* env() const { return env_; }
  const DaemonFacts& facts() const { return facts_; }

 private:
  absl::StatusOr<std::string> ResolveRunDir(const std::string& run_id,
                                            const std::string& requested) const;
  absl::StatusOr<std::shared_ptr<Run>> Load(const std::string& run_id, const std::string& dir);

  env::Env* env_;
  std::vector<std::string> roots_;
  DaemonFacts facts_;
  mutable std::mutex mu_;
  policy::Schedule default_schedule_;
  policy::RetentionPolicy default_retention_;
  policy::DiskGuard disk_guard_;
  std::map<std::string, std::shared_ptr<Run>> runs_;
};

// Seconds since the epoch, and the same as RFC 3339 UTC with milliseconds.
double NowSeconds();
std::string FormatUtc(double seconds);

}  // namespace ckptd::scheduler
