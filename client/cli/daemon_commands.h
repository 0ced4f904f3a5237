// ckptctl subcommands that talk to a running daemon: runs, ls, latest,
// show, import, pin, retention, restore-check, lineage. Each prints a table, or with --json the
// API's own messages in protobuf's JSON mapping.
#pragma once

#include <grpcpp/support/status.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace CLI {
class App;
}

namespace ckptd {
class Client;
}

namespace ckptd::cli {

struct DaemonCommandArgs {
  std::string socket;    // unix:PATH, PATH or HOST:PORT
  std::string tls_ca;    // TLS: the CA that signed the daemon's certificate
  std::string tls_cert;  // TLS: this client's certificate and key (mTLS)
  std::string tls_key;
  std::string token_file;  // a bearer token (server.tokens_file)
  bool json = false;
  std::string run;
  uint64_t step = 0;
  std::string file;
  std::vector<std::string> metrics;  // k=v
  std::string reason;                // pin
  int64_t restore_step = -1;         // restore-check: -1 = latest
  bool no_memory = false;            // restore-check: disk even when the daemon holds it in memory
  bool no_verify = false;            // restore-check
  int reads_in_flight = 0;           // restore-check: 0 = RestoreOptions' default
  int chunk_mib = 0;                 // restore-check: 0 = RestoreOptions' default
  std::string attempt;               // restore-check: a multi-rank run's restart id
  std::string base_model;            // import: general.base_model.0.uuid
  std::vector<std::string> exports;  // import: profile names or .toml paths
  bool overwrite = false;            // import: replace an existing step
  bool remote = false;               // retention plan/apply, ls: the object store's copies
};

// One subcommand and what runs when it was chosen.
struct DaemonCommand {
  CLI::App* sub;
  std::function<int(Client&, const DaemonCommandArgs&)> run;
};

// Adds the subcommands to `app` (`*args` receives their options) and returns
// the table. After parsing, RunDaemonCommand runs the chosen one (nullopt:
// none of these was chosen).
std::vector<DaemonCommand> AddDaemonCommands(CLI::App* app, DaemonCommandArgs* args);
// A client of the daemon at --socket (default $CKPTD_SOCKET, else
// ./ckpt-runs/ckptd.sock) with the TLS and token flags given.
absl::StatusOr<std::unique_ptr<Client>> ConnectDaemon(const DaemonCommandArgs& args);
std::string DaemonSocket(const DaemonCommandArgs& args);
// Prints why a daemon call failed (ckptctl's words); returns the exit code.
int Fail(const std::string& what, const grpc::Status& st);

std::optional<int> RunDaemonCommand(const std::vector<DaemonCommand>& table,
                                    const DaemonCommandArgs& args);

}  // namespace ckptd::cli
