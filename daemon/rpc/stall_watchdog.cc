// Stalled-stream watchdog.
#include "daemon/rpc/stall_watchdog.h"

#include <spdlog/spdlog.h>

namespace ckptd::rpc {

int64_t StallWatchdog::Entry::Now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

StallWatchdog::StallWatchdog(std::chrono::milliseconds timeout) : timeout_(timeout) {
  if (timeout_.count() > 0) thread_ = std::thread([this] { Loop(); });
}

StallWatchdog::~StallWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  if (thread_.joinable()) thread_.join();
}

StallWatchdog::Guard StallWatchdog::Watch(grpc::ServerContext* ctx) {
  absl::MutexLock lock(&mu_);
  entries_.emplace_front(ctx);
  return Guard(this, entries_.begin());
}

StallWatchdog::Guard::~Guard() {
  absl::MutexLock lock(&w_->mu_);
  w_->entries_.erase(it_);
}

void StallWatchdog::Loop() {
  const auto period = std::max(std::chrono::milliseconds(50), timeout_ / 4);
  absl::MutexLock lock(&mu_);
  while (true) {
    const absl::Time deadline = absl::Now() + absl::FromChrono(period);
    while (!stop_ && !cv_.WaitWithDeadline(&mu_, deadline)) {
    }
    if (stop_) break;
    const int64_t now = Entry::Now();
    for (Entry& e : entries_) {
      if (now - e.last_ > timeout_.count()) {
        spdlog::warn(
            "cancelling a save stream idle for over {}ms (server.save_idle_timeout_seconds)",
            timeout_.count());
        e.ctx_->TryCancel();
        e.last_ = now;  // once per timeout
      }
    }
  }
}

}  // namespace ckptd::rpc
