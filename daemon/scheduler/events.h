// A run's events (a checkpoint committed, a save failed, a checkpoint
// deleted) and the bounded per-subscriber queues that fan them out to
// WatchRun and the HTTP event streams. Thread-safe.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/storage/checkpoint.h"

namespace ckptd::scheduler {

struct Event {
  enum class Type { kCommitted, kFailed, kDeleted, kUploaded, kUploadFailed, kQuarantined };
  Type type = Type::kCommitted;
  std::string run_id;
  uint64_t step = 0;
  std::optional<storage::CheckpointRecord> record;  // kCommitted
  bool is_latest = false;
  // kFailed, kUploadFailed: the error; kQuarantined: the file, where it
  // went and why.
  std::string error;
  std::string time_utc;
  std::string reason;  // kDeleted: why (retention, the disk guard, the memory tier)
  uint64_t id = 0;     // set by Run::Publish: 1, 2, ... in publishing order
};

// One subscriber's queue. Bounded: a subscriber that falls kMaxQueued
// events behind is closed rather than let memory grow.
class Subscription {
 public:
  static constexpr size_t kMaxQueued = 1024;
  Subscription() = default;
  // `on_change` runs (outside the queue's lock, on the publishing thread)
  // after every Push and Close: a cheap wake-up, for a reader that does not
  // block in Next.
  explicit Subscription(std::function<void()> on_change) : on_change_(std::move(on_change)) {}
  // Waits up to `timeout`; false when nothing arrived or the subscription closed.
  bool Next(Event* out, std::chrono::milliseconds timeout);
  // Next without waiting.
  bool TryNext(Event* out) { return Next(out, std::chrono::milliseconds(0)); }
  bool closed() const;
  bool overflowed() const;
  void Push(const Event& e);
  void Close();

 private:
  const std::function<void()> on_change_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<Event> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ckptd::scheduler
