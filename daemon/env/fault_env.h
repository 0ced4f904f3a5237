// A fault-injecting Env for tests: wraps another Env and, by a spec string,
// crashes the process before or after the Nth call of an operation, fails a
// call with an errno, runs out of space after N bytes, or slows calls down.
// The daemon installs it when CKPTD_TEST_FAULTS is set, so black-box tests
// can break each durability step of the real binary on purpose.
//
// Spec: ';'-separated rules, e.g. "crash_before=rename:2;delay=write:5"
//   crash_before=OP:N      _exit(kCrashExitCode) just before the Nth OP
//   crash_after=OP:N       _exit(kCrashExitCode) just after the Nth OP
//   fail=OP:N:ERRNO        the Nth OP fails with ERRNO (ENOSPC, EIO, ...)
//   enospc_after_bytes=N   writes past N bytes in total fail with ENOSPC
//   delay=OP:MS            every OP sleeps MS milliseconds first
// OP: open (new writable file), write, sync, close, rename, symlink,
//     syncdir, remove. Thread-safe.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"

namespace ckptd::env {

inline constexpr int kCrashExitCode = 86;

// Parses `spec` and wraps `base` (which must outlive the result).
absl::StatusOr<std::unique_ptr<Env>> NewFaultInjectionEnv(Env* base, const std::string& spec);

}  // namespace ckptd::env
