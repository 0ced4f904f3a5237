// HTTP server: JSON API, SSE, health, metrics, status page.
#include "daemon/http/server.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <condition_variable>
#include <map>
#include <nlohmann/json.hpp>

#include "daemon/base/strings.h"
#include "daemon/http/status_page.h"
#include "daemon/metrics/metrics.h"
#include "daemon/rpc/convert.h"

namespace ckptd::http {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;

struct Reply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

std::string ToJson(const google::protobuf::Message& m) { return rpc::MessageToJson(m); }

int HttpStatus(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 200;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return 400;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return 409;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    default:
      return 500;
  }
}

Reply Error(grpc::StatusCode code, const std::string& message) {
  nlohmann::json body = {
      {"error",
       {{"code", HttpStatus(code)},
        {"status", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))},
        {"message", message}}}};
  return {HttpStatus(code), "application/json",
          body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

Reply FromCall(const grpc::Status& st, const google::protobuf::Message& m) {
  if (!st.ok()) return Error(st.error_code(), st.error_message());
  return {200, "application/json", ToJson(m)};
}

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int v = 0;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec == std::errc() && p == s.data() + i + 3) {
        out += static_cast<char>(v);
        i += 2;
        continue;
      }
    }
    out += s[i] == '+' ? ' ' : s[i];
  }
  return out;
}

struct Target {
  std::vector<std::string> segments;
  std::map<std::string, std::string> query;
};

Target ParseTarget(std::string_view t) {
  Target out;
  size_t q = t.find('?');
  std::string_view path = t.substr(0, q);
  for (const std::string& seg : Split(path, '/', true)) out.segments.push_back(PercentDecode(seg));
  if (q != std::string_view::npos) {
    for (const std::string& kv : Split(t.substr(q + 1), '&', true)) {
      size_t eq = kv.find('=');
      out.query[PercentDecode(kv.substr(0, eq))] =
          eq == std::string::npos ? "" : PercentDecode(kv.substr(eq + 1));
    }
  }
  return out;
}

// An unsigned query parameter, or a 400 naming it.
bool QueryU64(const Target& t, const std::string& name, uint64_t* out, Reply* error) {
  auto it = t.query.find(name);
  if (it == t.query.end() || it->second.empty()) return true;
  auto [p, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), *out);
  if (ec != std::errc() || p != it->second.data() + it->second.size()) {
    *error = Error(grpc::StatusCode::INVALID_ARGUMENT,
                   StrCat("query parameter '", name, "' must be a non-negative integer, got '",
                          it->second, "'"));
    return false;
  }
  return true;
}

}  // namespace

struct HttpServer::Impl {
  HttpOptions options;
  rpc::CheckpointdService* service;
  scheduler::RunRegistry* registry;
  boost::asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread accept_thread;
  std::atomic<bool> stopping{false};
  std::mutex mu;
  std::condition_variable cv;
  std::set<int> open_fds;  // connections, so Stop() can unblock them
  size_t active = 0;

  Reply Route(const bhttp::request<bhttp::string_body>& req, tcp::socket& socket, bool* streamed);
  Reply Readyz();
  Reply MetricsText();
  void StreamEvents(tcp::socket& socket, const std::string& run_id);
  void Serve(tcp::socket socket);
  void AcceptLoop();
};

