// A run's events (a checkpoint committed, a save failed, a checkpoint
// deleted) and the bounded per-subscriber queues that fan them out to
// WatchRun and the HTTP event streams. Thread-safe.
#pragma once

#include <chrono>
#include <deque>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/storage/checkpoint.h"

namespace ckptd::scheduler {

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
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<Event> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ckptd::scheduler
