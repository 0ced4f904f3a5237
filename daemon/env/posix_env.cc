// POSIX implementation of Env.
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/env/posix_error.h"
#include "daemon/env/posix_writable_file.h"

namespace ckptd::env {
namespace {

// The directory holding `path`'s entry ("/" for "/x", "." for "x").
std::string Parent(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

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
  PosixRandomAccessFile(std::string path, int fd, uint64_t size, size_t direct_alignment)
      : RandomAccessFile(std::move(path)),
        fd_(fd),
        size_(size),
        direct_alignment_(direct_alignment) {}

  uint64_t size() const override { return size_; }
  size_t direct_alignment() const override { return direct_alignment_; }
  int native_handle() const override { return fd_.get(); }

  absl::Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset > size_ || n > size_ - offset) {
      return absl::OutOfRangeError(StrCat("read ", path(), ": ", n, " bytes at offset ", offset,
                                          " past the end (", size_, " bytes)"));
    }
    CKPTD_ASSIGN_OR_RETURN(size_t got, ReadUpTo(offset, n, dst));
    if (got < n) return absl::DataLossError(StrCat("read ", path(), ": file shrank while reading"));
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> ReadUpTo(uint64_t offset, size_t n, void* dst) const override {
    auto* out = static_cast<char*>(dst);
    size_t done = 0;
    while (done < n) {
      ssize_t r = ::pread(fd_.get(), out + done, n - done, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return PosixError(StrCat("pread ", path()), errno);
      }
      if (r == 0) break;
      done += static_cast<size_t>(r);
      // Under O_DIRECT a short read ends at the end of the file; asking
      // again from an unaligned offset would fail with EINVAL.
      if (direct_alignment_ != 0 && done % direct_alignment_ != 0) break;
    }
    return done;
  }

 private:
  ScopedFd fd_;
  uint64_t size_;
  size_t direct_alignment_;
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
    ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return PosixError(StrCat("open ", path), errno);
    auto size = RegularFileSize(fd.get(), path);
    if (!size.ok()) return size.status();
    return std::make_unique<PosixRandomAccessFile>(path, fd.release(), *size, 0);
  }