Reply HttpServer::Impl::Readyz() {
  std::vector<std::string> reasons;
  for (const auto& run : registry->List()) {
    absl::MutexLock lock(&run->mu());
    if (!run->write_error.empty()) {
      reasons.push_back(
          StrCat("run ", run->id(), " has an unresolved write error: ", run->write_error));
    }
  }
  const policy::DiskGuard guard = registry->disk_guard();
  for (const std::string& root : options.roots) {
    auto space = registry->env()->Space(root);
    if (!space.ok()) {
      reasons.push_back(std::string(space.status().message()));
    } else if (policy::BytesToFree(guard, space->free_bytes, space->total_bytes, 0) > 0) {
      reasons.push_back(
          StrCat("root ", root, " is below the disk guard (", space->free_bytes, " bytes free)"));
    }
  }
  nlohmann::json body = {{"ready", reasons.empty()}, {"reasons", reasons}};
  return {reasons.empty() ? 200 : 503, "application/json",
          body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

Reply HttpServer::Impl::MetricsText() {
  std::string out = metrics::Metrics::Get().Render();
  out += "# HELP ckptd_disk_free_bytes Free bytes on each root's filesystem.\n";
  out += "# TYPE ckptd_disk_free_bytes gauge\n";
  for (const std::string& root : options.roots) {
    if (auto space = registry->env()->Space(root); space.ok()) {
      StrAppend(&out, "ckptd_disk_free_bytes{root=\"", metrics::EscapeLabel(root), "\"} ",
                space->free_bytes, "\n");
    }
  }
  std::string last_step, last_time, count;
  for (const auto& run : registry->List()) {
    absl::MutexLock lock(&run->mu());
    const std::string label = StrCat("{run=\"", metrics::EscapeLabel(run->id()), "\"} ");
    StrAppend(&count, "ckptd_checkpoints", label, run->dir()->catalog().size(), "\n");
    if (auto step = run->dir()->latest_step()) {
      StrAppend(&last_step, "ckptd_last_committed_step", label, *step, "\n");
      StrAppend(&last_time, "ckptd_last_commit_timestamp_seconds", label,
                fmt::format("{:.3f}", run->dir()->Find(*step)->time_s), "\n");
    }
  }
  out +=
      "# HELP ckptd_checkpoints Committed checkpoints per run.\n# TYPE ckptd_checkpoints gauge\n" +
      count;
  out += "# HELP ckptd_last_committed_step Highest committed step per run.\n";
  out += "# TYPE ckptd_last_committed_step gauge\n" + last_step;
  out += "# HELP ckptd_last_commit_timestamp_seconds When the highest step was saved.\n";
  out += "# TYPE ckptd_last_commit_timestamp_seconds gauge\n" + last_time;
  out += "# HELP ckptd_build_info The running daemon's version.\n# TYPE ckptd_build_info gauge\n";
  StrAppend(&out, "ckptd_build_info{version=\"", registry->facts().version, "\"} 1\n");
  return {200, "text/plain; version=0.0.4; charset=utf-8", out};
}

void HttpServer::Impl::StreamEvents(tcp::socket& socket, const std::string& run_id) {
  auto run = registry->Get(run_id);
  boost::system::error_code ec;
  if (!run.ok()) {
    Reply r = Error(grpc::StatusCode::NOT_FOUND, std::string(run.status().message()));
    bhttp::response<bhttp::string_body> res{bhttp::status::not_found, 11};
    res.set(bhttp::field::content_type, r.content_type);
    res.body() = r.body;
    res.prepare_payload();
    bhttp::write(socket, res, ec);
    return;
  }
  auto sub = (*run)->Subscribe();
  const std::string head =
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
      "Connection: close\r\n\r\n: watching run " +
      run_id + "\n\n";
  boost::asio::write(socket, boost::asio::buffer(head), ec);
  auto last_write = std::chrono::steady_clock::now();
  while (!ec && !stopping && !sub->closed()) {
    scheduler::Event e;
    std::string chunk;
    if (sub->Next(&e, std::chrono::milliseconds(250))) {
      v1::RunEvent out;
      out.set_run_id(e.run_id);
      out.set_step(e.step);
      out.set_time_utc(e.time_utc);
      const char* name = "committed";
      if (e.type == scheduler::Event::Type::kCommitted) {
        out.set_type(v1::RunEvent::TYPE_COMMITTED);
        rpc::ToProto(*e.record, e.is_latest, out.mutable_checkpoint());
      } else {
        name = e.type == scheduler::Event::Type::kFailed ? "failed" : "deleted";
        out.set_type(e.type == scheduler::Event::Type::kFailed ? v1::RunEvent::TYPE_FAILED
                                                               : v1::RunEvent::TYPE_DELETED);
        out.set_error(e.error);
      }
      chunk = fmt::format("event: {}\ndata: {}\n\n", name, ToJson(out));
    } else if (std::chrono::steady_clock::now() - last_write > std::chrono::seconds(15)) {
      chunk = ": keep-alive\n\n";  // also notices a client that went away
    }
    if (!chunk.empty()) {
      boost::asio::write(socket, boost::asio::buffer(chunk), ec);
      last_write = std::chrono::steady_clock::now();
    }
  }
}

Reply HttpServer::Impl::Route(const bhttp::request<bhttp::string_body>& req, tcp::socket& socket,
                              bool* streamed) {
  if (req.method() != bhttp::verb::get && req.method() != bhttp::verb::head) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT,
                 "only GET is served here; writes go through gRPC");
  }
  const Target t = ParseTarget(std::string_view(req.target().data(), req.target().size()));
  const auto& s = t.segments;
  grpc::ServerContext ctx;
  if (s.empty()) return {200, "text/html; charset=utf-8", std::string(kStatusPage)};
  if (s.size() == 1 && s[0] == "healthz") return {200, "text/plain", "ok\n"};
  if (s.size() == 1 && s[0] == "readyz") return Readyz();
  if (s.size() == 1 && s[0] == "metrics") return MetricsText();
  if (s.size() < 2 || s[0] != "v1" || s[1] != "runs") {
    return Error(grpc::StatusCode::NOT_FOUND,
                 StrCat("no such path ", std::string(req.target()),
                        "; try /v1/runs, /healthz, /readyz, /metrics or /"));
  }
  if (s.size() == 2) {
    v1::ListRunsResponse resp;
    return FromCall(service->ListRuns(&ctx, nullptr, &resp), resp);
  }
  const std::string& run = s[2];
  if (s.size() == 3) {
    v1::GetRunRequest r;
    r.set_run_id(run);
    v1::RunInfo resp;
    return FromCall(service->GetRun(&ctx, &r, &resp), resp);
  }
  if (s.size() == 4 && s[3] == "events") {
    StreamEvents(socket, run);
    *streamed = true;
    return {};
  }
  if (s[3] == "checkpoints" && s.size() == 4) {
    v1::ListCheckpointsRequest r;
    r.set_run_id(run);
    uint64_t since = 0, page_size = 0;
    Reply bad;
    if (!QueryU64(t, "since_step", &since, &bad) || !QueryU64(t, "page_size", &page_size, &bad)) {
      return bad;
    }
    if (page_size > 1000) {
      return Error(
          grpc::StatusCode::INVALID_ARGUMENT,
          StrCat("query parameter 'page_size' is ", page_size, ", over the maximum of 1000"));
    }
    r.set_since_step(since);
    r.set_page_size(static_cast<uint32_t>(page_size));
    if (auto it = t.query.find("page_token"); it != t.query.end()) r.set_page_token(it->second);
    v1::ListCheckpointsResponse resp;
    grpc::Status st = service->ListCheckpoints(&ctx, &r, &resp);
    if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      return Error(st.error_code(), StrCat("query parameter ", st.error_message()));
    }
    return FromCall(st, resp);
  }
  if (s[3] == "checkpoints" && s.size() == 5) {
    uint64_t step = 0;
    auto [p, ec] = std::from_chars(s[4].data(), s[4].data() + s[4].size(), step);
    if (ec != std::errc() || p != s[4].data() + s[4].size()) {
      return Error(
          grpc::StatusCode::INVALID_ARGUMENT,
          StrCat("path parameter 'step' must be a non-negative integer, got '", s[4], "'"));
    }
    v1::GetCheckpointRequest r;
    r.set_run_id(run);
    r.set_step(step);
    v1::CheckpointDetail resp;
    return FromCall(service->GetCheckpoint(&ctx, &r, &resp), resp);
  }
  return Error(grpc::StatusCode::NOT_FOUND, StrCat("no such path ", std::string(req.target())));
}

