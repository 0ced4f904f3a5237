// A request gRPC could not decode (not protobuf, truncated, or a string
// field that is not UTF-8) is answered by gRPC itself with INTERNAL and an
// empty message, before any handler runs. This interceptor turns exactly
// that answer into INVALID_ARGUMENT naming the method and what to check;
// the handlers never answer INTERNAL without a message themselves.
#pragma once

#include <grpcpp/support/server_interceptor.h>

namespace ckptd::rpc {

class DecodeErrorInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace ckptd::rpc
