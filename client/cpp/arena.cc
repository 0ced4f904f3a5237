// memfd arenas and the SCM_RIGHTS registration channel.
#include "ckptd/arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <thread>
#include <vector>

#include "daemon/env/fd_passing.h"

namespace ckptd {
namespace {

absl::Status Errno(const std::string& what, int err) {
  return absl::Status(err == ENOMEM || err == ENOSPC ? absl::StatusCode::kResourceExhausted
                                                     : absl::StatusCode::kUnavailable,
                      what + ": " + std::strerror(err));
}

absl::StatusCode CodeNamed(std::string_view name) {
  for (int c = 0; c <= 16; ++c) {
    auto code = static_cast<absl::StatusCode>(c);
    if (absl::StatusCodeToString(code) == name) return code;
  }
  return absl::StatusCode::kUnknown;
}

// Faults every page in for writing, in parallel: first-touch faults run at
// ~0.5 GB/s per thread here (the cost is per page, not per byte), so the
// copies into the arena later never pay them. MADV_POPULATE_WRITE (Linux
// 5.14) where available, one written byte per page otherwise.
absl::Status Populate(char* base, size_t bytes) {
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, absent from older headers
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
  const size_t slice = (bytes / threads + page - 1) / page * page;
  std::vector<int> errors(threads, 0);
  auto work = [&](size_t k) {
    char* from = base + std::min(bytes, k * slice);
    const size_t n = std::min(slice, bytes - static_cast<size_t>(from - base));
    if (n == 0) return;
    if (::madvise(from, n, kPopulateWrite) == 0) return;
    if (errno != EINVAL) {
      errors[k] = errno;
      return;
    }
    for (size_t at = 0; at < n; at += page) from[at] = 0;  // pre-5.14 kernels
  };
  std::vector<std::thread> helpers;
  for (size_t k = 1; k < threads; ++k) helpers.emplace_back(work, k);
  work(0);
  for (auto& t : helpers) t.join();
  for (int e : errors) {
    if (e != 0) return Errno("populate memfd arena", e);
  }
  return absl::OkStatus();
}

constexpr size_t kHugePage = 2 << 20;

// Free 2 MiB hugetlb pages (HugePages_Free in /proc/meminfo when the
// default huge page size is 2 MiB); 0 when there are none or it is unknown.
size_t FreeHugePages() {
  FILE* f = std::fopen("/proc/meminfo", "re");
  if (f == nullptr) return 0;
  char line[128];
  size_t free = 0, size_kb = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    (void)std::sscanf(line, "HugePages_Free: %zu", &free);
    (void)std::sscanf(line, "Hugepagesize: %zu kB", &size_kb);
  }
  std::fclose(f);
  return size_kb * 1024 == kHugePage ? free : 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Arena>> Arena::Create(size_t bytes, const std::string& name) {
  if (bytes == 0) return absl::InvalidArgumentError("an arena needs at least one byte");
  // A hugetlb arena when the pages are there; any failure on the way (taken
  // meanwhile by another process) falls back to a normal memfd.
  if (bytes % kHugePage == 0 && FreeHugePages() >= bytes / kHugePage) {
    auto arena = CreateWith(bytes, name, /*hugetlb=*/true);
    if (arena.ok()) return arena;
  }
  return CreateWith(bytes, name, /*hugetlb=*/false);
}

absl::StatusOr<std::unique_ptr<Arena>> Arena::CreateWith(size_t bytes, const std::string& name,
                                                         bool hugetlb) {
  int fd =
      ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugetlb ? MFD_HUGETLB : 0));
  if (fd < 0) return Errno("memfd_create", errno);
  auto fail = [fd](absl::Status st) {
    ::close(fd);
    return st;
  };
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) return fail(Errno("ftruncate memfd", errno));
  if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return fail(Errno("seal memfd", errno));
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail(Errno("mmap memfd", errno));
  if (!hugetlb) (void)::madvise(p, bytes, MADV_HUGEPAGE);  // a no-op where shmem THP is off
  auto arena = std::unique_ptr<Arena>(new Arena(fd, static_cast<char*>(p), bytes, hugetlb));
  if (absl::Status st = Populate(arena->data_, bytes); !st.ok()) return st;
  return arena;
}

Arena::~Arena() {
  ::munmap(data_, size_);
  ::close(fd_);
}

absl::StatusOr<std::unique_ptr<ArenaChannel>> ArenaChannel::Connect(
    const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError("arena socket path '" + socket_path + "' is unusable");
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket", errno);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    absl::Status st = Errno("connect " + socket_path, errno);
    ::close(fd);
    return st;
  }
  return std::unique_ptr<ArenaChannel>(new ArenaChannel(fd));
}

