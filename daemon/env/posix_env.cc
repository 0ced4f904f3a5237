// POSIX implementation of Env.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/env/posix_error.h"

namespace ckptd::env {
namespace {

// Owns a file descriptor; closes it on destruction.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

absl::StatusOr<uint64_t> RegularFileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return PosixError(StrCat("fstat ", path), errno);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(StrCat(path, ": not a regular file"));
  }
  return static_cast<uint64_t>(st.st_size);
}

class PosixRandomAccessFile final : public RandomAccessFile {
 public:
  PosixRandomAccessFile(std::string path, int fd, uint64_t size)
      : RandomAccessFile(std::move(path)), fd_(fd), size_(size) {}

  uint64_t size() const override { return size_; }

  absl::Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset > size_ || n > size_ - offset) {
      return absl::OutOfRangeError(StrCat("read ", path(), ": ", n, " bytes at offset ", offset,
                                          " past the end (", size_, " bytes)"));
    }
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      ssize_t r = ::pread(fd_.get(), out, n, static_cast<off_t>(offset));
      if (r < 0) {
        if (errno == EINTR) continue;
        return PosixError(StrCat("pread ", path()), errno);
      }
      if (r == 0) {
        return absl::DataLossError(StrCat("read ", path(), ": file shrank while reading"));
      }
      out += r;
      offset += static_cast<uint64_t>(r);
      n -= static_cast<size_t>(r);
    }
    return absl::OkStatus();
  }

 private:
  ScopedFd fd_;
  uint64_t size_;
};

class PosixMappedFile final : public MappedFile {
 public:
  PosixMappedFile(void* base, uint64_t size) : base_(base), size_(size) {}
  ~PosixMappedFile() override {
    if (size_ > 0) ::munmap(base_, size_);
  }

  uint64_t size() const override { return size_; }
  std::string_view bytes() const override {
    return {static_cast<const char*>(base_), static_cast<size_t>(size_)};
  }
  absl::Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    return MemorySource(bytes()).ReadAt(offset, n, dst);
  }

 private:
  void* base_;
  uint64_t size_;
};

class PosixEnv final : public Env {
 public:
  absl::StatusOr<std::unique_ptr<RandomAccessFile>> OpenForRead(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PosixError(StrCat("open ", path), errno);
    ScopedFd guard(fd);
    auto size = RegularFileSize(fd, path);
    if (!size.ok()) return size.status();
    return std::make_unique<PosixRandomAccessFile>(path, guard.release(), *size);
  }

  absl::StatusOr<std::unique_ptr<MappedFile>> MapForRead(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PosixError(StrCat("open ", path), errno);
    ScopedFd guard(fd);
    auto size = RegularFileSize(fd, path);
    if (!size.ok()) return size.status();
    void* base = nullptr;
    if (*size > 0) {
      base = ::mmap(nullptr, *size, PROT_READ, MAP_SHARED, fd, 0);
      if (base == MAP_FAILED) return PosixError(StrCat("mmap ", path), errno);
    }
    return std::make_unique<PosixMappedFile>(base, *size);
  }
};

}  // namespace

Env* Env::Default() {
  static Env* env = new PosixEnv();
  return env;
}

}  // namespace ckptd::env
