// Datagrams with a file descriptor attached (SCM_RIGHTS): how the arena
// socket's two ends, the daemon and the trainer-side client, pass memfds.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace ckptd::env {

// Sends `text` as one datagram on `sock`, with `fd` attached when fd >= 0.
// `flags` are sendmsg's (MSG_NOSIGNAL is always added).
absl::Status SendWithFd(int sock, std::string_view text, int fd, int flags = 0);

}  // namespace ckptd::env
