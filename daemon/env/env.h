// The only place that calls POSIX file and memory APIs. Everything above it
// takes an Env*, so tests can substitute a fault-injecting twin
// (fault_env.h). Files and mappings are RAII objects; every failure is a
// Status naming the operation and the path (PosixError).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/base/byte_source.h"

namespace ckptd::env {

// A read-only file read with pread; concurrent ReadAt calls are safe.
class RandomAccessFile : public ByteSource {
 public:
  const std::string& path() const { return path_; }
  // 0 for a buffered file. For one opened with O_DIRECT (OpenForDirectRead)
  // the alignment every ReadUpTo offset, length and buffer address must have.
  virtual size_t direct_alignment() const { return 0; }
  // Reads up to n bytes at offset; fewer only at the end of the file (an
  // aligned read under O_DIRECT may run past it). Returns the bytes read.
  virtual absl::StatusOr<size_t> ReadUpTo(uint64_t offset, size_t n, void* dst) const = 0;
  // The open file's descriptor, for WritableFile::AppendClone; -1 when it
  // has none (a test double).
  virtual int native_handle() const { return -1; }

 protected:
  explicit RandomAccessFile(std::string path) : path_(std::move(path)) {}

 private:
  std::string path_;
};

// A whole file mapped read-only; the mapping lives as long as the object.
// Only for files nobody truncates meanwhile (that would raise SIGBUS).
class MappedFile : public ByteSource {
 public:
  virtual std::string_view bytes() const = 0;
};

enum class DirectIo {
  kAuto,  // O_DIRECT with aligned buffers where the filesystem allows it
  kOff,   // buffered writes
};

// A new file being written: appends go through aligned 4 MiB buffers; a
// full buffer is queued for two writer threads (at aligned offsets under
// O_DIRECT) while the next one fills, so up to 4 buffers (16 MiB) per file
// are held and two writes are in flight. Stable appends (AppendStable) queue
// their aligned middle for the same threads without a buffer. A write error is sticky and
// surfaces from the next Append, WriteAt or Sync.
// Not thread-safe. The destructor closes the fd without syncing; removing an
// abandoned file is the caller's job (storage/ owns temp names).
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  virtual absl::Status Append(std::string_view data) = 0;
  // Append, for bytes that stay valid and unchanged until Sync() has
  // returned or the file is destroyed (a trainer's arena during its save).
  // Under O_DIRECT the part of `data` that is 4 KiB-aligned both in memory
  // and in the file is written straight from that memory, with no copy;
  // the rest (and everything when the two are not in the same 4 KiB phase)
  // goes through the write buffer as Append's bytes do.
  virtual absl::Status AppendStable(std::string_view data) { return Append(data); }
  // Bytes AppendStable wrote without copying them (for stats and tests).
  virtual uint64_t zero_copy_bytes() const { return 0; }
  // Appends `n` bytes of `src` from `src_offset` by sharing its extents
  // (FICLONERANGE: XFS with reflink, btrfs) instead of writing them. The
  // file's size, `src_offset` and `n` must be multiples of 4 KiB.
  // UNIMPLEMENTED, with nothing appended, where the file system or the
  // files cannot (ext4, tmpfs, another file system, unaligned): the caller
  // appends the bytes itself. Other errors are the file system's.
  virtual absl::Status AppendClone(const RandomAccessFile& src, uint64_t src_offset, uint64_t n) {
    (void)src, (void)src_offset, (void)n;
    return absl::UnimplementedError("this file cannot share extents");
  }
  // Bytes AppendClone shared rather than wrote.
  virtual uint64_t cloned_bytes() const { return 0; }
  // Overwrites bytes already appended, e.g. a header patched after the data.
  virtual absl::Status WriteAt(uint64_t offset, std::string_view data) = 0;
  // Writes everything out and fdatasyncs: the bytes are durable when it returns.
  virtual absl::Status Sync() = 0;
  // Checked close (a close error loses data on some filesystems). Only after
  // Sync(): FAILED_PRECONDITION if appended bytes were never synced.
  virtual absl::Status Close() = 0;
  virtual uint64_t size() const = 0;
  virtual bool direct() const = 0;  // O_DIRECT in use
  virtual const std::string& path() const = 0;
};

struct FileStat {
  uint64_t size = 0;
  bool is_dir = false;
  bool is_symlink = false;
  bool is_regular = false;
  uint32_t mode = 0;     // permission bits (st_mode & 07777)
  double changed_s = 0;  // st_ctime (seconds since the epoch): the last write, rename or chmod
};

struct FsSpace {
  uint64_t free_bytes = 0;  // available to unprivileged users
  uint64_t total_bytes = 0;
};

// An advisory lock held on a file (flock): released when destroyed.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

class Env {
 public:
  virtual ~Env() = default;

  // The process-wide POSIX implementation; never destroyed.
  static Env* Default();

