// Aligned-buffer file writer with O_DIRECT and a buffered fallback.
#include "daemon/env/posix_writable_file.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/posix_error.h"

namespace ckptd::env {
namespace {

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<char, FreeDeleter>;

AlignedBuffer AllocateAligned(size_t n) {
  void* p = nullptr;
  if (::posix_memalign(&p, kDirectIoAlignment, n) != 0) return nullptr;
  return AlignedBuffer(static_cast<char*>(p));
}

// Write-behind depth: buffers per file (one filling, the rest queued or being
// written) and threads writing them. Overridable for benchmarks through
// CKPTD_WRITE_BUFFERS / CKPTD_WRITE_THREADS; see bench/README.
size_t EnvOr(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr) return fallback;
  size_t n = std::strtoul(v, nullptr, 10);
  return std::clamp<size_t>(n, 1, 64);
}
size_t WriteBuffers() {
  static const size_t n = std::max<size_t>(2, EnvOr("CKPTD_WRITE_BUFFERS", kWriteBuffers));
  return n;
}
size_t WriteThreads() {
  static const size_t n = EnvOr("CKPTD_WRITE_THREADS", kWriteThreads);
  return n;
}

// Below this a stable append is copied: the saved copy would not pay for
// the extra, smaller writes.
constexpr size_t kMinZeroCopyBytes = 256 << 10;

uint64_t AlignDown(uint64_t x) { return x & ~uint64_t{kDirectIoAlignment - 1}; }
uint64_t AlignUpTo(uint64_t x) { return AlignDown(x + kDirectIoAlignment - 1); }

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(std::string path, ScopedFd fd, bool direct, AlignedBuffer buf)
      : path_(std::move(path)), fd_(std::move(fd)), direct_(direct), buf_(std::move(buf)) {}

  // An abandoned file's queued writes are skipped (stable bytes may be
  // about to go away); a closed file has none.
  ~PosixWritableFile() override {
    write_status_ok_ = false;
    StopWorker();
  }

  absl::Status Append(std::string_view data) override {
    while (!data.empty()) {
      size_t n = std::min(data.size(), capacity_ - used_);
      std::memcpy(buf_.get() + used_, data.data(), n);
      used_ += n;
      size_ += n;
      data.remove_prefix(n);
      if (used_ == capacity_) CKPTD_TRY(capacity_ < kWriteBufferBytes ? Grow() : FlushFull());
    }
    return absl::OkStatus();
  }

  absl::Status AppendStable(std::string_view data) override {
    // Same 4 KiB phase in memory and in the file: the head goes through the
    // buffer up to the file's next aligned offset, the buffer is queued (its
    // bytes end there, so its write is aligned), the aligned middle is
    // queued as it lies in the caller's memory, the tail is buffered.
    const uint64_t phase = (reinterpret_cast<uintptr_t>(data.data()) - size_) % kDirectIoAlignment;
    if (!direct_ || phase != 0 || data.size() < kMinZeroCopyBytes) return Append(data);
    const size_t head = static_cast<size_t>(AlignUpTo(size_) - size_);
    CKPTD_TRY(Append(data.substr(0, head)));
    data.remove_prefix(head);
    const size_t middle = static_cast<size_t>(AlignDown(data.size()));
    if (middle > 0) {
      if (used_ > 0) CKPTD_TRY(FlushFull());
      std::lock_guard lock(wmu_);
      if (!write_status_.ok()) return write_status_;
      for (size_t at = 0; at < middle; at += kWriteBufferBytes) {
        const size_t n = std::min(kWriteBufferBytes, middle - at);
        queue_.push_back(Job{nullptr, data.data() + at, n, flushed_});
        flushed_ += n;
        size_ += n;
      }
      zero_copy_bytes_ += middle;
      StartWorkersLocked();
      wcv_.notify_all();
    }
    return Append(data.substr(middle));
  }

  uint64_t zero_copy_bytes() const override { return zero_copy_bytes_; }

