// HTTP server: JSON API, SSE, health, metrics, status page.
#include "daemon/http/server.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <chrono>
#include <map>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "daemon/base/strings.h"
#include "daemon/http/router.h"
#include "daemon/http/sse.h"

namespace ckptd::http {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;
namespace ssl = boost::asio::ssl;

constexpr uint64_t kMaxHeaderBytes = 16 * 1024;  // request line included: 431 beyond
constexpr uint64_t kMaxBodyBytes = 64 * 1024;    // 413 beyond

}  // namespace

struct HttpServer::Impl {
  HttpOptions options;
  scheduler::RunRegistry* registry;
  std::unique_ptr<Router> router;
  boost::asio::io_context io;
  tcp::acceptor acceptor{io};
  std::unique_ptr<ssl::context> tls;  // null: plain HTTP
  std::thread accept_thread;
  std::atomic<bool> stopping{false};
  absl::Mutex mu;
  absl::CondVar cv;
  std::set<int> open_fds ABSL_GUARDED_BY(mu);  // connections, so Stop() can unblock them
  size_t active ABSL_GUARDED_BY(mu) = 0;
  std::map<std::string, size_t> per_peer ABSL_GUARDED_BY(mu);  // open connections by address

  absl::Status LoadTls();
  // `Stream`: the TCP socket, or a TLS stream over it.
  template <typename Stream>
  void StreamEvents(Stream& socket, const std::string& run_id, std::string_view last_event_id);
  template <typename Stream>
  void Serve(Stream& socket);
  void ServeConnection(tcp::socket socket);
  void AcceptLoop();
};

absl::Status HttpServer::Impl::LoadTls() {
  if (options.tls_cert.empty() && options.tls_key.empty()) return absl::OkStatus();
  if (options.tls_cert.empty() || options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "http.tls_cert and http.tls_key go together: set both for HTTPS, or neither");
  }
  tls = std::make_unique<ssl::context>(ssl::context::tls_server);
  tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                   ssl::context::single_dh_use);
  boost::system::error_code ec;
  tls->use_certificate_chain_file(options.tls_cert, ec);
  if (ec) {
    return absl::InvalidArgumentError(StrCat("http.tls_cert: cannot use ", options.tls_cert, ": ",
                                             ec.message(), " (a PEM certificate chain)"));
  }
  tls->use_private_key_file(options.tls_key, ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(StrCat("http.tls_key: cannot use ", options.tls_key, ": ",
                                             ec.message(),
                                             " (a PEM private key matching http.tls_cert)"));
  }
  return absl::OkStatus();
}

template <typename Stream>
void HttpServer::Impl::StreamEvents(Stream& socket, const std::string& run_id,
                                    std::string_view last_event_id) {
  auto run = registry->Get(run_id);
  boost::system::error_code ec;
  auto last_write = std::chrono::steady_clock::now();
  bool waited = false;
  if (!run.ok() && absl::IsNotFound(run.status())) {
    waited = true;
    // Not open yet: wait for it (a dashboard opened before the trainer),
    // with keep-alives that also notice a client that went away.
    boost::asio::write(socket, boost::asio::buffer(SseHead(run_id, /*waiting=*/true)), ec);
    while (!ec && !stopping && !run.ok() && absl::IsNotFound(run.status())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      if (std::chrono::steady_clock::now() - last_write > std::chrono::seconds(15)) {
        boost::asio::write(socket, boost::asio::buffer(kSseKeepAlive), ec);
        last_write = std::chrono::steady_clock::now();
      }
      run = registry->Get(run_id);
    }
    if (ec || stopping || !run.ok()) return;
    boost::asio::write(socket, boost::asio::buffer(StrCat(": run ", run_id, " opened\n\n")), ec);
  } else if (!run.ok()) {
    Reply r = ErrorReply(run.status());
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(r.status), 11};
    res.set(bhttp::field::content_type, r.content_type);
    res.body() = r.body;
    res.prepare_payload();
    bhttp::write(socket, res, ec);
    return;
  }
  const std::string& epoch = (*run)->event_epoch();
  // A reconnecting client (Last-Event-ID) gets what it missed, or is told
  // that it cannot.
  std::optional<uint64_t> after;
  bool gap = false;
  if (!last_event_id.empty()) {
    after = ParseLastEventId(last_event_id, epoch);
    gap = !after.has_value();
  } else if (waited) {
    after = 0;  // everything since it opened: it may have committed before this subscribed
  }
  auto sub = (*run)->Subscribe(nullptr, after, after ? &gap : nullptr);
  // The head says "watching" only once subscribed: a client that saves as
  // soon as it reads it must get that save's events.
  if (!waited && !ec) boost::asio::write(socket, boost::asio::buffer(SseHead(run_id)), ec);
  if (gap && !ec) boost::asio::write(socket, boost::asio::buffer(SseGap(last_event_id)), ec);
  while (!ec && !stopping && !sub->closed()) {
    scheduler::Event e;
    std::string chunk;
    if (sub->Next(&e, std::chrono::milliseconds(250))) {
      chunk = SseEvent(e, epoch);
    } else if (std::chrono::steady_clock::now() - last_write > std::chrono::seconds(15)) {
      chunk = kSseKeepAlive;  // also notices a client that went away
    }
    if (!chunk.empty()) {
      boost::asio::write(socket, boost::asio::buffer(chunk), ec);
      last_write = std::chrono::steady_clock::now();
    }
  }
}