ArenaChannel::~ArenaChannel() { ::close(fd_); }

namespace {

absl::StatusOr<uint64_t> ParseId(const std::vector<std::string>& words) {
  uint64_t id = 0;
  if (words.empty() || words[0].empty()) return absl::InternalError("bad arena reply: no id");
  for (char c : words[0]) {
    if (c < '0' || c > '9') return absl::InternalError("bad arena reply: id " + words[0]);
    id = id * 10 + static_cast<uint64_t>(c - '0');
  }
  return id;
}

}  // namespace

absl::StatusOr<uint64_t> ArenaChannel::Register(int fd, const std::string& token) {
  auto words = Exchange("REGISTER " + token, fd);
  if (!words.ok()) return words.status();
  return ParseId(*words);
}

absl::StatusOr<PointerAttachment> ArenaChannel::Attach(const std::string& token) {
  // Under Yama's ptrace_scope 1 the daemon may read only processes that
  // name it as their tracer; without Yama this fails harmlessly.
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd_, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0) {
    (void)::prctl(PR_SET_PTRACER, static_cast<unsigned long>(cred.pid), 0, 0, 0);
  }
  static const char kProbe[64] = "ckptd pointer-save probe";
  auto words =
      Exchange("ATTACH " + token + " " + std::to_string(reinterpret_cast<uintptr_t>(kProbe)) + " " +
                   std::to_string(sizeof kProbe),
               -1);
  if (!words.ok()) return words.status();
  auto id = ParseId(*words);
  if (!id.ok()) return id.status();
  if (words->size() < 3) return absl::InternalError("bad attach reply: no key");
  return PointerAttachment{*id, (*words)[2]};
}

absl::StatusOr<std::pair<int, uint64_t>> ArenaChannel::OpenInMemoryCopy(const std::string& run_id,
                                                                        uint64_t step,
                                                                        const std::string& key) {
  int fd = -1;
  auto words = Exchange("HOT " + run_id + " " + std::to_string(step) + " " + key, -1, &fd);
  if (!words.ok()) return words.status();
  auto size = ParseId(*words);
  if (!size.ok() || fd < 0) {
    if (fd >= 0) ::close(fd);
    return absl::InternalError("bad HOT reply: no size or no fd");
  }
  return std::pair(fd, *size);
}

absl::StatusOr<std::vector<std::string>> ArenaChannel::Exchange(const std::string& request, int fd,
                                                                int* received_fd) {
  if (absl::Status st = env::SendWithFd(fd_, request, fd); !st.ok()) {
    return absl::UnavailableError("send to the arena socket: " + std::string(st.message()));
  }
  char reply[1024];
  iovec riov{reply, sizeof reply};
  alignas(cmsghdr) char rcontrol[CMSG_SPACE(sizeof(int))] = {};
  msghdr rmsg{};
  rmsg.msg_iov = &riov;
  rmsg.msg_iovlen = 1;
  rmsg.msg_control = rcontrol;
  rmsg.msg_controllen = sizeof rcontrol;
  ssize_t n;
  do {
    n = ::recvmsg(fd_, &rmsg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Errno("read from the arena socket", errno);
  for (cmsghdr* h = CMSG_FIRSTHDR(&rmsg); h != nullptr; h = CMSG_NXTHDR(&rmsg, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    int got = -1;
    std::memcpy(&got, CMSG_DATA(h), sizeof got);
    if (received_fd != nullptr && *received_fd < 0) {
      *received_fd = got;
    } else {
      ::close(got);  // nobody asked for it
    }
  }
  if (n == 0) return absl::UnavailableError("the daemon closed the arena socket");
  std::string_view r(reply, static_cast<size_t>(n));
  if (r.starts_with("OK ")) {
    std::vector<std::string> words;
    std::string word;
    for (char c : r.substr(3)) {
      if (c == ' ') {
        words.push_back(std::move(word));
        word.clear();
      } else {
        word += c;
      }
    }
    words.push_back(std::move(word));
    return words;
  }
  if (r.starts_with("ERR ")) {
    r.remove_prefix(4);
    size_t space = r.find(' ');
    std::string_view code = r.substr(0, space);
    std::string_view message = space == std::string_view::npos ? "" : r.substr(space + 1);
    return absl::Status(CodeNamed(code), "arena refused: " + std::string(message));
  }
  return absl::InternalError("bad arena reply: " + std::string(r));
}

}  // namespace ckptd