  absl::Status AppendClone(const RandomAccessFile& src, uint64_t src_offset, uint64_t n) override {
    const int src_fd = src.native_handle();
    if (src_fd < 0 || size_ % kDirectIoAlignment != 0 || src_offset % kDirectIoAlignment != 0 ||
        n % kDirectIoAlignment != 0 || n == 0) {
      return absl::UnimplementedError(
          StrCat("clone into ", path_, ": not 4 KiB-aligned, or no source descriptor"));
    }
    // What was appended so far goes to disk first: the clone lands after it.
    // size_ is aligned, so the buffered bytes form whole blocks.
    CKPTD_TRY(WaitWrite());
    if (used_ > 0) {
      CKPTD_TRY(PwriteAll(buf_.get(), used_, flushed_));
      flushed_ += used_;
      used_ = 0;
    }
    file_clone_range range{
        .src_fd = src_fd, .src_offset = src_offset, .src_length = n, .dest_offset = size_};
    if (::ioctl(fd_.get(), FICLONERANGE, &range) != 0) {
      const int err = errno;
      if (err == EOPNOTSUPP || err == EXDEV || err == EINVAL || err == ENOTTY || err == EBADF ||
          err == ETXTBSY) {
        return absl::UnimplementedError(
            StrCat("clone into ", path_, " from ", src.path(), ": ", std::strerror(err)));
      }
      return PosixError(StrCat("FICLONERANGE ", src.path(), " -> ", path_), err);
    }
    size_ += n;
    flushed_ += n;
    cloned_bytes_ += n;
    return absl::OkStatus();
  }

  uint64_t cloned_bytes() const override { return cloned_bytes_; }

