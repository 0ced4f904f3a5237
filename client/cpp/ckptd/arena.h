// Shared-memory arenas for the shm path, trainer side. An Arena is a memfd
// sized once, sealed against shrinking and growing (the daemon refuses
// unsealed ones), mapped read-write and populated up front by several
// threads, so copies into it never pay first-touch page faults.
// Huge pages where the host offers them: a hugetlb memfd (MFD_HUGETLB)
// when enough 2 MiB pages are reserved and free (vm.nr_hugepages), else a
// normal one advised MADV_HUGEPAGE, which the kernel honours when
// /sys/kernel/mm/transparent_hugepage/shmem_enabled is advise, within_size
// or always. On a paravirtualized VM a 4 KiB page costs a hypervisor fault
// on first touch (~1 s per GiB here); a 2 MiB page costs 512x fewer. An ArenaChannel is a
// connection to the daemon's arena socket; arenas registered over it stay registered until it
// closes (or the process dies), after which the daemon keeps only what queued saves still need.
// Both are move-only RAII owners; not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ckptd {

class Arena {
 public:
  static absl::StatusOr<std::unique_ptr<Arena>> Create(size_t bytes,
                                                       const std::string& name = "ckptd-arena");
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  char* data() const { return data_; }
  size_t size() const { return size_; }
  int fd() const { return fd_; }
  // The memfd is a hugetlb one (else huge pages are only advised).
  bool hugetlb() const { return hugetlb_; }

 private:
  Arena(int fd, char* data, size_t size, bool hugetlb)
      : fd_(fd), data_(data), size_(size), hugetlb_(hugetlb) {}
  static absl::StatusOr<std::unique_ptr<Arena>> CreateWith(size_t bytes, const std::string& name,
                                                           bool hugetlb);
  int fd_;
  char* data_;
  size_t size_;
  bool hugetlb_;
};

// What ATTACH returns: the id and key a SavePointers names.
struct PointerAttachment {
  uint64_t id = 0;
  std::string key;
};

class ArenaChannel {
 public:
  // `socket_path`: OpenRunResponse.arena_socket.
  static absl::StatusOr<std::unique_ptr<ArenaChannel>> Connect(const std::string& socket_path);
  ~ArenaChannel();
  ArenaChannel(const ArenaChannel&) = delete;
  ArenaChannel& operator=(const ArenaChannel&) = delete;

  // Sends `fd` (any fd: the daemon judges it) with the run's token; returns
  // the arena id for TensorLocation. The daemon's refusal comes back with its
  // status code and message.
  absl::StatusOr<uint64_t> Register(int fd, const std::string& token);
  // Attaches this process for pointer saves: the daemon may then read the
  // tensors a SavePointers names from this process's memory while this
  // channel stays open. PERMISSION_DENIED (with the setting to change)
  // where the daemon may not read it.
  absl::StatusOr<PointerAttachment> Attach(const std::string& token);
  // Hot restore: a read-only fd (the caller closes it) of the daemon's
  // in-memory copy of `step` of the run, and its size. `key` is GetRun's
  // in_memory.key. NOT_FOUND when the daemon keeps no copy of that step;
  // PERMISSION_DENIED for a wrong key.
  absl::StatusOr<std::pair<int, uint64_t>> OpenInMemoryCopy(const std::string& run_id,
                                                            uint64_t step, const std::string& key);

 private:
  // One request datagram (with `fd` attached when >= 0), one reply: the
  // words after "OK", or the daemon's error.
  // A reply's fd, if any, goes to *received_fd (closed when not asked for).
  absl::StatusOr<std::vector<std::string>> Exchange(const std::string& request, int fd,
                                                    int* received_fd = nullptr);
  explicit ArenaChannel(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace ckptd