void HttpServer::Impl::Serve(tcp::socket socket) {
  beast::flat_buffer buffer;
  boost::system::error_code ec;
  while (!stopping) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.body_limit(64 * 1024);
    parser.header_limit(16 * 1024);
    bhttp::read(socket, buffer, parser, ec);
    if (ec) break;
    const auto& req = parser.get();
    bool streamed = false;
    Reply r = Route(req, socket, &streamed);
    if (streamed) break;
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(r.status), req.version()};
    res.set(bhttp::field::server, "ckptd");
    res.set(bhttp::field::content_type, r.content_type);
    res.set(bhttp::field::cache_control, "no-store");
    res.keep_alive(req.keep_alive());
    res.body() = req.method() == bhttp::verb::head ? "" : std::move(r.body);
    res.prepare_payload();
    bhttp::write(socket, res, ec);
    if (ec || !res.keep_alive()) break;
  }
  socket.shutdown(tcp::socket::shutdown_both, ec);
}

void HttpServer::Impl::AcceptLoop() {
  while (!stopping) {
    boost::system::error_code ec;
    tcp::socket socket(io);
    acceptor.accept(socket, ec);
    if (ec) {
      if (stopping) break;
      continue;
    }
    std::unique_lock lock(mu);
    if (active >= options.max_connections) {
      lock.unlock();
      const std::string busy =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      boost::asio::write(socket, boost::asio::buffer(busy), ec);
      continue;
    }
    ++active;
    int fd = socket.native_handle();
    open_fds.insert(fd);
    lock.unlock();
    std::thread([this, fd, s = std::move(socket)]() mutable {
      Serve(std::move(s));
      std::lock_guard done(mu);
      open_fds.erase(fd);
      --active;
      cv.notify_all();
    }).detach();
  }
}

HttpServer::HttpServer(HttpOptions options, rpc::CheckpointdService* service,
                       scheduler::RunRegistry* registry)
    : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->service = service;
  impl_->registry = registry;
}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start() {
  const std::string& listen = impl_->options.listen;
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(StrCat("http.listen '", listen, "' is not HOST:PORT"));
  }
  boost::system::error_code ec;
  auto address = boost::asio::ip::make_address(listen.substr(0, colon), ec);
  uint16_t port = 0;
  auto [p, pec] = std::from_chars(listen.data() + colon + 1, listen.data() + listen.size(), port);
  if (ec || pec != std::errc()) {
    return absl::InvalidArgumentError(StrCat("http.listen '", listen, "' is not HOST:PORT"));
  }
  tcp::endpoint endpoint(address, port);
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(boost::asio::socket_base::max_listen_connections, ec);
  if (ec)
    return absl::UnavailableError(StrCat("http: cannot listen on ", listen, ": ", ec.message()));
  port_ = impl_->acceptor.local_endpoint().port();
  impl_->accept_thread = std::thread([this] { impl_->AcceptLoop(); });
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  boost::system::error_code ec;
  if (impl_->acceptor.is_open()) {
    ::shutdown(impl_->acceptor.native_handle(), SHUT_RDWR);
    impl_->acceptor.close(ec);
  }
  if (impl_->accept_thread.joinable()) impl_->accept_thread.join();
  std::unique_lock lock(impl_->mu);
  for (int fd : impl_->open_fds) ::shutdown(fd, SHUT_RDWR);  // unblock reads and event streams
  impl_->cv.wait(lock, [&] { return impl_->active == 0; });
}

}  // namespace ckptd::http