  absl::StatusOr<std::unique_ptr<RandomAccessFile>> OpenForDirectRead(
      const std::string& path) override {
    // 4096 covers every logical block size Linux uses; filesystems without
    // O_DIRECT (tmpfs) refuse the flag with EINVAL, and are read buffered.
    constexpr size_t kDirectAlignment = 4096;
    size_t alignment = kDirectAlignment;
    ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT));
    if (fd.get() < 0 && errno == EINVAL) {
      alignment = 0;
      fd = ScopedFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    }
    if (fd.get() < 0) return PosixError(StrCat("open ", path), errno);
    auto size = RegularFileSize(fd.get(), path);
    if (!size.ok()) return size.status();
    return std::make_unique<PosixRandomAccessFile>(path, fd.release(), *size, alignment);
  }

  absl::StatusOr<std::unique_ptr<MappedFile>> MapForRead(const std::string& path) override {
    ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return PosixError(StrCat("open ", path), errno);
    auto size = RegularFileSize(fd.get(), path);
    if (!size.ok()) return size.status();
    void* base = nullptr;
    if (*size > 0) {
      base = ::mmap(nullptr, *size, PROT_READ, MAP_SHARED, fd.get(), 0);
      if (base == MAP_FAILED) return PosixError(StrCat("mmap ", path), errno);
    }
    return std::make_unique<PosixMappedFile>(base, *size);
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                DirectIo direct) override {
    return OpenPosixWritableFile(path, direct);
  }

  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return PosixError(StrCat("rename ", from, " -> ", to), errno);
    }
    return absl::OkStatus();
  }

  absl::Status Symlink(const std::string& target, const std::string& link) override {
    if (::symlink(target.c_str(), link.c_str()) != 0) {
      return PosixError(StrCat("symlink ", link, " -> ", target), errno);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> ReadLink(const std::string& link) override {
    char buf[PATH_MAX];
    ssize_t n = ::readlink(link.c_str(), buf, sizeof buf);
    if (n < 0) return PosixError(StrCat("readlink ", link), errno);
    return std::string(buf, static_cast<size_t>(n));
  }

  absl::Status SyncDir(const std::string& dir) override {
    ScopedFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.get() < 0) return PosixError(StrCat("open ", dir), errno);
    if (::fsync(fd.get()) != 0) return PosixError(StrCat("fsync ", dir), errno);
    return absl::OkStatus();
  }

  absl::Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return PosixError(StrCat("unlink ", path), errno);
    return absl::OkStatus();
  }

  absl::Status CreateDirs(const std::string& path) override {
    if (path.empty()) return absl::OkStatus();
    std::vector<std::string> created;
    for (size_t pos = 1; pos <= path.size(); ++pos) {
      if (pos != path.size() && path[pos] != '/') continue;
      std::string prefix = path.substr(0, pos);
      if (::mkdir(prefix.c_str(), 0755) == 0) {
        created.push_back(std::move(prefix));
      } else if (errno != EEXIST) {
        return PosixError(StrCat("mkdir ", prefix), errno);
      }
    }
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return PosixError(StrCat("stat ", path), errno);
    if (!S_ISDIR(st.st_mode)) return PosixError(StrCat("mkdir ", path), ENOTDIR);
    // A new directory's name is an entry of its parent: durable only once
    // the parent is synced, or a power cut takes it and all it will hold.
    for (const std::string& dir : created) CKPTD_TRY(SyncDir(Parent(dir)));
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return PosixError(StrCat("opendir ", dir), errno);
    std::vector<std::string> names;
    errno = 0;
    while (struct dirent* e = ::readdir(d)) {
      std::string_view name = e->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    int err = errno;
    ::closedir(d);
    if (err != 0) return PosixError(StrCat("readdir ", dir), err);
    return names;
  }

  absl::StatusOr<FileStat> Stat(const std::string& path) override {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) return PosixError(StrCat("lstat ", path), errno);
    return FileStat{
        static_cast<uint64_t>(st.st_size),
        S_ISDIR(st.st_mode) != 0,
        S_ISLNK(st.st_mode) != 0,
        S_ISREG(st.st_mode) != 0,
        static_cast<uint32_t>(st.st_mode & 07777),
        static_cast<double>(st.st_ctim.tv_sec) + static_cast<double>(st.st_ctim.tv_nsec) * 1e-9};
  }

  absl::StatusOr<FsSpace> Space(const std::string& path) override {
    struct statvfs vfs;
    if (::statvfs(path.c_str(), &vfs) != 0) return PosixError(StrCat("statvfs ", path), errno);
    return FsSpace{static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize,
                   static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize};
  }

  absl::StatusOr<std::string> RealPath(const std::string& path) override {
    char* resolved = ::realpath(path.c_str(), nullptr);
    if (resolved == nullptr) return PosixError(StrCat("realpath ", path), errno);
    std::string out(resolved);
    ::free(resolved);
    return out;
  }

  absl::Status SetMode(const std::string& path, uint32_t mode, int64_t gid) override {
    if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
      return PosixError(StrCat("chmod ", path), errno);
    }
    if (gid >= 0 && ::chown(path.c_str(), static_cast<uid_t>(-1), static_cast<gid_t>(gid)) != 0) {
      return PosixError(StrCat("chown ", path, " to group ", gid), errno);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<FileLock>> LockFile(const std::string& path,
                                                     std::string* holder) override {
    ScopedFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (fd.get() < 0) return PosixError(StrCat("open ", path), errno);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      if (err != EWOULDBLOCK) return PosixError(StrCat("flock ", path), err);
      if (holder != nullptr) {
        char buf[32] = {};
        const ssize_t n = ::pread(fd.get(), buf, sizeof buf - 1, 0);
        *holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
        while (!holder->empty() && (holder->back() == '\n' || holder->back() == ' ')) {
          holder->pop_back();
        }
      }
      return absl::FailedPreconditionError(StrCat(path, " is locked by another process"));
    }
    const std::string pid = StrCat(::getpid(), "\n");
    if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), pid.data(), pid.size(), 0) < 0) {
      return PosixError(StrCat("write ", path), errno);
    }
    struct Lock final : FileLock {
      explicit Lock(ScopedFd f) : fd(std::move(f)) {}
      ScopedFd fd;  // closing it releases the lock
    };
    return std::make_unique<Lock>(std::move(fd));
  }
};

}  // namespace

Env* Env::Default() {
  static Env* env = new PosixEnv();
  return env;
}

}  // namespace ckptd::env
