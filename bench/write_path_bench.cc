// write_path_bench DIR BYTES ROUNDS: the daemon's write submission, A/B.
// Writes BYTES from a populated memfd arena (advised MADV_HUGEPAGE, as the
// clients' arenas are) to a new O_DIRECT file in DIR in 4 MiB pieces, then
// fdatasyncs, the way a zero-copy shm save does, with each submission
// scheme in turn, ROUNDS times interleaved (the disk drifts within a
// minute), and prints JSON: per scheme the median MB/s (call to durable)
// and the CPU seconds per GiB (getrusage, this process: submission,
// completion and page pinning, not the disk).
//   threads:N      N threads each pwrite()ing the next piece (ckptd's
//                  PosixWritableFile: 2 threads)
//   uring:D        one thread, io_uring with D writes in flight
//   uring-fixed:D  the same with the arena registered (fixed buffer) and
//                  the file registered (fixed file)
// An io_uring scheme the kernel refuses reports {"error": ...} instead.
#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kPiece = 4 << 20;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double CpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

struct Scheme {
  std::string name;
  bool uring = false;
  bool fixed = false;
  int depth = 2;  // threads, or writes in flight
  std::vector<double> mbps, cpu_per_gib;
  std::string error;
};

// Returns an empty string, or what failed.
std::string WriteThreads(int fd, const char* src, size_t bytes, int threads) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  auto work = [&] {
    for (size_t at = next.fetch_add(kPiece); at < bytes; at = next.fetch_add(kPiece)) {
      const size_t n = std::min(kPiece, bytes - at);
      if (::pwrite(fd, src + at, n, static_cast<off_t>(at)) != static_cast<ssize_t>(n)) {
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return failed ? "pwrite failed" : "";
}

std::string WriteUring(int fd, const char* src, size_t bytes, int depth, bool fixed) {
  io_uring ring{};
  if (int r = io_uring_queue_init(static_cast<unsigned>(depth), &ring, 0); r < 0) {
    return std::string("io_uring_queue_init: ") + std::strerror(-r);
  }
  std::string error;
  iovec arena{const_cast<char*>(src), bytes};
  int file = fd;
  if (fixed) {
    if (int r = io_uring_register_buffers(&ring, &arena, 1); r < 0) {
      error = std::string("io_uring_register_buffers: ") + std::strerror(-r);
    } else if (int f = io_uring_register_files(&ring, &fd, 1); f < 0) {
      error = std::string("io_uring_register_files: ") + std::strerror(-f);
    }
    file = 0;
  }
  size_t submitted = 0, completed = 0;
  const size_t pieces = (bytes + kPiece - 1) / kPiece;
  while (error.empty() && completed < pieces) {
    while (submitted < pieces && submitted - completed < static_cast<size_t>(depth)) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      const size_t at = submitted * kPiece;
      const unsigned n = static_cast<unsigned>(std::min(kPiece, bytes - at));
      if (fixed) {
        io_uring_prep_write_fixed(sqe, file, src + at, n, at, 0);
        sqe->flags |= IOSQE_FIXED_FILE;
      } else {
        io_uring_prep_write(sqe, file, src + at, n, at);
      }
      ++submitted;
    }
    io_uring_submit(&ring);
    io_uring_cqe* cqe = nullptr;
    if (int r = io_uring_wait_cqe(&ring, &cqe); r < 0) {
      error = std::string("io_uring_wait_cqe: ") + std::strerror(-r);
      break;
    }
    if (cqe->res < 0) error = std::string("write: ") + std::strerror(-cqe->res);
    io_uring_cqe_seen(&ring, cqe);
    ++completed;
  }
  io_uring_queue_exit(&ring);
  return error;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s DIR BYTES ROUNDS\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const size_t bytes = std::stoull(argv[2]) / kPiece * kPiece;
  const int rounds = std::stoi(argv[3]);
  int mfd = ::memfd_create("write-path-bench", MFD_CLOEXEC);
  if (mfd < 0 || ::ftruncate(mfd, static_cast<off_t>(bytes)) != 0) return 1;
  auto* arena =
      static_cast<char*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0));
  if (arena == MAP_FAILED) return 1;
  (void)::madvise(arena, bytes, MADV_HUGEPAGE);
  for (size_t i = 0; i < bytes; i += 4096) arena[i] = static_cast<char>(i >> 12);

  std::vector<Scheme> schemes = {
      {.name = "threads:1", .depth = 1},
      {.name = "threads:2", .depth = 2},
      {.name = "threads:4", .depth = 4},
      {.name = "uring:8", .uring = true, .depth = 8},
      {.name = "uring:16", .uring = true, .depth = 16},
      {.name = "uring-fixed:8", .uring = true, .fixed = true, .depth = 8}};
  int file_no = 0;
  for (int r = 0; r < rounds; ++r) {
    for (Scheme& s : schemes) {
      if (!s.error.empty()) continue;
      const std::string path = dir + "/write-path-" + std::to_string(file_no++) + ".tmp";
      int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0644);
      if (fd < 0) {
        std::fprintf(stderr, "open %s: %s\n", path.c_str(), std::strerror(errno));
        return 1;
      }
      const double cpu0 = CpuSeconds();
      const double t0 = Now();
      std::string error = s.uring ? WriteUring(fd, arena, bytes, s.depth, s.fixed)
                                  : WriteThreads(fd, arena, bytes, s.depth);
      if (error.empty() && ::fdatasync(fd) != 0) error = "fdatasync failed";
      const double seconds = Now() - t0;
      const double cpu = CpuSeconds() - cpu0;
      ::close(fd);
      // Kept until the end (see run_bench.py: a deletion's discard slows the next writer).
      if (!error.empty()) {
        s.error = error;
        continue;
      }
      s.mbps.push_back(static_cast<double>(bytes) / seconds / 1e6);
      s.cpu_per_gib.push_back(cpu / (static_cast<double>(bytes) / (1 << 30)));
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("{");
  for (size_t i = 0; i < schemes.size(); ++i) {
    const Scheme& s = schemes[i];
    std::printf("%s\"%s\": ", i ? ", " : "", s.name.c_str());
    if (!s.error.empty() || s.mbps.empty()) {
      std::printf("{\"error\": \"%s\"}", s.error.c_str());
    } else {
      std::printf("{\"MBps\": %.1f, \"cpu_s_per_GiB\": %.4f}", median(s.mbps),
                  median(s.cpu_per_gib));
    }
  }
  std::printf("}\n");
  for (int i = 0; i < file_no; ++i) {
    ::unlink((dir + "/write-path-" + std::to_string(i) + ".tmp").c_str());
  }
  return 0;
}
