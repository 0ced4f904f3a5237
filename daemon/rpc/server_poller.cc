#include "daemon/rpc/server_poller.h"

#include <pthread.h>

namespace ckptd::rpc {

ServerPoller::ServerPoller(grpc::ServerBuilder& builder)
    : cq_(builder.AddCompletionQueue(/*is_frequently_polled=*/true)) {}

ServerPoller::~ServerPoller() { Stop(); }

void ServerPoller::Start() {
  thread_ = std::thread([cq = cq_.get()] {
    pthread_setname_np(pthread_self(), "grpc-poller");
    void* tag = nullptr;
    bool ok = false;
    // Nothing is ever requested on this queue: Next returns only once it is
    // shut down and empty.
    while (cq->Next(&tag, &ok)) {
    }
  });
}

void ServerPoller::Stop() {
  if (stopped_) return;
  stopped_ = true;
  cq_->Shutdown();
  if (thread_.joinable()) {
    thread_.join();
  } else {  // never started: drain it here, as gRPC requires before it goes
    void* tag = nullptr;
    bool ok = false;
    while (cq_->Next(&tag, &ok)) {
    }
  }
}

}  // namespace ckptd::rpc
