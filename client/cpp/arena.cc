// memfd arenas and the SCM_RIGHTS registration channel.
#include "client/cpp/ckptd/arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

namespace ckptd {
namespace {

absl::Status Errno(const std::string& what, int err) {
  return absl::Status(err == ENOMEM || err == ENOSPC ? absl::StatusCode::kResourceExhausted
                                                     : absl::StatusCode::kUnavailable,
                      what + ": " + std::strerror(err));
}

absl::StatusCode CodeNamed(std::string_view name) {
  for (int c = 0; c <= 16; ++c) {
    auto code = static_cast<absl::StatusCode>(c);
    if (absl::StatusCodeToString(code) == name) return code;
  }
  return absl::StatusCode::kUnknown;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Arena>> Arena::Create(size_t bytes, const std::string& name) {
  if (bytes == 0) return absl::InvalidArgumentError("an arena needs at least one byte");
  int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Errno("memfd_create", errno);
  auto fail = [fd](absl::Status st) {
    ::close(fd);
    return st;
  };
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) return fail(Errno("ftruncate memfd", errno));
  if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return fail(Errno("seal memfd", errno));
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) return fail(Errno("mmap memfd", errno));
  return std::unique_ptr<Arena>(new Arena(fd, static_cast<char*>(p), bytes));
}

Arena::~Arena() {
  ::munmap(data_, size_);
  ::close(fd_);
}

absl::StatusOr<std::unique_ptr<ArenaChannel>> ArenaChannel::Connect(
    const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError("arena socket path '" + socket_path + "' is unusable");
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket", errno);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    absl::Status st = Errno("connect " + socket_path, errno);
    ::close(fd);
    return st;
  }
  return std::unique_ptr<ArenaChannel>(new ArenaChannel(fd));
}

ArenaChannel::~ArenaChannel() { ::close(fd_); }

absl::StatusOr<uint64_t> ArenaChannel::Register(int fd, const std::string& token) {
  std::string text = "REGISTER " + token;
  iovec iov{text.data(), text.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* h = CMSG_FIRSTHDR(&msg);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(h), &fd, sizeof fd);
  if (::sendmsg(fd_, &msg, MSG_NOSIGNAL) < 0) return Errno("send to the arena socket", errno);
  char reply[1024];
  ssize_t n;
  do {
    n = ::recv(fd_, reply, sizeof reply, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Errno("read from the arena socket", errno);
  if (n == 0) return absl::UnavailableError("the daemon closed the arena socket");
  std::string_view r(reply, static_cast<size_t>(n));
  if (r.starts_with("OK ")) {
    uint64_t id = 0;
    for (char c : r.substr(3)) {
      if (c == ' ') break;
      if (c < '0' || c > '9') return absl::InternalError("bad arena reply: " + std::string(r));
      id = id * 10 + static_cast<uint64_t>(c - '0');
    }
    return id;
  }
  if (r.starts_with("ERR ")) {
    r.remove_prefix(4);
    size_t space = r.find(' ');
    std::string_view code = r.substr(0, space);
    std::string_view message = space == std::string_view::npos ? "" : r.substr(space + 1);
    return absl::Status(CodeNamed(code), "arena refused: " + std::string(message));
  }
  return absl::InternalError("bad arena reply: " + std::string(r));
}

}  // namespace ckptd
