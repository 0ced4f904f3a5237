// INTERNAL "" from gRPC's own decoding -> INVALID_ARGUMENT with a message.
#include "daemon/rpc/decode_errors.h"

#include <string>

#include "daemon/base/strings.h"

namespace ckptd::rpc {
namespace {

class DecodeErrorInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit DecodeErrorInterceptor(const char* method) : method_(method ? method : "?") {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status st = methods->GetSendStatus();
      if (st.error_code() == grpc::StatusCode::INTERNAL && st.error_message().empty()) {
        methods->ModifySendStatus(grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            StrCat("the request to ", method_,
                   " could not be decoded: not a valid protobuf message of the method's request "
                   "type, or a string field that is not valid UTF-8 (send names and text as "
                   "UTF-8; use stubs generated from ckptd/v1/ckptd.proto)")));
      }
    }
    methods->Proceed();
  }

 private:
  std::string method_;
};

}  // namespace

grpc::experimental::Interceptor* DecodeErrorInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new DecodeErrorInterceptor(info->method());
}

}  // namespace ckptd::rpc
