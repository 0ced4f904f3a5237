// SCM_RIGHTS datagrams.
#include "daemon/env/fd_passing.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "daemon/env/posix_error.h"

namespace ckptd::env {

absl::Status SendWithFd(int sock, std::string_view text, int fd, int flags) {
  std::string copy(text);  // iovec wants a mutable pointer
  iovec iov{copy.data(), copy.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* h = CMSG_FIRSTHDR(&msg);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(h), &fd, sizeof fd);
  }
  if (::sendmsg(sock, &msg, flags | MSG_NOSIGNAL) < 0) return SystemError("sendmsg", errno);
  return absl::OkStatus();
}

}  // namespace ckptd::env