  virtual absl::StatusOr<std::unique_ptr<RandomAccessFile>> OpenForRead(
      const std::string& path) = 0;
  // Like OpenForRead, with O_DIRECT where the filesystem allows it (tmpfs
  // does not: the file is then buffered and direct_alignment() is 0).
  virtual absl::StatusOr<std::unique_ptr<RandomAccessFile>> OpenForDirectRead(
      const std::string& path) = 0;
  virtual absl::StatusOr<std::unique_ptr<MappedFile>> MapForRead(const std::string& path) = 0;
  // Creates a new file (fails if it exists), mode 0644.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                        DirectIo direct) = 0;
  // rename(2): atomically replaces `to`.
  virtual absl::Status RenameFile(const std::string& from, const std::string& to) = 0;
  virtual absl::Status Symlink(const std::string& target, const std::string& link) = 0;
  virtual absl::StatusOr<std::string> ReadLink(const std::string& link) = 0;
  // fsync of a directory, so renames and unlinks in it are durable.
  virtual absl::Status SyncDir(const std::string& dir) = 0;
  virtual absl::Status RemoveFile(const std::string& path) = 0;
  // mkdir -p, mode 0755; each directory it creates is durable (its parent
  // synced) when it returns.
  virtual absl::Status CreateDirs(const std::string& path) = 0;
  // Entry names (no "." or ".."), unsorted.
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  // lstat: a symlink is reported as such, not followed.
  virtual absl::StatusOr<FileStat> Stat(const std::string& path) = 0;
  virtual absl::StatusOr<FsSpace> Space(const std::string& path) = 0;
  // realpath(3): absolute, symlinks resolved; the path must exist.
  virtual absl::StatusOr<std::string> RealPath(const std::string& path) = 0;
  // chmod(2) to `mode`, then chown(2) to group `gid` unless it is -1.
  virtual absl::Status SetMode(const std::string& path, uint32_t mode, int64_t gid) = 0;
  // An exclusive flock(2) on `path` (created 0644 if missing), without
  // waiting: FAILED_PRECONDITION when another process holds it. The holder's
  // pid is written into the file, so `*holder` (if given) names the running
  // one when refused.
  virtual absl::StatusOr<std::unique_ptr<FileLock>> LockFile(const std::string& path,
                                                             std::string* holder) = 0;
};

// Forwards every call to another Env, so a test env overrides only what it
// changes (leveldb's EnvWrapper). `target` must outlive the wrapper.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }

  absl::StatusOr<std::unique_ptr<RandomAccessFile>> OpenForRead(const std::string& path) override {
    return target_->OpenForRead(path);
  }
  absl::StatusOr<std::unique_ptr<RandomAccessFile>> OpenForDirectRead(
      const std::string& path) override {
    return target_->OpenForDirectRead(path);
  }
  absl::StatusOr<std::unique_ptr<MappedFile>> MapForRead(const std::string& path) override {
    return target_->MapForRead(path);
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                DirectIo direct) override {
    return target_->NewWritableFile(path, direct);
  }
  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    return target_->RenameFile(from, to);
  }
  absl::Status Symlink(const std::string& target, const std::string& link) override {
    return target_->Symlink(target, link);
  }
  absl::StatusOr<std::string> ReadLink(const std::string& link) override {
    return target_->ReadLink(link);
  }
  absl::Status SyncDir(const std::string& dir) override { return target_->SyncDir(dir); }
  absl::Status RemoveFile(const std::string& path) override { return target_->RemoveFile(path); }
  absl::Status CreateDirs(const std::string& path) override { return target_->CreateDirs(path); }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    return target_->ListDir(dir);
  }
  absl::StatusOr<FileStat> Stat(const std::string& path) override { return target_->Stat(path); }
  absl::StatusOr<FsSpace> Space(const std::string& path) override { return target_->Space(path); }
  absl::StatusOr<std::string> RealPath(const std::string& path) override {
    return target_->RealPath(path);
  }
  absl::Status SetMode(const std::string& path, uint32_t mode, int64_t gid) override {
    return target_->SetMode(path, mode, gid);
  }
  absl::StatusOr<std::unique_ptr<FileLock>> LockFile(const std::string& path,
                                                     std::string* holder) override {
    return target_->LockFile(path, holder);
  }

 private:
  Env* target_;
};

// The one temp-name recipe: ".<final_name>.tmp-<16 hex digits>" in the same
// directory (storage/file_names.h parses it back for recovery).
inline constexpr std::string_view kTempMarker = ".tmp-";
std::string TempName(std::string_view final_name);

// Writes `data` to `path` durably and atomically: temp file (TempName) in
// the same directory, write, fdatasync, close, rename, fsync the directory;
// the temp is removed on any failure. For small state files (not checkpoints).
absl::Status WriteFileAtomically(Env* env, const std::string& path, std::string_view data);

// Reads a whole (small) file.
absl::StatusOr<std::string> ReadWholeFile(Env* env, const std::string& path);

// A file opened with OpenForDirectRead as a ByteSource that reads any range:
// each ReadAt reads the aligned span around it into an aligned buffer and
// copies the range out. For one pass over a file just written with O_DIRECT
// (a fetched checkpoint's verification), which then costs no page-cache
// copy. ReadAt calls are serialized.
class DirectReadSource final : public ByteSource {
 public:
  explicit DirectReadSource(std::unique_ptr<RandomAccessFile> file);
  ~DirectReadSource() override;
  uint64_t size() const override { return file_->size(); }
  absl::Status ReadAt(uint64_t offset, size_t n, void* dst) const override;

 private:
  std::unique_ptr<RandomAccessFile> file_;
  mutable absl::Mutex mu_;
  mutable char* buf_ ABSL_GUARDED_BY(mu_) = nullptr;  // aligned, kBufferBytes
  static constexpr size_t kBufferBytes = 8 << 20;
};

}  // namespace ckptd::env
