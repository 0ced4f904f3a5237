// ckptctl subcommands. Exit codes: 0 ok, 1 the file or the operation failed
// (one line on stderr says why), 2 usage error.
#pragma once

namespace ckptd::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;

int Main(int argc, char** argv);

}  // namespace ckptd::cli
