// Event queues.
#include "daemon/scheduler/events.h"

namespace ckptd::scheduler {

bool Subscription::Next(Event* out, std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
  while (queue_.empty() && !closed_) {
    if (cv_.WaitWithDeadline(&mu_, deadline)) break;  // timed out
  }
  if (queue_.empty()) return false;
  *out = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

bool Subscription::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_ && queue_.empty();
}

bool Subscription::overflowed() const {
  absl::MutexLock lock(&mu_);
  return overflowed_;
}

void Subscription::Push(const Event& e) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    if (queue_.size() >= kMaxQueued) {
      overflowed_ = closed_ = true;
    } else {
      queue_.push_back(e);
    }
  }
  cv_.SignalAll();
  if (on_change_) on_change_();
}

void Subscription::Close() {
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  cv_.SignalAll();
  if (on_change_) on_change_();
}

}  // namespace ckptd::scheduler
