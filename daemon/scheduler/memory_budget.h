// The daemon's budget for memory that clients decide the size of: save
// headers and metadata while a save is admitted and converted, and each
// open run's settings (model metadata, provenance, exports) for as long as
// they are in memory (an idle run's leave it: RunRegistry::UnloadIdle). A request that would take
// the total past the budget is refused with RESOURCE_EXHAUSTED naming server.memory_budget_bytes,
// before anything is converted for it. Tensor bytes are not charged: they stream through bounded
// buffers (stream path) or stay in the trainer's arenas (shm, pointers). Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace ckptd::scheduler {

class MemoryBudget {
 public:
  // Protobuf messages are charged at this many times their encoded size:
  // the parsed message plus what it is converted into.
  static constexpr uint64_t kParsedFactor = 3;

  explicit MemoryBudget(uint64_t limit) : limit_(limit) {}

  // A charge held for as long as the object lives (a request in flight).
  class Charge {
   public:
    Charge() = default;
    Charge(Charge&& o) noexcept : budget_(o.budget_), bytes_(o.bytes_) { o.budget_ = nullptr; }
    Charge& operator=(Charge&& o) noexcept;
    Charge(const Charge&) = delete;
    Charge& operator=(const Charge&) = delete;
    ~Charge() { Release(); }
    void Release();
    uint64_t bytes() const { return bytes_; }

   private:
    friend class MemoryBudget;
    Charge(MemoryBudget* budget, uint64_t bytes) : budget_(budget), bytes_(bytes) {}
    MemoryBudget* budget_ = nullptr;
    uint64_t bytes_ = 0;
  };

  // `bytes` for `what` (a phrase for the error: "the save header of run 'x'").
  absl::Status Reserve(uint64_t bytes, const std::string& what, Charge* out)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A run's settings: replaces what the run held before (a reopen), so
  // reopening never grows the total. `force`: counted even past the budget
  // (runs found on disk at startup are never refused).
  absl::Status ReserveForRun(const std::string& run_id, uint64_t bytes, bool force = false)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Returns all a run holds (its settings left memory).
  void ReleaseRun(const std::string& run_id) ABSL_LOCKS_EXCLUDED(mu_);

  // What a run's settings hold now (0 for a run not opened yet).
  uint64_t HeldByRun(const std::string& run_id) const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t used() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t limit() const { return limit_; }

 private:
  absl::Status CheckLocked(uint64_t bytes, uint64_t freed, const std::string& what) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Return(uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);

  const uint64_t limit_;
  mutable absl::Mutex mu_;
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> runs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckptd::scheduler
