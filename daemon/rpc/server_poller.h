// Keeps one thread polling a gRPC server's connections at all times.
//
// Why: gRPC 1.51 serves callback methods (WatchRun) from "nexting" threads
// that, after a second without events, sleep for 100 ms outside the poller.
// The sync server's threads do not always take over the poll when they do:
// measured here, every other SaveShared or WaitSaved call of a trainer saving
// every 0.5 s waited 60-80 ms before the daemon read it, while no daemon
// thread was in epoll_wait (a syscall trace showed the request written, and
// no poll until a nexting thread woke). One thread blocked in Next() on a
// completion queue of the server's own, which never has work, is always a
// worker gRPC can hand the poll to; with it those calls took 1-5 ms.
// `bench/shm_save_bench`'s spaced saves show the difference.
//
// Use: construct before BuildAndStart (it adds the queue to the builder),
// Start() once the server is built, and Stop() after the server's Shutdown
// (gRPC requires the server to stop before its queues). Not thread-safe:
// the daemon's start and stop call it, from one thread.
#pragma once

#include <grpcpp/server_builder.h>

#include <memory>
#include <thread>

namespace ckptd::rpc {

class ServerPoller {
 public:
  explicit ServerPoller(grpc::ServerBuilder& builder);
  ~ServerPoller();
  ServerPoller(const ServerPoller&) = delete;
  ServerPoller& operator=(const ServerPoller&) = delete;

  void Start();
  // Shuts the queue down and joins the thread; again is a no-op.
  void Stop();

 private:
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::thread thread_;
  bool stopped_ = false;
};

}  // namespace ckptd::rpc
