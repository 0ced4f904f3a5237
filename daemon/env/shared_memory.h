// A trainer's shared-memory segment (a memfd received over SCM_RIGHTS),
// read by mapping windows of it read-only. Adopt() refuses a segment that is
// not sealed against shrinking and growing, so the client cannot truncate it
// under a mapping (which would SIGBUS the daemon). Windows are mapped and
// unmapped per use: the daemon's resident memory stays one window, not the
// whole arena. The object owns the fd; thread-safe (windows are independent).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"

namespace ckptd::env {

// [offset, offset + size) of a segment, mapped read-only while this lives.
class MappedWindow {
 public:
  MappedWindow(void* base, size_t mapped, std::string_view bytes)
      : base_(base), mapped_(mapped), bytes_(bytes) {}
  ~MappedWindow();
  MappedWindow(const MappedWindow&) = delete;
  MappedWindow& operator=(const MappedWindow&) = delete;
  std::string_view bytes() const { return bytes_; }

 private:
  void* base_;
  size_t mapped_;
  std::string_view bytes_;
};

class SharedMemory {
 public:
  // Takes ownership of `fd` (closed on failure too). FAILED_PRECONDITION when
  // it is not a sealable memfd or lacks F_SEAL_SHRINK and F_SEAL_GROW.
  static absl::StatusOr<std::unique_ptr<SharedMemory>> Adopt(int fd);
  ~SharedMemory();
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  uint64_t size() const { return size_; }
  int fd() const { return fd_; }
  // A new read-only descriptor of the segment (reopened through
  // /proc/self/fd), to hand to another process that may map it only for
  // reading. The caller owns the returned fd.
  absl::StatusOr<int> OpenReadOnly() const;
  // Maps [offset, offset + n) read-only (populated). OUT_OF_RANGE outside the segment.
  absl::StatusOr<std::unique_ptr<MappedWindow>> Map(uint64_t offset, size_t n) const;

 private:
  SharedMemory(int fd, uint64_t size) : fd_(fd), size_(size) {}
  int fd_;
  uint64_t size_;
};

}  // namespace ckptd::env
