// A trainer's shared-memory segment (a memfd received over SCM_RIGHTS),
// mapped read-only once, for as long as the daemon holds it. Adopt() refuses
// a segment that is not sealed against shrinking and growing, so the client
// cannot truncate it under the mapping (which would SIGBUS the daemon).
//
// One mapping per registration, not one per save: on a paravirtualized VM
// every freshly mapped page costs a hypervisor fault, so windows mapped and
// unmapped on every save made reading the arena ~10x slower than a warm
// copy. The pages are the trainer's shared memory (they count in the
// daemon's RssShmem, never in its RssAnon); a 4 KiB-page arena costs the
// daemon 2 MiB of page tables per GiB, a huge-page one 4 KiB.
// The object owns the fd; thread-safe (the mapping is immutable).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"

namespace ckptd::env {

class SharedMemory {
 public:
  // Takes ownership of `fd` (closed on failure too). FAILED_PRECONDITION when
  // it is not a sealable memfd or lacks F_SEAL_SHRINK and F_SEAL_GROW;
  // RESOURCE_EXHAUSTED when it cannot be mapped.
  static absl::StatusOr<std::unique_ptr<SharedMemory>> Adopt(int fd);
  ~SharedMemory();
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  uint64_t size() const { return bytes_.size(); }
  int fd() const { return fd_; }
  // Sealed against writes (F_SEAL_WRITE) when adopted: seals are never
  // removed, so its bytes can never change while anyone holds it.
  bool immutable() const { return immutable_; }
  // The whole segment, read-only. Pages are faulted in on first read and
  // stay mapped; the address is page-aligned (huge-page aligned for a
  // huge-page segment).
  std::string_view bytes() const { return bytes_; }
  // bytes()[offset, offset + n); OUT_OF_RANGE outside the segment.
  absl::StatusOr<std::string_view> Slice(uint64_t offset, uint64_t n) const;
  // A new read-only descriptor of the segment (reopened through
  // /proc/self/fd), to hand to another process that may map it only for
  // reading. The caller owns the returned fd.
  absl::StatusOr<int> OpenReadOnly() const;

 private:
  SharedMemory(int fd, std::string_view bytes, bool immutable)
      : fd_(fd), bytes_(bytes), immutable_(immutable) {}
  int fd_;
  std::string_view bytes_;
  bool immutable_;
};

}  // namespace ckptd::env
