// SCM_RIGHTS arena registration over a SOCK_SEQPACKET Unix socket.
#include "daemon/ingest/arena_server.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "daemon/base/strings.h"
#include "daemon/env/fd_passing.h"
#include "daemon/env/posix_error.h"

namespace ckptd::ingest {
namespace {

constexpr size_t kMaxMessage = kMaxArenaMessage;

void Reply(int fd, const std::string& text) {
  // MSG_DONTWAIT: a peer that never reads cannot block the loop; its
  // registration still stands and it learns nothing, which is its problem.
  (void)::send(fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

std::string ErrorReply(const absl::Status& st) {
  return StrCat("ERR ", absl::StatusCodeToString(st.code()), " ", st.message());
}

}  // namespace

ArenaServer::~ArenaServer() { Stop(); }

absl::Status ArenaServer::Start(env::Env* env) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(StrCat("shm.socket: '", path_,
                                             "' is longer than a Unix socket path may be (",
                                             sizeof addr.sun_path - 1, " bytes)"));
  }
  if (auto st = env->Stat(path_); st.ok() && !st->is_regular && !st->is_dir && !st->is_symlink) {
    if (env::UnixSocketAnswers(path_, SOCK_SEQPACKET)) {
      return absl::FailedPreconditionError(
          StrCat("another ckptd is serving the arena socket ", path_, "; stop it first"));
    }
    (void)env->RemoveFile(path_);  // a socket left by a previous run
  }
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  listen_fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) return env::SystemError("socket (arena socket)", errno);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 64) != 0) {
    absl::Status st = env::SystemError(StrCat("bind/listen ", path_), errno);
    ::close(listen_fd_);
    listen_fd_ = -1;
    return st;
  }
  if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) return env::SystemError("pipe2", errno);
  spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void ArenaServer::Stop() {
  if (!thread_.joinable()) return;
  char b = 1;
  (void)::write(wake_[1], &b, 1);
  thread_.join();
  for (auto& [fd, c] : connections_) {
    registry_->DropConnection(c.peer.connection);
    ::close(fd);
  }
  connections_.clear();
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
  if (spare_fd_ >= 0) ::close(spare_fd_);
  spare_fd_ = -1;
}

