// Cancels Save streams whose client stopped sending: a stalled save would
// otherwise hold its run's save slot (and a server thread) forever.
// Thread-safe.
#pragma once

#include <grpcpp/server_context.h>

#include <atomic>
#include <chrono>
#include <list>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ckptd::rpc {

class StallWatchdog {
 public:
  // Streams idle for longer than `timeout` are cancelled; 0 disables.
  explicit StallWatchdog(std::chrono::milliseconds timeout);
  ~StallWatchdog();

  struct Entry {
    explicit Entry(grpc::ServerContext* ctx) : ctx_(ctx), last_(Now()) {}
    void Progress() { last_ = Now(); }
    static int64_t Now();
    grpc::ServerContext* ctx_;
    std::atomic<int64_t> last_;
  };

  // Watches `ctx` until the returned guard is destroyed.
  class Guard {
   public:
    Guard(StallWatchdog* w, std::list<Entry>::iterator it) : w_(w), it_(it) {}
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    void Progress() { it_->Progress(); }

   private:
    StallWatchdog* w_;
    std::list<Entry>::iterator it_;
  };
  Guard Watch(grpc::ServerContext* ctx);

 private:
  void Loop();

  std::chrono::milliseconds timeout_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::list<Entry> entries_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace ckptd::rpc
