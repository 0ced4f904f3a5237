// The calls the gRPC server is running, counted so that a stop can wait for
// them and then close every connection at once. gRPC's own graceful
// shutdown also waits, per connection, for a ping that an idle client
// (Python's channels between calls) answers only when its poller next
// runs: up to 5 s more for every stop with a trainer connected.
#pragma once

#include <grpcpp/support/server_interceptor.h>

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ckptd::rpc {

class ActiveCalls {
 public:
  void Begin();
  void End();
  // True once no call is running, false at `deadline` with some still running.
  bool WaitUntilNone(absl::Time deadline);
  int64_t running() const;

 private:
  mutable absl::Mutex mu_;
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
};

// One interceptor per call: counted from its creation to its destruction
// (when gRPC is done with the call, however it ended).
class ActiveCallsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ActiveCallsInterceptorFactory(ActiveCalls* calls) : calls_(calls) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  ActiveCalls* calls_;
};

}  // namespace ckptd::rpc