  absl::Status WriteAt(uint64_t offset, std::string_view data) override {
    CKPTD_TRY(WaitWrite());  // the on-disk part is complete before it is patched
    if (offset > size_ || data.size() > size_ - offset) {
      return absl::OutOfRangeError(StrCat("write ", path_, ": patch past the end"));
    }
    // The part still in the buffer is patched in memory.
    if (offset + data.size() > flushed_) {
      uint64_t from = std::max(offset, flushed_);
      size_t skip = from - offset;
      std::memcpy(buf_.get() + (from - flushed_), data.data() + skip, data.size() - skip);
      data = data.substr(0, skip);
    }
    if (data.empty()) return absl::OkStatus();
    if (!direct_) return PwriteAll(data.data(), data.size(), offset);
    // O_DIRECT: read-modify-write the aligned blocks around the patch.
    uint64_t start = AlignDown(offset);
    uint64_t end = AlignUpTo(offset + data.size());
    AlignedBuffer tmp = AllocateAligned(end - start);
    if (tmp == nullptr) return absl::ResourceExhaustedError("out of memory for a header patch");
    CKPTD_TRY(PreadAll(tmp.get(), end - start, start));
    std::memcpy(tmp.get() + (offset - start), data.data(), data.size());
    CKPTD_TRY(PwriteAll(tmp.get(), end - start, start));
    if (end > size_ && ::ftruncate(fd_.get(), static_cast<off_t>(size_)) != 0) {
      return PosixError(StrCat("ftruncate ", path_), errno);
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    CKPTD_TRY(WaitWrite());
    if (used_ > 0) {
      size_t n = direct_ ? AlignUpTo(used_) : used_;
      std::memset(buf_.get() + used_, 0, n - used_);
      CKPTD_TRY(PwriteAll(buf_.get(), n, flushed_));
      if (n != used_ && ::ftruncate(fd_.get(), static_cast<off_t>(size_)) != 0) {
        return PosixError(StrCat("ftruncate ", path_), errno);
      }
      // Keep the tail in the buffer so later appends stay aligned: move the
      // flushed mark back to the tail's aligned start.
      uint64_t keep_from = AlignDown(used_);
      if (direct_) {
        std::memmove(buf_.get(), buf_.get() + keep_from, used_ - keep_from);
        flushed_ += keep_from;
        used_ -= keep_from;
      } else {
        flushed_ += used_;
        used_ = 0;
      }
    }
    if (::fdatasync(fd_.get()) != 0) return PosixError(StrCat("fdatasync ", path_), errno);
    synced_size_ = size_;
    return absl::OkStatus();
  }

  absl::Status Close() override {
    absl::Status pending = WaitWrite();
    StopWorker();
    CKPTD_TRY(pending);
    // Close is only for synced files: unsynced appends would be lost silently.
    if (size_ > synced_size_) {
      return absl::FailedPreconditionError(
          StrCat("close ", path_, ": ", size_ - synced_size_, " appended bytes were never synced"));
    }
    int fd = fd_.release();
    if (fd >= 0 && ::close(fd) != 0) return PosixError(StrCat("close ", path_), errno);
    return absl::OkStatus();
  }

  uint64_t size() const override { return size_; }
  bool direct() const override { return direct_; }
  const std::string& path() const override { return path_; }

 private:
  // A file starts with a small buffer (most files the daemon writes are
  // small: the allocator maps and unmaps 4 MiB ones for each) and moves to a
  // full-size one when it fills.
  absl::Status Grow() {
    AlignedBuffer bigger = AllocateAligned(kWriteBufferBytes);
    if (bigger == nullptr) {
      return absl::ResourceExhaustedError(
          StrCat("write ", path_, ": no memory for a write buffer"));
    }
    std::memcpy(bigger.get(), buf_.get(), used_);
    buf_ = std::move(bigger);
    capacity_ = kWriteBufferBytes;
    return absl::OkStatus();
  }

  // Queues the full buffer for the writer threads and goes on filling a free
  // one, so copying and hashing the next 4 MiB overlaps the writes in flight.
  absl::Status FlushFull() {
    if (capacity_ < kWriteBufferBytes) CKPTD_TRY(Grow());  // only full-size buffers circulate
    AlignedBuffer next;
    {
      std::unique_lock lock(wmu_);
      wcv_.wait(lock, [&] { return !free_.empty() || allocated_ < WriteBuffers(); });
      if (!write_status_.ok()) return write_status_;
      if (!free_.empty()) {
        next = std::move(free_.back());
        free_.pop_back();
      }
    }
    const bool fresh = next == nullptr;
    if (fresh) next = AllocateAligned(kWriteBufferBytes);
    if (next == nullptr) {  // no memory for another buffer: write in line
      CKPTD_TRY(WaitWrite());
      CKPTD_TRY(PwriteAll(buf_.get(), used_, flushed_));
    } else {
      std::unique_lock lock(wmu_);
      if (fresh) allocated_++;
      const char* bytes = buf_.get();
      queue_.push_back(Job{std::move(buf_), bytes, used_, flushed_});
      StartWorkersLocked();
      wcv_.notify_all();
      buf_ = std::move(next);
    }
    flushed_ += used_;
    used_ = 0;
    return absl::OkStatus();
  }

  // A writer thread per queued or running write, up to WriteThreads().
  void StartWorkersLocked() {
    while (workers_.size() < WriteThreads() && workers_.size() < queue_.size() + in_flight_) {
      workers_.emplace_back([this] { WorkerLoop(); });
    }
  }

  // Waits for every queued write; the first error (sticky) if one failed.
  absl::Status WaitWrite() {
    std::unique_lock lock(wmu_);
    wcv_.wait(lock, [&] { return queue_.empty() && in_flight_ == 0; });
    return write_status_;
  }

  void WorkerLoop() {
    std::unique_lock lock(wmu_);
    while (true) {
      wcv_.wait(lock, [&] { return !queue_.empty() || stop_; });
      if (queue_.empty()) return;  // stop_, nothing pending
      Job job = std::move(queue_.front());
      queue_.pop_front();
      in_flight_++;
      lock.unlock();
      absl::Status st =
          write_status_ok_ ? PwriteAll(job.bytes, job.n, job.offset) : absl::OkStatus();
      lock.lock();
      in_flight_--;
      if (!st.ok() && write_status_.ok()) {
        write_status_ = st;
        write_status_ok_ = false;
      }
      if (job.buf != nullptr) free_.push_back(std::move(job.buf));
      wcv_.notify_all();
    }
  }

  void StopWorker() {
    {
      std::lock_guard lock(wmu_);
      stop_ = true;
    }
    wcv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  absl::Status PwriteAll(const char* p, size_t n, uint64_t offset) {
    while (n > 0) {
      ssize_t w = ::pwrite(fd_.get(), p, n, static_cast<off_t>(offset));
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EINVAL && direct_) {
          // Some filesystems accept O_DIRECT at open and refuse the I/O:
          // fall back to buffered writes for the rest of the file.
          if (::fcntl(fd_.get(), F_SETFL, ::fcntl(fd_.get(), F_GETFL) & ~O_DIRECT) == 0) {
            direct_ = false;
            continue;
          }
        }
        return PosixError(StrCat("write ", path_), errno);
      }
      p += w;
      n -= static_cast<size_t>(w);
      offset += static_cast<uint64_t>(w);
    }
    return absl::OkStatus();
  }

