// What the daemon prepares before it listens: its roots, its Unix sockets'
// paths and permissions, and the gRPC listener's TLS credentials.
#pragma once

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/config/config.h"
#include "daemon/env/env.h"

namespace ckptd::app {

// Creates and resolves each root; errors name the config value's source.
absl::StatusOr<std::vector<std::string>> PrepareRoots(env::Env* env, const config::Config& c);
// [peers]: the listener's credentials and the channels' (plaintext with
// peers.insecure, else mutual TLS with peers.tls_*).
struct PeerCredentials {
  std::shared_ptr<grpc::ServerCredentials> server;
  std::shared_ptr<grpc::ChannelCredentials> channel;
};
absl::StatusOr<PeerCredentials> LoadPeerCredentials(env::Env* env, const config::Config& c);

// Where replicas held for peers live under the memory tier's root (a name
// no run id can take).
inline constexpr std::string_view kReplicaDir = "replicas@peers";

// The memory tier's root, created and resolved; "" when it is off.
absl::StatusOr<std::string> PrepareMemoryRoot(env::Env* env, const config::Config& c);

// "unix:PATH": makes PATH's directory and removes a socket left by a daemon
// that died; one a live daemon serves is never touched (FAILED_PRECONDITION
// naming `setting`). Anything else: nothing to do.
absl::Status PrepareListen(env::Env* env, const std::string& listen, int type,
                           std::string_view setting);

// server.socket_mode and server.socket_group on a bound socket (after bind,
// so that the service's UMask does not decide who may connect).
absl::Status SetSocketAccess(env::Env* env, const config::Config& cfg, const std::string& path);

// TLS for a HOST:PORT listen (server.tls_*), else plaintext (Unix socket,
// or server.insecure, with a warning).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    env::Env* env, const config::Config& cfg);

}  // namespace ckptd::app
