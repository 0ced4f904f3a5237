// What ckptd writes into and reads back from a checkpoint's header: the
// provenance key names (documented in the README) and the catalog record
// rebuilt from a committed file's header, without reading tensor data.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/gguf/reader.h"

namespace ckptd::storage {

inline constexpr std::string_view kKeyRole = "ckpt.role";  // "model" | "train"
inline constexpr std::string_view kKeyRunId = "ckpt.run_id";
inline constexpr std::string_view kKeyStep = "ckpt.step";
inline constexpr std::string_view kKeyTimeUtc = "ckpt.time_utc";
inline constexpr std::string_view kKeyDaemonVersion = "ckpt.daemon.version";
inline constexpr std::string_view kKeyDaemonHost = "ckpt.daemon.host";
inline constexpr std::string_view kKeyTransport = "ckpt.transport";
inline constexpr std::string_view kKeyClientPid = "ckpt.client.pid";
inline constexpr std::string_view kKeyParentUuid = "ckpt.parent_uuid";
inline constexpr std::string_view kKeyModelDigest = "ckpt.model_content_digest";  // train file
// 32 random hex digits, one per save, in the model file, its train file
// and its exports: ties them to one save (equal tensors at two steps give
// equal content digests; the save id never repeats).
inline constexpr std::string_view kKeySaveId = "ckpt.save_id";
// Model file: bytes of this step's model and training-state files that
// share their extents with the run's previous checkpoint (reflink: its
// unchanged tensors were not written again). Present when a previous
// checkpoint could be shared from; 0 when nothing was.
inline constexpr std::string_view kKeySharedBytes = "ckpt.shared_bytes";
inline constexpr std::string_view kMetricsPrefix = "ckpt.metrics.";
inline constexpr std::string_view kTrainerPrefix = "ckpt.trainer.";

// An export committed with a checkpoint (step_N.<name>.gguf).
struct ExportRecord {
  std::string name;
  std::string path;  // absolute
  uint64_t bytes = 0;
  std::string uuid;
  std::string profile;
  std::string base;  // an adapter's base export of the same step ("" if none)
  friend bool operator==(const ExportRecord&, const ExportRecord&) = default;
};

struct CheckpointRecord {
  uint64_t step = 0;
  std::string model_path;  // absolute
  std::string train_path;  // absolute, "" if none
  uint64_t model_bytes = 0;
  uint64_t train_bytes = 0;
  std::string uuid;
  std::string content_digest;
  std::string save_id;  // ckpt.save_id, "" in files written before it existed
  std::string time_utc;
  double time_s = 0;  // time_utc as seconds since the epoch (0 if absent)
  std::string parent_uuid;
  std::map<std::string, double> metrics;
  uint32_t tensor_count = 0;
  std::string base_model_uuid;        // general.base_model.0.uuid
  std::vector<ExportRecord> exports;  // by name
  // A multi-rank run's part (model_path is step_N-RRRRR-of-WWWWW.gguf):
  // this node's rank and the world size; 0 for a whole step.
  uint32_t rank = 0;
  uint32_t world_size = 0;
  uint64_t shared_bytes = 0;  // ckpt.shared_bytes
  uint64_t total_bytes() const;
};

// Fills uuid, digest, time, parent, metrics and tensor count from a model
// file's header.
void FillFromHeader(const gguf::Metadata& md, size_t tensor_count, CheckpointRecord* r);

// Reads step_N.gguf's header into a record (the caller pairs it with its
// train file); never reads tensor data. DATA_LOSS when the header is
// damaged (its metadata digest included), and when it is not step `step`'s
// model file: its ckpt.step or ckpt.role says otherwise.
absl::StatusOr<CheckpointRecord> ReadCheckpointRecord(env::Env* env, uint64_t step,
                                                      const std::string& model_path);

// Why the training-state file `train` (a parsed header) is not the one saved
// with `model`, or "" when it is: its ckpt.model_content_digest, ckpt.step
// and ckpt.save_id must all be the model file's (a file from before save ids
// has neither, and then the first two decide).
std::string TrainMismatch(const gguf::GgufFile& train, const CheckpointRecord& model);

// Every byte of one step's files checked, as a restore would: the model
// file's header (metadata digest, step, role), every tensor digest and its
// content digest; the train file (if any) the same and tied to the model
// file (TrainMismatch). DATA_LOSS naming the file and the check it failed.
absl::StatusOr<CheckpointRecord> VerifyStepFiles(env::Env* env, uint64_t step,
                                                 const std::string& model_path,
                                                 const std::string& train_path);

// A fresh ckpt.save_id: 128 random bits as 32 hex digits.
std::string NewSaveId();

// ckpt.step as a number, if present and an integer.
std::optional<uint64_t> StepValue(const gguf::Metadata& md);

// The string value of `key`, or "" when absent or not a string.
std::string StringValue(const gguf::Metadata& md, std::string_view key);

// Reads and parses a GGUF file's header.
absl::StatusOr<gguf::GgufFile> ReadGgufHeader(env::Env* env, const std::string& path);

}  // namespace ckptd::storage
