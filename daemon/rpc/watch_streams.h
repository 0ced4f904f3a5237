// WatchRun on gRPC's callback API: a held watch costs no server thread. Each
// watch is a write reactor fed from its run's event subscription; one pump
// thread moves queued events into the reactors that are not writing, ends
// watches that outlived their time, fell behind, or whose run subscriptions
// closed (shutdown), and deletes reactors gRPC is done with. Writes are
// asynchronous: a slow dashboard delays only itself, and its bounded queue
// (Subscription::kMaxQueued) ends it when it falls behind. Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "ckptd/v1/ckptd.pb.h"
#include "daemon/scheduler/events.h"

namespace ckptd::rpc {

class WatchReactor;

// The wake-up the subscriptions ring, shared so that a publisher holding a
// subscription never outlives what it pokes.
struct PumpSignal {
  absl::Mutex mu;
  bool poked ABSL_GUARDED_BY(mu) = false;
  void Poke() {
    absl::MutexLock lock(&mu);
    poked = true;
  }
};

class WatchStreams {
 public:
  WatchStreams();
  // Call after the gRPC server has shut down (every watch is done by then).
  ~WatchStreams();
  WatchStreams(const WatchStreams&) = delete;
  WatchStreams& operator=(const WatchStreams&) = delete;

  // What Subscribe should call on every event (wakes the pump).
  std::function<void()> OnChange() const;
  // A watch over `sub`, ended with DEADLINE_EXCEEDED after `max_seconds`;
  // `held` (its stream slots) is released when gRPC is done with it.
  grpc::ServerWriteReactor<v1::RunEvent>* Start(std::shared_ptr<scheduler::Subscription> sub,
                                                double max_seconds, std::shared_ptr<void> held);
  // A watch refused before it started.
  static grpc::ServerWriteReactor<v1::RunEvent>* Refuse(grpc::Status status);

  size_t active() const;
  // Ends every watch (OK) and refuses none: the daemon is stopping.
  void BeginShutdown();

 private:
  void Loop();

  std::shared_ptr<PumpSignal> signal_ = std::make_shared<PumpSignal>();
  mutable absl::Mutex mu_;
  std::vector<WatchReactor*> reactors_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stop_{false};
  std::atomic<bool> shutting_down_{false};
  std::thread thread_;
};

}  // namespace ckptd::rpc