namespace {

// Whether `socket` has bytes to read within `seconds` (asio's blocking reads
// ignore SO_RCVTIMEO: they poll again on EAGAIN).
bool Readable(tcp::socket& socket, double seconds) {
  pollfd p{.fd = socket.native_handle(), .events = POLLIN, .revents = 0};
  return ::poll(&p, 1, static_cast<int>(std::max(seconds, 0.001) * 1000)) != 0;
}
// Over TLS, asio's engine buffers records it has read from the socket where
// neither poll nor SSL_pending sees them: reads block as they come, and
// max_connections_per_peer bounds what one client holds.
bool Readable(ssl::stream<tcp::socket&>&, double) { return true; }

template <typename Stream>
void WriteStatus(Stream& socket, int version, bhttp::status status, std::string body) {
  bhttp::response<bhttp::string_body> res{status, version};
  res.set(bhttp::field::server, "ckptd");
  res.set(bhttp::field::content_type, "text/plain");
  res.keep_alive(false);
  res.body() = std::move(body);
  res.prepare_payload();
  boost::system::error_code ec;
  bhttp::write(socket, res, ec);
}

}  // namespace

template <typename Stream>
void HttpServer::Impl::Serve(Stream& socket) {
  using Clock = std::chrono::steady_clock;
  beast::flat_buffer buffer;
  boost::system::error_code ec;
  while (!stopping) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.body_limit(kMaxBodyBytes);
    parser.header_limit(kMaxHeaderBytes);
    parser.eager(true);
    // Idle until the request's first byte (a kept-alive connection may
    // wait that long), then the header and the body within their deadline.
    std::optional<Clock::time_point> deadline;
    const auto idle_until =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(options.idle_timeout_seconds));
    bool timed_out = false;
    bool pipelined = buffer.size() > 0;  // the previous read brought this request's bytes too
    while (!parser.is_done()) {
      if (!deadline && buffer.size() > 0) {
        deadline =
            Clock::now() + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(2 * options.header_timeout_seconds));
      }
      const auto until = deadline ? *deadline : idle_until;
      const double left = std::chrono::duration<double>(until - Clock::now()).count();
      if (left <= 0) {
        timed_out = true;
        break;
      }
      if (!pipelined) {
        if (!Readable(socket, left)) continue;  // the deadline decides
        // One read of what is there (Beast's read_some would block until a
        // whole header arrived, whatever the deadline).
        const size_t n = socket.read_some(buffer.prepare(4096), ec);
        if (ec) break;
        buffer.commit(n);
      }
      pipelined = false;
      const size_t used = parser.put(buffer.data(), ec);
      buffer.consume(used);
      if (ec == bhttp::error::need_more) {
        ec = {};
        if (used == 0 && buffer.size() > kMaxHeaderBytes + kMaxBodyBytes) {
          ec = bhttp::error::header_limit;
          break;
        }
        continue;
      }
      if (ec) break;
      if (used > 0 && buffer.size() > 0 && !parser.is_done()) pipelined = true;  // parse the rest
      if (!deadline && !parser.is_done()) {
        deadline =
            Clock::now() + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(2 * options.header_timeout_seconds));
      }
    }
    if (timed_out) {
      // Idle between requests: close quietly; mid-request: say why.
      if (deadline) {
        WriteStatus(socket, 11, bhttp::status::request_timeout,
                    StrCat("request not complete within ", options.header_timeout_seconds,
                           "s (http header timeout)\n"));
      }
      break;
    }
    if (ec == bhttp::error::header_limit) {
      WriteStatus(socket, 11, bhttp::status::request_header_fields_too_large,
                  StrCat("request line and headers over ", kMaxHeaderBytes, " bytes\n"));
      break;
    }
    if (ec == bhttp::error::body_limit) {
      WriteStatus(socket, 11, bhttp::status::payload_too_large,
                  StrCat("request body over ", kMaxBodyBytes, " bytes (only GET is served)\n"));
      break;
    }
    if (ec) break;
    const auto& req = parser.get();
    const auto auth = req.find(bhttp::field::authorization);
    Reply r = router->Route(
        std::string_view(req.method_string().data(), req.method_string().size()),
        std::string_view(req.target().data(), req.target().size()),
        auth == req.end() ? std::string_view()
                          : std::string_view(auth->value().data(), auth->value().size()));
    if (!r.stream_run.empty()) {
      const auto last = req.find("Last-Event-ID");
      StreamEvents(socket, r.stream_run,
                   last == req.end()
                       ? std::string_view()
                       : std::string_view(last->value().data(), last->value().size()));
      break;
    }
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(r.status), req.version()};
    res.set(bhttp::field::server, "ckptd");
    res.set(bhttp::field::content_type, r.content_type);
    res.set(bhttp::field::cache_control, "no-store");
    if (r.status == 401) res.set(bhttp::field::www_authenticate, "Bearer realm=\"ckptd\"");
    res.keep_alive(req.keep_alive());
    res.body() = req.method() == bhttp::verb::head ? "" : std::move(r.body);
    res.prepare_payload();
    bhttp::write(socket, res, ec);
    if (ec || !res.keep_alive()) break;
  }
}

