// Sealed memfd segments, mapped window by window.
#include "daemon/env/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "daemon/base/strings.h"
#include "daemon/env/posix_error.h"

namespace ckptd::env {

MappedWindow::~MappedWindow() {
  if (base_ != nullptr) ::munmap(base_, mapped_);
}

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
  return std::unique_ptr<SharedMemory>(new SharedMemory(fd, static_cast<uint64_t>(st.st_size)));
}

SharedMemory::~SharedMemory() { ::close(fd_); }

absl::StatusOr<int> SharedMemory::OpenReadOnly() const {
  const std::string self = StrCat("/proc/self/fd/", fd_);
  int fd = ::open(self.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return SystemError(StrCat("reopen memfd read-only via ", self), errno);
  return fd;
}

absl::StatusOr<std::unique_ptr<MappedWindow>> SharedMemory::Map(uint64_t offset, size_t n) const {
  if (offset > size_ || n > size_ - offset) {
    return absl::OutOfRangeError(
        StrCat("bytes [", offset, ", ", offset + n, ") lie outside the arena (", size_, " bytes)"));
  }
  static const uint64_t kPage = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / kPage * kPage;
  const size_t mapped = static_cast<size_t>(offset - start) + n;
  if (mapped == 0) return std::make_unique<MappedWindow>(nullptr, 0, std::string_view());
  void* base =
      ::mmap(nullptr, mapped, PROT_READ, MAP_SHARED | MAP_POPULATE, fd_, static_cast<off_t>(start));
  if (base == MAP_FAILED) return SystemError("mmap memfd window", errno);
  return std::make_unique<MappedWindow>(
      base, mapped, std::string_view(static_cast<const char*>(base) + (offset - start), n));
}

}  // namespace ckptd::env
