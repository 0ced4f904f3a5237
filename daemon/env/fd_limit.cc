// RLIMIT_NOFILE.
#include "daemon/env/fd_limit.h"

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>

#include "daemon/env/posix_error.h"

namespace ckptd::env {

absl::StatusOr<FdLimit> RaiseOpenFileLimit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return SystemError("getrlimit(RLIMIT_NOFILE)", errno);
  FdLimit out{.before = lim.rlim_cur, .soft = lim.rlim_cur};
  if (lim.rlim_cur >= lim.rlim_max) return out;
  lim.rlim_cur = lim.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) return SystemError("setrlimit(RLIMIT_NOFILE)", errno);
  out.soft = lim.rlim_cur;
  return out;
}

uint64_t ConnectionCap(uint64_t soft, uint64_t max) {
  const uint64_t usable = soft > kFdReserve ? soft - kFdReserve : 0;
  return std::clamp<uint64_t>(usable / 4, 16, max);
}

}  // namespace ckptd::env
