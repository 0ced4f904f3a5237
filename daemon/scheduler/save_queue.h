// Saves accepted now and written later, in order, by a per-run worker: the
// shm path (bytes in the trainer's arenas) and the pointer path (bytes in the
// trainer's own memory). Submit() admits the save (admission.h, against the
// run's queued steps too) and checks its tensor plan; the worker runs it
// through the one SaveSession. Each queued save owns its source (and so its
// own references to arenas or the attachment), so it commits even if the
// trainer dies right after Submit. Thread-safe.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/base/time.h"
#include "daemon/ingest/hot_copies.h"
#include "daemon/ingest/tensor_source.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_session.h"

namespace ckptd::scheduler {

struct QueuedSaveResult {
  enum class State { kPending, kCommitted, kFailed };
  State state = State::kPending;
  uint64_t step = 0;
  bool read = false;                 // the source is done: every byte read, or it failed
  absl::Status read_error;           // why the source failed (the save then fails too)
  storage::CheckpointRecord record;  // kCommitted
  bool is_latest = false;
  SaveTimings timings;
  absl::Status error;  // kFailed
};

class SaveQueue {
 public:
  static constexpr size_t kRememberedResults = 256;  // finished saves kept per run

  // `hot` (may be null): where a save committed from one arena is kept for
  // hot restore.
  SaveQueue(RunRegistry* registry, size_t max_pending_per_run, ingest::HotCopies* hot = nullptr)
      : registry_(registry), max_pending_(max_pending_per_run), hot_(hot) {}
  ~SaveQueue();  // Drain()

  struct Accepted {
    bool skipped = false;  // not due: nothing queued
    std::string reason;
    uint64_t save_id = 0;
  };
  // Admits and queues. Errors as SaveSession::Begin's, plus RESOURCE_EXHAUSTED
  // when the run already has max_pending saves queued and UNAVAILABLE while
  // draining; each recorded as a failed save of the run.
  absl::StatusOr<Accepted> Submit(SaveParams params, std::unique_ptr<ingest::TensorSource> source);

  enum class Until { kRead, kFinished };
  // The save's state, waiting up to `timeout` until it is read or finished
  // (polling `cancelled` now and then). NOT_FOUND for an unknown or forgotten id.
  absl::StatusOr<QueuedSaveResult> Wait(const std::string& run_id, uint64_t save_id, Until until,
                                        std::chrono::milliseconds timeout,
                                        const std::function<bool()>& cancelled);
  // The highest step queued or being written for the run.
  std::optional<uint64_t> LastQueued(const std::string& run_id) const;
  // Blocks until the run has nothing queued or being written (CloseRun).
  void WaitIdle(const std::string& run_id);
  // Blocks until every queued save finished (shutdown); later Submits fail.
  void Drain();
  size_t pending() const;
  ingest::HotCopies* hot_copies() const { return hot_; }

 private:
  struct Job {
    uint64_t id = 0;
    SaveParams params;
    Admission admission;
    std::unique_ptr<ingest::TensorSource> source;
  };
  struct RunQueue {
    std::deque<Job> jobs;  // the front one is being written
    std::thread worker;
    bool working = false;
    std::map<uint64_t, QueuedSaveResult> results;  // pending and remembered
    std::deque<uint64_t> finished;                 // oldest first, for forgetting
  };
  absl::StatusOr<Accepted> Admit(Run& run, RunQueue& q, SaveParams& params, Admission* admission)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Work(const std::string& run_id) ABSL_LOCKS_EXCLUDED(mu_);
  QueuedSaveResult Execute(Job& job) ABSL_LOCKS_EXCLUDED(mu_);
  void MarkRead(const std::string& run_id, uint64_t id, const absl::Status& error)
      ABSL_LOCKS_EXCLUDED(mu_);
  bool Idle(const std::string& run_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Keeps the committed save's arena for hot restore (or drops the run's older copy).
  void KeepHot(const Job& job, uint64_t step);

  RunRegistry* registry_;
  const size_t max_pending_;
  ingest::HotCopies* const hot_;
  mutable absl::Mutex mu_;  // taken before any Run::mu()
  absl::CondVar cv_;        // a save was read or finished
  std::map<std::string, RunQueue> queues_ ABSL_GUARDED_BY(mu_);
  // Save ids are unique across restarts (they start at the daemon's start
  // time in microseconds), so an id from before a restart is never taken for
  // a new save.
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = static_cast<uint64_t>(NowSeconds() * 1e6);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ckptd::scheduler
