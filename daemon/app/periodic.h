// The daemon's timers: each task on its own thread, run every period until
// Stop(), which wakes and joins them all. Thread-safe.
#pragma once

#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ckptd::app {

class Periodic {
 public:
  ~Periodic() { Stop(); }
  // Runs `tick` every `period` (the first time one period from now).
  void Every(std::chrono::microseconds period, std::function<void()> tick) ABSL_LOCKS_EXCLUDED(mu_);
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Mutex mu_;
  absl::CondVar cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // started and joined by the owner's thread only
};

}  // namespace ckptd::app