void HttpServer::Impl::ServeConnection(tcp::socket socket) {
  boost::system::error_code ec;
  if (tls == nullptr) {
    Serve(socket);
  } else {
    ssl::stream<tcp::socket&> stream(socket, *tls);
    stream.handshake(ssl::stream_base::server, ec);
    if (!ec) {
      Serve(stream);
      // close_notify, without waiting for the peer's (browsers often never send it).
      ::SSL_shutdown(stream.native_handle());
    } else if (!stopping) {
      spdlog::debug("http: TLS handshake with {} failed: {}",
                    socket.remote_endpoint(ec).address().to_string(), ec.message());
    }
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
    const int fd = socket.native_handle();
    const std::string peer = socket.remote_endpoint(ec).address().to_string();
    const size_t per_peer_cap = options.max_connections_per_peer != 0
                                    ? options.max_connections_per_peer
                                    : std::max<size_t>(1, options.max_connections / 4);
    std::string refused;
    {
      absl::MutexLock lock(&mu);
      if (active >= options.max_connections) {
        refused = StrCat("all ", options.max_connections, " connections are in use\n");
      } else if (per_peer[peer] >= per_peer_cap) {
        refused = StrCat(peer, " already holds ", per_peer_cap,
                         " connections (http.max_connections_per_peer)\n");
      } else {
        ++active;
        ++per_peer[peer];
        open_fds.insert(fd);
      }
    }
    if (!refused.empty()) {
      // Probes still get their answer: a liveness check must not restart a
      // healthy daemon because dashboards (or one client) hold every slot.
      // Their request line is read here, briefly (plain HTTP only).
      int status = 503;
      std::string body = refused;
      char line[64];
      pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
      if (tls == nullptr && ::poll(&p, 1, 100) == 1) {
        const ssize_t n = ::recv(fd, line, sizeof(line), MSG_PEEK | MSG_DONTWAIT);
        const std::string_view got(line, n > 0 ? static_cast<size_t>(n) : 0);
        for (std::string_view probe : {"/healthz", "/readyz"}) {
          if (got.starts_with(StrCat("GET ", probe, " "))) {
            Reply r = router->Route("GET", probe, "");
            status = r.status;
            body = r.body;
          }
        }
      }
      // Read what arrived, so closing does not reset the connection before
      // the peer has our answer.
      char drain[8192];
      (void)::recv(fd, drain, sizeof(drain), MSG_DONTWAIT);
      const std::string reply =
          StrCat("HTTP/1.1 ", status, status == 503 ? " Service Unavailable" : " OK",
                 "\r\nContent-Type: text/plain\r\nContent-Length: ", body.size(),
                 "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n", body);
      boost::asio::write(socket, boost::asio::buffer(reply), ec);
      socket.shutdown(tcp::socket::shutdown_send, ec);
      continue;
    }
    std::thread([this, fd, peer, s = std::move(socket)]() mutable {
      ServeConnection(std::move(s));
      absl::MutexLock done(&mu);
      open_fds.erase(fd);
      --active;
      if (--per_peer[peer] == 0) per_peer.erase(peer);
      cv.SignalAll();
    }).detach();
  }
}

HttpServer::HttpServer(HttpOptions options, const query::Queries* queries,
                       scheduler::RunRegistry* registry)
    : impl_(std::make_unique<Impl>()) {
  impl_->router = std::make_unique<Router>(registry, queries, options.roots, options.token);
  impl_->options = std::move(options);
  impl_->registry = registry;
}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start() {
  if (absl::Status st = impl_->LoadTls(); !st.ok()) return st;
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
  absl::MutexLock lock(&impl_->mu);
  for (int fd : impl_->open_fds) ::shutdown(fd, SHUT_RDWR);  // unblock reads and event streams
  while (impl_->active != 0) impl_->cv.Wait(&impl_->mu);
}

}  // namespace ckptd::http