void ArenaServer::Loop() {
  std::vector<pollfd> fds;
  while (true) {
    fds.clear();
    fds.push_back({wake_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const auto& [fd, c] : connections_) fds.push_back({fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("arena socket: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[0].revents != 0) return;
    if (fds[1].revents & POLLIN) Accept();
    for (size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      auto it = connections_.find(fds[i].fd);
      if (it == connections_.end() || Serve(it->second)) continue;
      registry_->DropConnection(it->second.peer.connection);
      spdlog::debug("arena socket: pid={} disconnected; its arenas are released",
                    it->second.peer.pid);
      ::close(it->first);
      connections_.erase(it);
    }
  }
}

void ArenaServer::Accept() {
  int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
    // Out of descriptors: turn the waiting peer away (it sees the connection
    // close) rather than leave it pending, which would make poll spin.
    spdlog::warn("arena socket: out of file descriptors ({}); a connection was refused",
                 std::strerror(errno));
    if (spare_fd_ >= 0) {
      ::close(spare_fd_);
      int peer = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (peer >= 0) ::close(peer);
      spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return;
  }
  if (fd < 0) return;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    ::close(fd);
    return;
  }
  const bool allowed =
      cred.uid == ::geteuid() || cred.uid == 0 ||
      std::find(allowed_uids_.begin(), allowed_uids_.end(), cred.uid) != allowed_uids_.end();
  absl::Status refused;
  if (!allowed) {
    spdlog::warn(
        "arena socket: refused pid={} uid={} (not the daemon's uid {}, root, or in "
        "shm.allowed_uids)",
        cred.pid, cred.uid, ::geteuid());
    refused = absl::PermissionDeniedError(
        StrCat("uid ", cred.uid,
               " may not register arenas: add it to shm.allowed_uids in the daemon's config, run "
               "the trainer as uid ",
               ::geteuid(), ", or use the stream path"));
  }
  if (connections_.size() >= max_connections_) {
    Reply(fd, ErrorReply(absl::ResourceExhaustedError(
                  StrCat("the arena socket already has ", max_connections_,
                         " connections (the cap follows the daemon's open-file limit); close "
                         "idle ones or raise LimitNOFILE"))));
    ::close(fd);
    return;
  }
  // A refused peer is answered when its first message arrives (closing now
  // would reset the connection before it could read why).
  connections_[fd] = Connection{fd, Peer{cred.pid, cred.uid, next_connection_++}, refused};
}

bool ArenaServer::Serve(Connection& c) {
  char buf[kMaxMessage];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(c.fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
  if (n <= 0) return false;  // EOF: the trainer closed the socket or died
  std::vector<int> received;
  for (cmsghdr* h = CMSG_FIRSTHDR(&msg); h != nullptr; h = CMSG_NXTHDR(&msg, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
      received.push_back(fd);
    }
  }
  std::string_view text(buf, static_cast<size_t>(n));
  auto refuse = [&](const absl::Status& st) {
    for (int fd : received) ::close(fd);
    spdlog::warn("arena socket: refused a registration from pid={}: {}", c.peer.pid,
                 ToStd(st.message()));
    Reply(c.fd, ErrorReply(st));
    return true;
  };
  if (!c.refused.ok()) {
    for (int fd : received) ::close(fd);
    Reply(c.fd, ErrorReply(c.refused));
    return false;
  }
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    return refuse(absl::InvalidArgumentError(
        StrCat("message too long (at most ", kMaxMessage, " bytes and one fd)")));
  }
  auto request = ParseArenaRequest(text, received.size());
  if (!request.ok()) return refuse(request.status());
  if (request->kind == ArenaRequest::Kind::kAttach) return ServeAttach(c, *request, refuse);
  if (request->kind == ArenaRequest::Kind::kHot) return ServeHot(c, *request);
  auto arena = registry_->Register(request->token, received[0], c.peer);
  if (!arena.ok()) {
    received.clear();  // Register took the fd
    return refuse(arena.status());
  }
  spdlog::info("arena registered run={} arena={} bytes={} pid={} uid={}", (*arena)->run_id,
               (*arena)->id, (*arena)->memory->size(), c.peer.pid, c.peer.uid);
  Reply(c.fd, StrCat("OK ", (*arena)->id, " ", (*arena)->memory->size()));
  return true;
}

template <typename Refuse>
bool ArenaServer::ServeAttach(Connection& c, const ArenaRequest& r, const Refuse& refuse) {
  auto attached = registry_->Attach(r.token, c.peer, r.probe, r.probe_len);
  if (!attached.ok()) return refuse(attached.status());
  spdlog::info("trainer attached for pointer saves run={} attachment={} pid={} uid={}",
               (*attached)->run_id, (*attached)->id, c.peer.pid, c.peer.uid);
  Reply(c.fd, StrCat("OK ", (*attached)->id, " 0 ", (*attached)->key));
  return true;
}

bool ArenaServer::ServeHot(Connection& c, const ArenaRequest& r) {
  const std::string& run_id = r.run_id;
  const uint64_t step = r.step;
  if (hot_ == nullptr) {
    Reply(c.fd, ErrorReply(absl::NotFoundError(
                    "the daemon keeps no in-memory copies (shm.keep_last_in_memory = false)")));
    return true;
  }
  auto opened = hot_->OpenReadOnly(run_id, step, r.key);
  if (!opened.ok() && absl::IsPermissionDenied(opened.status())) {
    spdlog::warn("hot copy refused run={} step={} pid={} uid={}: wrong key", run_id, step,
                 c.peer.pid, c.peer.uid);
  }
  if (!opened.ok()) {
    Reply(c.fd, ErrorReply(opened.status()));
    return true;
  }
  auto [fd, size] = *opened;
  spdlog::info("hot copy handed out run={} step={} bytes={} pid={}", run_id, step, size,
               c.peer.pid);
  // MSG_DONTWAIT, as in Reply.
  (void)env::SendWithFd(c.fd, StrCat("OK ", size), fd, MSG_DONTWAIT);
  ::close(fd);
  return true;
}

}  // namespace ckptd::ingest
