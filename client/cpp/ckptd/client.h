// C++ client of the ckptd daemon. A Client is a connection (Unix socket by
// default); a Run is one training run opened through it. Tensors are views
// of host memory the caller keeps alive for the duration of a call. All
// methods block and are thread-compatible (one Run per trainer thread).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/arena.h"
#include "ckptd/v1/ckptd.grpc.pb.h"

namespace ckptd {

// One tensor as (name, type, GGUF dims, bytes). `ne` is in GGUF order
// (fastest-varying first): a row-major shape (out, in) is ne = {in, out}.
struct TensorView {
  std::string name;
  v1::TensorType type = v1::TENSOR_TYPE_F32;
  std::vector<uint64_t> ne;
  const void* data = nullptr;
  size_t bytes = 0;
  v1::TensorGroup group = v1::TENSOR_GROUP_MODEL;
};

struct SaveOptions {
  bool force = false;      // save even when the schedule says not due
  bool overwrite = false;  // replace an existing step / roll back
  std::vector<v1::MetadataEntry> train_metadata;
  // Data message size: the daemon holds a few messages per stream in flight,
  // so 1 MiB keeps its memory at ~50 MiB; 2 and 4 MiB were not faster on
  // 2 cores (ARCHITECTURE.md, "The stream path").
  size_t chunk_bytes = 1 << 20;
};

class Run;

struct ClientOptions {
  // A daemon that restarts or is briefly unreachable does not fail a call:
  // the call reconnects, reopens its run (with the request it was opened
  // with) and is sent again, for up to this long; after that it fails with
  // UNAVAILABLE naming the daemon and the last error. OpenRun waits the
  // same way when the daemon's Unix socket exists (a daemon starting,
  // restarting or too busy to answer yet); with no socket it fails at once.
  // 0 = fail at once.
  double reconnect_timeout_s = 60;
  // TLS, for a daemon serving HOST:PORT with server.tls_cert: on when any
  // of these is set. `tls_ca_file`: the PEM CA bundle that signed the
  // daemon's certificate ("" = the system's roots); `tls_cert_file` and
  // `tls_key_file`: this client's certificate and key, for a daemon that
  // requires one (server.tls_client_ca).
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // A bearer token, for a daemon with server.tokens_file; sent only over TLS.
  std::string token;
};

class Client {
 public:
  // `target`: "unix:/path", "host:port", or a plain path (taken as a Unix socket).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target,
                                                         ClientOptions options = {});

  absl::StatusOr<std::unique_ptr<Run>> OpenRun(const v1::OpenRunRequest& request);
  // The server's stub, for calls the helpers do not wrap.
  v1::Checkpointd::Stub& stub() { return *stub_; }
  grpc::Channel* channel() { return channel_.get(); }
  const std::string& target() const { return target_; }
  const ClientOptions& options() const { return options_; }
  // Waits until the connection is up (or `deadline`, steady clock seconds).
  bool WaitForConnected(double deadline);
  // Where the target is a Unix socket whose file exists, a daemon is there,
  // perhaps starting, restarting or too busy to accept yet: waits for the
  // connection until `deadline` (steady clock seconds). Elsewhere (no
  // socket file: no daemon; a TCP target) it returns false at once.
  bool WaitForDaemon(double deadline);
  bool DaemonSocketExists() const;

 private:
  Client(std::string target, ClientOptions options, std::shared_ptr<grpc::Channel> channel);
  std::string target_;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Checkpointd::Stub> stub_;
};

// Every call survives a daemon restart (see ClientOptions): ShouldSave,
// Save and Close are sent again after the run is reopened. A Save whose
// outcome was lost with the connection is sent again too; if the daemon
// had committed it, the step is found committed with the same tensors
// (names, types, shapes) and reported COMMITTED. SaveShared and
// SavePointers are not sent again by themselves (their arena ids and
// attachments die with the daemon): the Checkpointer re-registers and resends.
class Run {
 public:
  // `request`: what the run was opened with, for reopening it; without one
  // (a run opened elsewhere) an OpenRun with just the run id is sent.
  Run(Client* client, v1::OpenRunResponse opened, v1::OpenRunRequest request = {});

