// WatchRun reactors and their pump.
#include "daemon/rpc/watch_streams.h"

#include <spdlog/spdlog.h>

#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/query/queries.h"

namespace ckptd::rpc {

class WatchReactor final : public grpc::ServerWriteReactor<v1::RunEvent> {
 public:
  WatchReactor(std::shared_ptr<scheduler::Subscription> sub, double max_seconds,
               std::shared_ptr<void> held, std::shared_ptr<PumpSignal> signal)
      : signal_(std::move(signal)),
        sub_(std::move(sub)),
        max_seconds_(max_seconds),
        deadline_(NowSeconds() + max_seconds),
        held_(std::move(held)) {}

  // From the pump: the next event into the stream, or the end.
  void Pump(bool stopping) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finished_ || writing_) return;
    if (stopping) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    if (NowSeconds() >= deadline_) {
      // Watches end by themselves, so none is held forever.
      FinishLocked(
          grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                       StrCat("this watch ended after server.watch_max_seconds (", max_seconds_,
                              " s); watch again with since_step = the last step seen")));
      return;
    }
    scheduler::Event e;
    if (sub_->TryNext(&e)) {
      out_ = query::Queries::EventToProto(e);
      writing_ = true;
      StartWrite(&out_);
      return;
    }
    if (sub_->overflowed()) {
      FinishLocked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                "this watcher fell more than 1024 events behind; reconnect and "
                                "ListCheckpoints since the last step seen"));
    } else if (sub_->closed()) {
      FinishLocked(grpc::Status::OK);  // the daemon is stopping
    }
  }
  bool done() const { return done_.load(); }

 private:
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away"));
    signal_->Poke();  // the next queued event, without waiting for the tick
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (!writing_) FinishLocked(grpc::Status::CANCELLED);
  }
  void OnDone() override { done_ = true; }  // the pump deletes it

  void FinishLocked(grpc::Status st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(std::move(st));
  }

  const std::shared_ptr<PumpSignal> signal_;
  const std::shared_ptr<scheduler::Subscription> sub_;
  const double max_seconds_;
  const double deadline_;
  const std::shared_ptr<void> held_;  // released with the reactor
  absl::Mutex mu_;
  v1::RunEvent out_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> done_{false};
};

namespace {

class RefusedWatch final : public grpc::ServerWriteReactor<v1::RunEvent> {
 public:
  explicit RefusedWatch(grpc::Status st) { Finish(std::move(st)); }
  void OnDone() override { delete this; }
};

}  // namespace

WatchStreams::WatchStreams() : thread_([this] { Loop(); }) {}

WatchStreams::~WatchStreams() {
  stop_ = true;
  signal_->Poke();
  thread_.join();
  absl::MutexLock lock(&mu_);
  for (WatchReactor* r : reactors_) {
    if (!r->done()) spdlog::warn("watch: a WatchRun stream outlived the server");
    delete r;
  }
}

std::function<void()> WatchStreams::OnChange() const {
  return [signal = signal_] { signal->Poke(); };
}

grpc::ServerWriteReactor<v1::RunEvent>* WatchStreams::Start(
    std::shared_ptr<scheduler::Subscription> sub, double max_seconds, std::shared_ptr<void> held) {
  auto* r = new WatchReactor(std::move(sub), max_seconds, std::move(held), signal_);
  {
    absl::MutexLock lock(&mu_);
    reactors_.push_back(r);
  }
  signal_->Poke();
  return r;
}

grpc::ServerWriteReactor<v1::RunEvent>* WatchStreams::Refuse(grpc::Status status) {
  return new RefusedWatch(std::move(status));
}

void WatchStreams::BeginShutdown() {
  shutting_down_ = true;
  signal_->Poke();
}

size_t WatchStreams::active() const {
  absl::MutexLock lock(&mu_);
  return reactors_.size();
}

void WatchStreams::Loop() {
  while (!stop_) {
    {
      // Woken by events; every 100 ms regardless, for deadlines and for
      // writes that completed (their reactor takes the next event then).
      absl::MutexLock lock(&signal_->mu);
      signal_->mu.AwaitWithTimeout(absl::Condition(&signal_->poked), absl::Milliseconds(100));
      signal_->poked = false;
    }
    std::vector<WatchReactor*> live;
    {
      absl::MutexLock lock(&mu_);
      // Only this thread deletes reactors, and only once gRPC is done with them.
      std::erase_if(reactors_, [](WatchReactor* r) {
        if (!r->done()) return false;
        delete r;
        return true;
      });
      live = reactors_;
    }
    // Not under mu_: a reactor's Finish may run OnDone inline.
    for (WatchReactor* r : live) r->Pump(shutting_down_);
  }
}

}  // namespace ckptd::rpc
