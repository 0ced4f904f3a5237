// The HTTP surface's sockets (Boost.Beast): one thread per connection, at
// most max_connections at once (dashboards, not trainers, use it); what each
// path answers is router.h's, event streams are framed by sse.h. With a
// certificate it serves HTTPS only (TLS 1.2 or later, OpenSSL through
// Boost.Asio). Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "daemon/query/queries.h"
#include "daemon/scheduler/run_registry.h"

namespace ckptd::http {

struct HttpOptions {
  std::string listen;  // "HOST:PORT"; port 0 picks a free one
  size_t max_connections = 64;
  // One peer address holds at most this many of them (0 = max_connections
  // / 4), so a single client cannot take the slots probes need.
  size_t max_connections_per_peer = 0;
  // A request must arrive within twice header_timeout of its first byte
  // (header and body), else 408 and the connection closes; a kept-alive
  // connection idle for idle_timeout closes.
  double header_timeout_seconds = 10;
  double idle_timeout_seconds = 30;
  std::vector<std::string> roots;  // for disk gauges and /readyz
  std::string token;               // the read token (see Router); "" = none
  // PEM files: with both, the listener speaks TLS (HTTPS) and nothing else.
  std::string tls_cert;  // certificate chain
  std::string tls_key;
};

class HttpServer {
 public:
  HttpServer(HttpOptions options, const query::Queries* queries, scheduler::RunRegistry* registry);
  ~HttpServer();

  absl::Status Start();  // binds and starts accepting
  void Stop();           // stops accepting, ends event streams, joins
  uint16_t port() const { return port_; }

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
};

}  // namespace ckptd::http
