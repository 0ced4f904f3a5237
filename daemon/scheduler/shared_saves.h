// Saves by reference from trainers' shared-memory arenas (the shm path).
// Submit() checks everything that can be checked up front (run open, step due
// and in order, tensors valid, every reference inside its arena) and queues
// the save; a per-run worker thread writes queued saves in order, reading
// the arenas window by window. Each queued save holds its own reference to
// its arenas, so it commits even if the trainer dies right after Submit;
// the reference is dropped before the save is reported done. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/ingest/arena_registry.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_session.h"

namespace ckptd::scheduler {

// Where one tensor's bytes lie.
struct SharedRegion {
  std::shared_ptr<const ingest::Arena> arena;
  uint64_t offset = 0;
};

struct SharedSave {
  SaveParams params;                  // transport is set to "shm"
  std::vector<SharedRegion> regions;  // one per params.tensors, same order
  // Progressive staging: a u64 counter of tensor bytes in place (8-byte
  // aligned, inside its arena); nullopt when everything is in place already.
  std::optional<SharedRegion> progress;
};

struct SharedSaveResult {
  enum class State { kPending, kCommitted, kFailed };
  State state = State::kPending;
  uint64_t step = 0;
  storage::CheckpointRecord record;  // kCommitted
  bool is_latest = false;
  SaveTimings timings;
  absl::Status error;  // kFailed
};

class SharedSaveQueue {
 public:
  static constexpr size_t kRememberedResults = 256;  // finished saves kept per run
  static constexpr size_t kWindowBytes = 16 << 20;   // arena bytes mapped at a time

  // A progressive save whose counter does not advance for staging_timeout fails.
  SharedSaveQueue(RunRegistry* registry, size_t max_pending_per_run,
                  std::chrono::milliseconds staging_timeout = std::chrono::seconds(30))
      : registry_(registry), max_pending_(max_pending_per_run), staging_timeout_(staging_timeout) {}
  ~SharedSaveQueue();  // Drain()

  struct Accepted {
    bool skipped = false;  // not due: nothing queued
    std::string reason;
    uint64_t save_id = 0;
  };
  // NOT_FOUND / FAILED_PRECONDITION / ALREADY_EXISTS as a Save would get;
  // INVALID_ARGUMENT for a bad tensor or a reference outside its arena;
  // RESOURCE_EXHAUSTED when the run already has max_pending saves queued.
  absl::StatusOr<Accepted> Submit(SharedSave save);

  // The save's state, waiting up to `timeout` for it to finish (polling
  // `cancelled` now and then). NOT_FOUND for an unknown or forgotten id.
  absl::StatusOr<SharedSaveResult> Wait(const std::string& run_id, uint64_t save_id,
                                        std::chrono::milliseconds timeout,
                                        const std::function<bool()>& cancelled);
  // Blocks until the run has nothing queued or being written (CloseRun).
  void WaitIdle(const std::string& run_id);
  // Blocks until every queued save finished (shutdown); later Submits fail.
  void Drain();
  size_t pending() const;

 private:
  struct Job {
    uint64_t id = 0;
    SharedSave save;
  };
  struct RunQueue {
    std::deque<Job> jobs;  // the front one is being written
    std::thread worker;
    bool working = false;
    std::map<uint64_t, SharedSaveResult> results;  // pending and remembered
    std::deque<uint64_t> finished;                 // oldest first, for forgetting
  };
  absl::Status CheckOrder(Run& run, const RunQueue& q, const SaveParams& p) const;  // run.mu held
  void Work(const std::string& run_id);
  SharedSaveResult Execute(SharedSave& save);
  // Waits until the progress counter covers `needed` bytes; DEADLINE_EXCEEDED
  // when it stops advancing for staging_timeout_.
  absl::Status WaitStaged(const env::MappedWindow& counter, uint64_t needed, uint64_t total) const;

  RunRegistry* registry_;
  const size_t max_pending_;
  const std::chrono::milliseconds staging_timeout_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // a save finished
  std::map<std::string, RunQueue> queues_;
  uint64_t next_id_ = 1;
  bool draining_ = false;
};

}  // namespace ckptd::scheduler