  absl::Status PreadAll(char* p, size_t n, uint64_t offset) {
    while (n > 0) {
      ssize_t r = ::pread(fd_.get(), p, n, static_cast<off_t>(offset));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return PosixError(StrCat("pread ", path_), errno);
      if (r == 0) {  // past the end: the rest of the block reads as zeros
        std::memset(p, 0, n);
        return absl::OkStatus();
      }
      p += r;
      n -= static_cast<size_t>(r);
      offset += static_cast<uint64_t>(r);
    }
    return absl::OkStatus();
  }

  std::string path_;
  ScopedFd fd_;
  std::atomic<bool> direct_;  // a writer thread may fall back to buffered
  AlignedBuffer buf_;         // being filled
  struct Job {
    AlignedBuffer buf;            // a full write buffer, or null for stable bytes
    const char* bytes = nullptr;  // what to write: buf's, or the caller's
    size_t n = 0;
    uint64_t offset = 0;
  };
  // std::mutex, not absl::Mutex: Debian's abseil is not built for TSan, so
  // `make test`'s ThreadSanitizer run could not see absl::Mutex's ordering.
  std::mutex wmu_;  // guards the fields below
  std::condition_variable wcv_;
  std::deque<Job> queue_;            // full buffers waiting for a writer
  std::vector<AlignedBuffer> free_;  // written buffers, ready to fill again
  size_t allocated_ = 1;             // buffers in existence, buf_ included
  size_t in_flight_ = 0;             // writes being performed
  bool stop_ = false;
  absl::Status write_status_;
  std::atomic<bool> write_status_ok_{true};  // once a write failed, later ones are skipped
  std::vector<std::thread> workers_;
  size_t capacity_ = kFirstWriteBufferBytes;  // of buf_: a multiple of the alignment
  size_t used_ = 0;                           // bytes in buf_, starting at file offset flushed_
  uint64_t flushed_ = 0;      // file offset of buf_[0]; always aligned under O_DIRECT
  uint64_t size_ = 0;         // logical file size
  uint64_t synced_size_ = 0;  // size_ at the last successful Sync
  uint64_t zero_copy_bytes_ = 0;
  uint64_t cloned_bytes_ = 0;  // shared by AppendClone
};

}  // namespace

absl::StatusOr<std::unique_ptr<WritableFile>> OpenPosixWritableFile(const std::string& path,
                                                                    DirectIo direct) {
  const int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;
  bool use_direct = direct == DirectIo::kAuto;
  int fd = use_direct ? ::open(path.c_str(), flags | O_DIRECT, 0644) : -1;
  if (use_direct && fd < 0 && errno == EINVAL) {
    use_direct = false;  // tmpfs and friends: no O_DIRECT
  } else if (use_direct && fd < 0) {
    return PosixError(StrCat("open ", path), errno);
  }
  if (!use_direct) {
    fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) return PosixError(StrCat("open ", path), errno);
  }
  AlignedBuffer buf = AllocateAligned(kFirstWriteBufferBytes);
  if (buf == nullptr) {
    ::close(fd);
    ::unlink(path.c_str());
    return absl::ResourceExhaustedError(StrCat("open ", path, ": no memory for a write buffer"));
  }
  return std::make_unique<PosixWritableFile>(path, ScopedFd(fd), use_direct, std::move(buf));
}

}  // namespace ckptd::env
