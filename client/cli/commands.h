// ckptctl subcommands. Exit codes: 0 ok, 1 the file or the operation failed
// (one line on stderr says why), 2 usage error.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace ckptd::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;

int Main(int argc, char** argv);

// "ckptctl: WHAT: message" on stderr; returns kExitFailed.
int Fail(const std::string& what, const absl::Status& st);

}  // namespace ckptd::cli
