// ckptd's lifecycle: command line, config, logging, roots, recovery, the
// gRPC server, signals (SIGTERM/SIGINT drain and exit 0, SIGHUP reloads
// policies) and sd_notify. main() only forwards here.
#pragma once

namespace ckptd::app {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;  // could not start (socket in use, ...)
inline constexpr int kExitConfig = 2;   // bad config or command line

int DaemonMain(int argc, char** argv);

}  // namespace ckptd::app
