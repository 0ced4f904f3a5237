// Runs the real ckptd binary for black-box tests: a temp root, a Unix socket
// inside it, stderr captured to a log file, readiness by polling the API.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckptd/client.h"

namespace ckptd::testing {

// A whole file's bytes (empty when it cannot be read).
std::string Slurp(const std::string& path);

struct DaemonOptions {
  std::string root;                        // --root
  std::vector<std::string> extra_args;     // e.g. {"--config", path}
  std::map<std::string, std::string> env;  // e.g. CKPTD_TEST_FAULTS
  std::string listen;                      // default: unix:<root>/ckptd.sock
  std::string log;                         // stderr; default: <root>/../ckptd-PID.log
  // RLIMIT_NOFILE (soft, hard) for the daemon; default: the test's own.
  std::optional<std::pair<uint64_t, uint64_t>> nofile;
};

class DaemonProcess {
 public:
  explicit DaemonProcess(DaemonOptions options);
  ~DaemonProcess();  // SIGKILLs a daemon still running

  // Starts the binary and waits (up to 20 s) until it answers ListRuns.
  void Start();
  // Sends `sig` and waits; returns the exit code, or 128 + signal.
  int Stop(int sig);
  // Waits for exit; returns the exit code, or 128 + signal.
  int Wait();
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  const std::string& socket() const { return socket_; }
  const std::string& target() const { return target_; }
  std::unique_ptr<Client> Connect(ClientOptions options = {}) const;
  std::string Log() const;
  // From /proc/PID/status: VmHWM (peak RSS) and the number of open fds.
  uint64_t PeakRssBytes() const;
  // The HTTP port the daemon logged ("http: listening on HOST:PORT").
  int HttpPort() const;
  int OpenFds() const;

 private:
  DaemonOptions options_;
  std::string socket_;
  std::string target_;
  std::string log_;
  pid_t pid_ = -1;
};

// Runs a binary to completion, returning its exit code and output.
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env = {});

// A minimal HTTP/1.1 GET on 127.0.0.1 (Connection: close).
struct HttpResponse {
  int status = 0;
  std::string content_type;
  std::string body;
};
HttpResponse HttpGet(int port, const std::string& target);

}  // namespace ckptd::testing
