// Hot restore: each run's newest committed shared-memory save, kept in
// memory after the trainer is gone ([shm] keep_last_in_memory). A copy is
// the arena (its memfd, held by a shared_ptr) the save was written from and
// where each tensor lies in it; a restarted trainer on the same host asks
// for it on the arena socket (HOT) and maps it read-only. A copy is dropped
// when another checkpoint of its run commits (the newest is latest, which
// retention never deletes), when the run is closed, and least recently used first whenever the
// copies together would exceed max_bytes. The trainer may still be alive and reusing the arena:
// readers must check each tensor's digest (the committed file's) and fall back to disk.
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/ingest/arena_registry.h"

namespace ckptd::ingest {

struct HotTensor {
  std::string name;
  uint64_t offset = 0;  // in the arena
  uint64_t bytes = 0;
};

struct HotCopyInfo {
  std::string run_id;
  uint64_t step = 0;
  uint64_t bytes = 0;  // the arena's size: what holding it costs
  std::vector<HotTensor> tensors;
  // A random key made when the copy is kept: HOT hands the copy only to a
  // peer that names it, and only GetRun and OpenRun (authorized for the
  // run) tell it. Another step's copy gets another key.
  std::string key;
};

class HotCopies {
 public:
  explicit HotCopies(uint64_t max_bytes) : max_bytes_(max_bytes) {}

  // Keeps `arena` as the run's copy of `info.step` (replacing an older one);
  // false when it alone exceeds max_bytes (nothing kept).
  bool Keep(HotCopyInfo info, std::shared_ptr<const Arena> arena) ABSL_LOCKS_EXCLUDED(mu_);
  // Another checkpoint of the run committed (not from one arena), or the run
  // was closed.
  void Drop(const std::string& run_id) ABSL_LOCKS_EXCLUDED(mu_);

  // The run's copy, if any (counts as a use for the LRU order).
  std::optional<HotCopyInfo> Find(const std::string& run_id) ABSL_LOCKS_EXCLUDED(mu_);
  // A read-only fd of the run's copy of `step` (the caller closes it), and
  // its size. NOT_FOUND when the daemon keeps no copy of that step.
  // PERMISSION_DENIED unless `key` is the copy's.
  absl::StatusOr<std::pair<int, uint64_t>> OpenReadOnly(const std::string& run_id, uint64_t step,
                                                        std::string_view key)
      ABSL_LOCKS_EXCLUDED(mu_);

  uint64_t bytes() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Copy {
    HotCopyInfo info;
    std::shared_ptr<const Arena> arena;
    uint64_t last_use = 0;
  };
  void EraseLocked(std::map<std::string, Copy>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t max_bytes_;
  mutable absl::Mutex mu_;
  std::map<std::string, Copy> copies_ ABSL_GUARDED_BY(mu_);  // by run id
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ckptd::ingest
