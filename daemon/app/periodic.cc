// Timer threads.
#include "daemon/app/periodic.h"

#include "absl/time/clock.h"

namespace ckptd::app {

void Periodic::Every(std::chrono::microseconds period, std::function<void()> tick) {
  threads_.emplace_back([this, period, tick = std::move(tick)] {
    absl::MutexLock lock(&mu_);
    while (true) {
      const absl::Time deadline = absl::Now() + absl::FromChrono(period);
      while (!stop_ && !cv_.WaitWithDeadline(&mu_, deadline)) {
      }
      if (stop_) return;
      mu_.Unlock();
      tick();
      mu_.Lock();
    }
  });
}

void Periodic::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

}  // namespace ckptd::app
