// Counting the server's running calls (see active_calls.h).
#include "daemon/rpc/active_calls.h"

namespace ckptd::rpc {
namespace {

class CountedCall final : public grpc::experimental::Interceptor {
 public:
  explicit CountedCall(ActiveCalls* calls) : calls_(calls) { calls_->Begin(); }
  ~CountedCall() override { calls_->End(); }
  CountedCall(const CountedCall&) = delete;
  CountedCall& operator=(const CountedCall&) = delete;

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    methods->Proceed();
  }

 private:
  ActiveCalls* calls_;
};

}  // namespace

void ActiveCalls::Begin() {
  absl::MutexLock lock(&mu_);
  ++running_;
}

void ActiveCalls::End() {
  absl::MutexLock lock(&mu_);
  --running_;
}

bool ActiveCalls::WaitUntilNone(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  const auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&none), deadline);
}

int64_t ActiveCalls::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

grpc::experimental::Interceptor* ActiveCallsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  (void)info;
  return new CountedCall(calls_);
}

}  // namespace ckptd::rpc
