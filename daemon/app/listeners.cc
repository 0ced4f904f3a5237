// The daemon's sockets: roots, Unix socket paths and permissions, TLS.
#include "daemon/app/listeners.h"

#include <spdlog/spdlog.h>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/fd_passing.h"

namespace ckptd::app {

absl::StatusOr<std::vector<std::string>> PrepareRoots(env::Env* env, const config::Config& c) {
  std::vector<std::string> out;
  const std::string& source = c.sources.at("storage.roots");
  for (const std::string& root : c.roots) {
    absl::Status st = env->CreateDirs(root);
    if (!st.ok())
      return absl::InvalidArgumentError(StrCat(source, ": storage.roots: ", st.message()));
    auto real = env->RealPath(root);
    if (!real.ok())
      return absl::InvalidArgumentError(
          StrCat(source, ": storage.roots: ", real.status().message()));
    out.push_back(*real);
  }
  return out;
}

absl::StatusOr<PeerCredentials> LoadPeerCredentials(env::Env* env, const config::Config& c) {
  if (c.peers_insecure && c.peers_tls_cert.empty()) {
    spdlog::warn("peers: {} and the replicas sent from here travel in plaintext (peers.insecure)",
                 c.peers_listen);
    return PeerCredentials{grpc::InsecureServerCredentials(), grpc::InsecureChannelCredentials()};
  }
  auto read = [&](const char* key, const std::string& path) -> absl::StatusOr<std::string> {
    auto pem = env::ReadWholeFile(env, path);
    if (!pem.ok())
      return absl::Status(pem.status().code(), StrCat(key, ": ", pem.status().message()));
    return pem;
  };
  CKPTD_ASSIGN_OR_RETURN(std::string cert, read("peers.tls_cert", c.peers_tls_cert));
  CKPTD_ASSIGN_OR_RETURN(std::string key, read("peers.tls_key", c.peers_tls_key));
  CKPTD_ASSIGN_OR_RETURN(std::string ca, read("peers.tls_ca", c.peers_tls_ca));
  grpc::SslServerCredentialsOptions server;
  server.pem_key_cert_pairs.push_back({key, cert});
  server.pem_root_certs = ca;
  server.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  grpc::SslCredentialsOptions channel{
      .pem_root_certs = ca, .pem_private_key = key, .pem_cert_chain = cert};
  return PeerCredentials{grpc::SslServerCredentials(server), grpc::SslCredentials(channel)};
}

absl::StatusOr<std::string> PrepareMemoryRoot(env::Env* env, const config::Config& c) {
  if (c.memory_root.empty()) return std::string();
  const std::string& source = c.sources.at("memory.root");
  if (absl::Status st = env->CreateDirs(c.memory_root); !st.ok()) {
    return absl::InvalidArgumentError(StrCat(source, ": memory.root: ", st.message()));
  }
  auto real = env->RealPath(c.memory_root);
  if (!real.ok()) {
    return absl::InvalidArgumentError(StrCat(source, ": memory.root: ", real.status().message()));
  }
  return *real;
}

absl::Status PrepareListen(env::Env* env, const std::string& listen, int type,
                           std::string_view setting) {
  if (!listen.starts_with("unix:")) return absl::OkStatus();
  std::string path = listen.substr(5);
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    absl::Status st = env->CreateDirs(path.substr(0, slash));
    if (!st.ok()) return st;
  }
  auto st = env->Stat(path);
  if (st.ok() && !st->is_regular && !st->is_dir && !st->is_symlink) {
    if (env::UnixSocketAnswers(path, type)) {
      return absl::FailedPreconditionError(
          StrCat("another ckptd is serving ", path,
                 " (it accepts connections); stop it first, or give this one another ", setting));
    }
    return env->RemoveFile(path);
  }
  return absl::OkStatus();
}

absl::Status SetSocketAccess(env::Env* env, const config::Config& cfg, const std::string& path) {
  const int64_t gid = cfg.socket_group.empty() ? -1 : config::GroupId(cfg.socket_group);
  if (absl::Status st = env->SetMode(path, cfg.socket_mode, gid); !st.ok()) {
    return absl::Status(st.code(), StrCat("server.socket_mode/socket_group: ", st.message()));
  }
  spdlog::info("socket {}: mode {:04o}{}", path, cfg.socket_mode,
               cfg.socket_group.empty() ? "" : StrCat(", group ", cfg.socket_group));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    env::Env* env, const config::Config& cfg) {
  if (cfg.listen.starts_with("unix:")) return grpc::InsecureServerCredentials();
  if (cfg.tls_cert.empty()) {
    spdlog::warn(
        "server: {} serves plaintext TCP (server.insecure): anyone who can reach it can read and "
        "overwrite checkpoints; set server.tls_cert and server.tls_key",
        cfg.listen);
    return grpc::InsecureServerCredentials();
  }
  auto read = [&](const char* key, const std::string& path) -> absl::StatusOr<std::string> {
    auto pem = env::ReadWholeFile(env, path);
    if (!pem.ok())
      return absl::Status(pem.status().code(), StrCat(key, ": ", pem.status().message()));
    return pem;
  };
  grpc::SslServerCredentialsOptions ssl;
  CKPTD_ASSIGN_OR_RETURN(std::string cert, read("server.tls_cert", cfg.tls_cert));
  CKPTD_ASSIGN_OR_RETURN(std::string key, read("server.tls_key", cfg.tls_key));
  ssl.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
  if (!cfg.tls_client_ca.empty()) {
    CKPTD_ASSIGN_OR_RETURN(ssl.pem_root_certs, read("server.tls_client_ca", cfg.tls_client_ca));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  spdlog::info("server: TLS on {} ({}){}", cfg.listen, cfg.tls_cert,
               cfg.tls_client_ca.empty()
                   ? ""
                   : StrCat("; client certificates signed by ", cfg.tls_client_ca, " required"));
  return grpc::SslServerCredentials(ssl);
}

}  // namespace ckptd::app