  const std::string& id() const { return opened_.run().run_id(); }
  const v1::OpenRunResponse& opened() const { return opened_; }

  absl::StatusOr<v1::ShouldSaveResponse> ShouldSave(uint64_t step);
  // Streams the tensors; unless options.force, asks ShouldSave first and
  // returns a SKIPPED response without sending data when the step is not due.
  absl::StatusOr<v1::SaveResponse> Save(uint64_t step, const std::vector<TensorView>& tensors,
                                        const std::map<std::string, double>& metrics = {},
                                        const SaveOptions& options = {});
  // Writes the final snapshot (if tensors are given) and marks the run finished.
  absl::StatusOr<v1::CloseRunResponse> Close(uint64_t step = 0,
                                             const std::vector<TensorView>& tensors = {},
                                             const std::map<std::string, double>& metrics = {});
  // Shared-memory save: `tensors` describe the tensors (their data pointers
  // are not read); `locations` say where each one's bytes lie in registered
  // arenas. Returns once the daemon has queued it; see WaitSaved.
  absl::StatusOr<v1::SaveSharedResponse> SaveShared(
      uint64_t step, const std::vector<TensorView>& tensors,
      const std::vector<v1::TensorLocation>& locations,
      const std::map<std::string, double>& metrics = {}, const SaveOptions& options = {},
      double trainer_stall_s = 0, const v1::TensorLocation* progress = nullptr,
      bool final_snapshot = false);
  // Pointer save: the daemon reads each tensor's bytes (TensorView::data)
  // straight from this process's memory through the attachment
  // (ArenaChannel::Attach). Returns once every byte has been read: the
  // tensors must not change until then (that is the trainer's stall); the
  // commit continues, and WaitSaved(save_id) reports it.
  absl::StatusOr<v1::SaveSharedResponse> SavePointers(
      uint64_t step, const std::vector<TensorView>& tensors, const PointerAttachment& attachment,
      const std::map<std::string, double>& metrics = {}, const SaveOptions& options = {},
      bool final_snapshot = false);
  // A queued (shared-memory or pointer) save's state, waiting up to timeout_s for it to finish;
  // trainer_stall_s > 0 reports the save's stall (once per save).
  // `step`: the save's step, so that a daemon restarted since can tell
  // whether it committed (COMMITTED from its catalog, else NOT_FOUND).
  absl::StatusOr<v1::WaitSavedResponse> WaitSaved(uint64_t save_id, double timeout_s,
                                                  double trainer_stall_s = 0,
                                                  std::optional<uint64_t> step = std::nullopt);
  Client* client() const { return client_; }
  // Path and step of the newest committed checkpoint, nullopt if none.
  absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>> Latest();

  // Reconnects and reopens the run after `cause` (UNAVAILABLE, or a daemon
  // that no longer knows the run), retrying until `deadline` (steady clock
  // seconds); UNAVAILABLE naming the daemon and `cause` past it.
  absl::Status Reopen(const absl::Status& cause, double deadline);
  // Whether `st` means the daemon restarted or is unreachable, so that
  // Reopen and a retry can help.
  static bool IsReconnectable(const absl::Status& st);
  // Bumped by every Reopen: arena ids and attachments of an older
  // generation are unknown to the daemon.
  uint64_t generation() const { return generation_; }

 private:
  // Runs `call` and, while it fails reconnectably, reopens and runs it again.
  template <typename F>
  auto WithReconnect(F call) -> decltype(call(0));

  Client* client_;
  v1::OpenRunResponse opened_;
  v1::OpenRunRequest request_;
  uint64_t generation_ = 0;
};

// grpc::Status -> absl::Status (same codes).
absl::Status FromGrpc(const grpc::Status& st);

// Sends one Save/CloseRun stream of protobuf messages: header, then every
// tensor's bytes in chunks (tests; Run sends the same messages raw, from the
// caller's memory without a copy).
template <typename Writer>
bool StreamTensors(Writer* writer, const v1::SaveHeader& header,
                   const std::vector<TensorView>& tensors, size_t chunk_bytes);

}  // namespace ckptd
