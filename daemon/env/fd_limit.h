// The process's open-file limit: a daemon that holds trainers' connections,
// arenas and checkpoint files raises its soft limit to the hard one at start
// (systemd's default soft limit is 1024), and sizes its connection caps from
// what it got, keeping a reserve for checkpoint files.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace ckptd::env {

struct FdLimit {
  uint64_t before = 0;  // the soft limit found
  uint64_t soft = 0;    // the soft limit now (the hard limit, if raising worked)
};

// Raises RLIMIT_NOFILE's soft limit to its hard limit.
absl::StatusOr<FdLimit> RaiseOpenFileLimit();

// File descriptors kept free of connections for checkpoint and state files,
// listeners and the runtime's own.
inline constexpr uint64_t kFdReserve = 256;

// A connection cap under `soft`: a quarter of what the reserve leaves, at
// least 16 and at most `max`.
uint64_t ConnectionCap(uint64_t soft, uint64_t max);

}  // namespace ckptd::env
