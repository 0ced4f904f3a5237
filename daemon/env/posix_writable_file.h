// The POSIX WritableFile: O_DIRECT with an aligned bounce buffer where the
// filesystem accepts it, buffered pwrite otherwise (tmpfs has no O_DIRECT).
#pragma once

#include <unistd.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"

namespace ckptd::env {

// Owns a file descriptor; closes it on destruction.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.release()) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

inline constexpr size_t kDirectIoAlignment = 4096;
inline constexpr size_t kWriteBufferBytes = 4 << 20;
inline constexpr size_t kFirstWriteBufferBytes = 64 << 10;  // until a file outgrows it
inline constexpr size_t kWriteBuffers = 4;                  // per file: at most 16 MiB
inline constexpr size_t kWriteThreads = 2;                  // writes in flight per file

absl::StatusOr<std::unique_ptr<WritableFile>> OpenPosixWritableFile(const std::string& path,
                                                                    DirectIo direct);

}  // namespace ckptd::env
