// What each HTTP path answers, without sockets: the JSON API (the gRPC
// reads in protobuf's JSON mapping, through the shared queries), /healthz,
// /readyz, Prometheus /metrics and the status page. Event streams are
// served by the server: Route only says which run to stream. Thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "daemon/query/queries.h"

namespace ckptd::http {

struct Reply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::string stream_run;  // non-empty: serve this run's event stream instead
};

// The JSON error body every failure gets: {"error": {code, status, message}}.
Reply ErrorReply(const absl::Status& status);
// absl code -> HTTP status (404, 400, 409, 503, 500...).
int HttpStatus(absl::StatusCode code);

class Router {
 public:
  // `roots`: for the disk gauges of /metrics.
  // `read_token` (http.token_file): when set, every path but the page
  // itself, /healthz and /readyz needs it, as "Authorization: Bearer T" or,
  // for EventSource (which cannot send headers), a "token=T" query parameter.
  Router(scheduler::RunRegistry* registry, const query::Queries* queries,
         std::vector<std::string> roots, std::string read_token = "")
      : registry_(registry),
        queries_(queries),
        roots_(std::move(roots)),
        read_token_(std::move(read_token)) {}

  // `authorization`: the request's Authorization header ("" when absent).
  Reply Route(std::string_view method, std::string_view target,
              std::string_view authorization = "") const;

 private:
  Reply Readyz() const;
  Reply MetricsText() const;
  Reply RunPath(const std::vector<std::string>& s, const struct Target& t) const;
  bool Authorized(const struct Target& t, std::string_view authorization) const;

  scheduler::RunRegistry* registry_;
  const query::Queries* queries_;
  std::vector<std::string> roots_;
  std::string read_token_;
};

}  // namespace ckptd::http
