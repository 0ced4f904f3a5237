// Sealed memfd segments, mapped once.
#include "daemon/env/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "daemon/base/strings.h"
#include "daemon/env/posix_error.h"

namespace ckptd::env {

absl::StatusOr<std::unique_ptr<SharedMemory>> SharedMemory::Adopt(int fd) {
  auto fail = [fd](absl::Status st) {
    ::close(fd);
    return st;
  };
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    return fail(absl::FailedPreconditionError(
        "the fd is not a memfd created with MFD_ALLOW_SEALING (F_GET_SEALS failed); create "
        "arenas with memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)"));
  }
  constexpr int kNeeded = F_SEAL_SHRINK | F_SEAL_GROW;
  if ((seals & kNeeded) != kNeeded && (seals & F_SEAL_SEAL) != 0) {
    return fail(absl::FailedPreconditionError(
        "the memfd can no longer be sealed against resizing (created without "
        "MFD_ALLOW_SEALING, or F_SEAL_SEAL came first); create arenas with "
        "memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING) and seal F_SEAL_SHRINK | "
        "F_SEAL_GROW"));
  }
  if ((seals & kNeeded) != kNeeded) {
    return fail(absl::FailedPreconditionError(
        StrCat("the memfd is not sealed against resizing (seals 0x", fmt::format("{:x}", seals),
               "); size it, then fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) before "
               "registering it, so it cannot be truncated while the daemon reads it")));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) return fail(SystemError("fstat memfd", errno));
  if (!S_ISREG(st.st_mode) || st.st_size <= 0) {
    return fail(absl::FailedPreconditionError("the memfd is empty: size it before sealing"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    return fail(absl::ResourceExhaustedError(
        StrCat("mmap memfd arena of ", size, " bytes: ", std::strerror(errno))));
  }
  return std::unique_ptr<SharedMemory>(new SharedMemory(
      fd, std::string_view(static_cast<const char*>(base), size), (seals & F_SEAL_WRITE) != 0));
}

SharedMemory::~SharedMemory() {
  ::munmap(const_cast<char*>(bytes_.data()), bytes_.size());
  ::close(fd_);
}

absl::StatusOr<int> SharedMemory::OpenReadOnly() const {
  const std::string self = StrCat("/proc/self/fd/", fd_);
  int fd = ::open(self.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return SystemError(StrCat("reopen memfd read-only via ", self), errno);
  return fd;
}

absl::StatusOr<std::string_view> SharedMemory::Slice(uint64_t offset, uint64_t n) const {
  if (offset > size() || n > size() - offset) {
    return absl::OutOfRangeError(StrCat("bytes [", offset, ", ", offset + n,
                                        ") lie outside the arena (", size(), " bytes)"));
  }
  return bytes_.substr(offset, n);
}

}  // namespace ckptd::env
