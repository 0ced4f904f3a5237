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
#include "ckptd/v1/ckptd.grpc.pb.h"
#include "client/cpp/ckptd/arena.h"

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

class Client {
 public:
  // `target`: "unix:/path", "host:port", or a plain path (taken as a Unix socket).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target);

  absl::StatusOr<std::unique_ptr<Run>> OpenRun(const v1::OpenRunRequest& request);
  // The server's stub, for calls the helpers do not wrap.
  v1::Checkpointd::Stub& stub() { return *stub_; }
  const std::string& target() const { return target_; }

 private:
  Client(std::string target, std::shared_ptr<grpc::Channel> channel);
  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Checkpointd::Stub> stub_;
};

class Run {
 public:
  Run(Client* client, v1::OpenRunResponse opened) : client_(client), opened_(std::move(opened)) {}

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
  absl::StatusOr<v1::WaitSavedResponse> WaitSaved(uint64_t save_id, double timeout_s,
                                                  double trainer_stall_s = 0);
  Client* client() const { return client_; }
  // Path and step of the newest committed checkpoint, nullopt if none.
  absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>> Latest();

 private:
  Client* client_;
  v1::OpenRunResponse opened_;
};

// grpc::Status -> absl::Status (same codes).
absl::Status FromGrpc(const grpc::Status& st);

// Sends one Save/CloseRun stream: header, then every tensor's bytes in chunks.
template <typename Writer>
bool StreamTensors(Writer* writer, const v1::SaveHeader& header,
                   const std::vector<TensorView>& tensors, size_t chunk_bytes);

}  // namespace ckptd
