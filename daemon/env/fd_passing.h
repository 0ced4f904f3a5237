// Datagrams with a file descriptor attached (SCM_RIGHTS): how the arena
// socket's two ends, the daemon and the trainer-side client, pass memfds.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace ckptd::env {

// Sends `text` as one datagram on `sock`, with `fd` attached when fd >= 0.
// `flags` are sendmsg's (MSG_NOSIGNAL is always added).
absl::Status SendWithFd(int sock, std::string_view text, int fd, int flags = 0);

// Whether a process accepts connections on the Unix socket at `path`
// (`type`: SOCK_STREAM or SOCK_SEQPACKET): a live daemon's socket, not one
// left behind by a daemon that died.
bool UnixSocketAnswers(const std::string& path, int type);

// systemd's notification (READY=1, STATUS=..., WATCHDOG=1) to the datagram
// socket $NOTIFY_SOCKET names ("@..." = abstract), as sd_notify sends it,
// but never blocking: a manager that does not read (its queue full) costs
// the message, not a stuck timer or shutdown. Without $NOTIFY_SOCKET,
// nothing.
void NotifyServiceManager(const std::string& state);

}  // namespace ckptd::env
