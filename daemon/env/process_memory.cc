// process_vm_readv behind a pidfd.
#include "daemon/env/process_memory.h"

#include <poll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

#include "daemon/base/strings.h"
#include "daemon/env/posix_error.h"

namespace ckptd::env {
namespace {

std::string PtraceScope() {
  std::ifstream in("/proc/sys/kernel/yama/ptrace_scope");
  std::string v;
  if (!(in >> v)) return "not set (no Yama)";
  return v;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ProcessMemory>> ProcessMemory::Open(pid_t pid) {
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    if (errno == ESRCH) {
      return absl::NotFoundError(StrCat("process ", pid, " has exited"));
    }
    return SystemError(StrCat("pidfd_open ", pid), errno);
  }
  return std::unique_ptr<ProcessMemory>(new ProcessMemory(pid, fd));
}

ProcessMemory::~ProcessMemory() { ::close(pidfd_); }

bool ProcessMemory::alive() const {
  pollfd p{.fd = pidfd_, .events = POLLIN, .revents = 0};
  return ::poll(&p, 1, 0) == 0;  // a pidfd turns readable when the process exits
}

absl::Status ProcessMemory::Read(uint64_t address, size_t n, void* dst) const {
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    if (!alive()) {
      return absl::AbortedError(StrCat("the trainer (pid ", pid_, ") exited while being read"));
    }
    iovec local{.iov_base = out, .iov_len = n};
    iovec remote{.iov_base = reinterpret_cast<void*>(address), .iov_len = n};
    const ssize_t got = ::process_vm_readv(pid_, &local, 1, &remote, 1, 0);
    if (got < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EFAULT) {
        return absl::InvalidArgumentError(StrCat("address ", fmt::format("{:#x}", address), " (+",
                                                 n, " bytes) is not readable memory of pid ",
                                                 pid_));
      }
      if (err == EPERM) {
        return absl::PermissionDeniedError(
            StrCat("process_vm_readv of pid ", pid_,
                   " is not permitted: the daemon may read a trainer's memory only when it runs as "
                   "the same uid (or has CAP_SYS_PTRACE) and kernel.yama.ptrace_scope allows it "
                   "(now ",
                   PtraceScope(),
                   "; the client calls prctl(PR_SET_PTRACER) for scope 1); use "
                   "shared-memory arenas otherwise"));
      }
      if (err == ESRCH) {
        return absl::AbortedError(StrCat("the trainer (pid ", pid_, ") exited while being read"));
      }
      return SystemError(StrCat("process_vm_readv pid ", pid_), err);
    }
    if (got == 0) {
      return absl::InvalidArgumentError(StrCat("address ", fmt::format("{:#x}", address),
                                               " is not readable memory of pid ", pid_));
    }
    out += got;
    address += static_cast<uint64_t>(got);
    n -= static_cast<size_t>(got);
  }
  // The process may have exited (and its pid been reused) during the read.
  if (!alive()) {
    return absl::AbortedError(StrCat("the trainer (pid ", pid_, ") exited while being read"));
  }
  return absl::OkStatus();
}

}  // namespace ckptd::env
