// ckptctl entry point; everything lives in commands.cc.
#include <grpc/support/log.h>

#include <cstdlib>

#include "client/cli/commands.h"

int main(int argc, char** argv) {
  // ckptctl says what went wrong itself, in one line; gRPC core's own log
  // lines (a TLS file it could not use, say) would come first and in its
  // words. GRPC_VERBOSITY or GRPC_TRACE set: they stay, for debugging.
  if (std::getenv("GRPC_VERBOSITY") == nullptr && std::getenv("GRPC_TRACE") == nullptr) {
    gpr_set_log_function([](gpr_log_func_args*) {});
  }
  return ckptd::cli::Main(argc, argv);
}
