// Another process's memory, read with process_vm_readv (the pointer path:
// a trainer hands the daemon addresses in its own address space). Pinned to
// the process by a pidfd taken when it is opened: once that process has
// exited, every read fails, so a recycled pid is never read. Thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace ckptd::env {

class ProcessMemory {
 public:
  // NOT_FOUND when `pid` has already exited.
  static absl::StatusOr<std::unique_ptr<ProcessMemory>> Open(pid_t pid);
  ~ProcessMemory();
  ProcessMemory(const ProcessMemory&) = delete;
  ProcessMemory& operator=(const ProcessMemory&) = delete;

  pid_t pid() const { return pid_; }
  bool alive() const;
  // Reads exactly n bytes at `address` into dst. INVALID_ARGUMENT when the
  // range is not mapped readable in the process (EFAULT), PERMISSION_DENIED
  // when the kernel refuses (EPERM: another uid, Yama's ptrace_scope),
  // ABORTED when the process has exited. Never an I/O error.
  absl::Status Read(uint64_t address, size_t n, void* dst) const;

 private:
  ProcessMemory(pid_t pid, int pidfd) : pid_(pid), pidfd_(pidfd) {}
  pid_t pid_;
  int pidfd_;
};

}  // namespace ckptd::env
