// The tier's records, typed: each has one writer (ToJson) and one parser
// (Parse), both here. Every record carries `"format": 1`; a record without
// one is from before versions (read as 1), a higher one was written by a
// newer ckptd and is refused (FAILED_PRECONDITION: upgrade). Fields this
// version does not know are kept (`unknown`) and written back unchanged, so
// a newer ckptd's additions survive an older one's rewrite. A record that
// does not parse is DATA_LOSS naming where it was read from.
//
//   StepManifest  <run>/step_N.manifest.json: a step in the store (its files,
//                 and for a multi-rank step every rank's part)
//   PartReport    <run>/parts/step_N/rank-R.json: one rank's part is uploaded
//   FailedStep    <run>/step_N.failed.json: the coordinator aborted the step
//   LatestRecord  <run>/latest: the newest step's manifest
//   RestoreReport <run>/restores/<attempt>/rank-R.json: the steps one rank
//                 can restore its part of, once per restart
//   UploadState   <run_dir>/ckptd-uploads.json on the node: uploads in
//                 progress (multipart ids, parts done) and steps uploaded
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/policy/step_commit.h"

namespace ckptd::tier {

inline constexpr int kRecordFormat = 1;

// One object of a step.
struct RemoteFile {
  std::string name;  // the file's name on disk
  std::string key;   // where it is in the store
  std::string role;  // "model", "train" or "export:<name>"
  uint64_t size = 0;
  std::string etag;
  std::string content_digest;  // model files: ckptd's content digest
  // Of `size`, the bytes copied inside the store from the previous step's
  // object (UploadPartCopy) rather than sent.
  uint64_t copied_bytes = 0;
  // The multipart upload's part lengths when they are not all the step's
  // part_size (some copied): the ETag is the MD5 of these parts' MD5s.
  std::vector<uint64_t> part_lengths;
  std::optional<uint32_t> rank;
  nlohmann::json unknown = nlohmann::json::object();
};

// A tensor of a rank's part, whole or a slice of a larger one.
struct PartTensorEntry {
  std::string name;
  std::vector<uint64_t> ne;
  std::optional<policy::TensorSlice> slice;
};

// What a manifest and a part report both say of a step.
struct StepFacts {
  std::string run_id;
  uint64_t step = 0;
  std::map<std::string, double> metrics;
  std::string uuid;
  std::string content_digest;
  std::string time_utc;
  uint64_t part_size = 0;  // the multipart part size the files went up in
  std::vector<RemoteFile> files;
};

struct PartReport {
  StepFacts facts;
  uint32_t rank = 0;
  uint32_t world_size = 0;
  uint64_t bytes = 0;
  std::optional<int64_t> split_tensors_count;  // rank 0's split.tensors.count
  std::vector<PartTensorEntry> tensors;
  nlohmann::json unknown = nlohmann::json::object();

  std::string ToJson() const;
  static absl::StatusOr<PartReport> Parse(std::string_view text, std::string_view where);
  // In DecideStep's terms.
  policy::PartReport ForPolicy() const;
};

// A multi-rank step's part, as its manifest records it.
struct ManifestPart {
  uint32_t rank = 0;
  std::string uuid;
  std::string content_digest;
  uint64_t bytes = 0;
  std::string time_utc;
  std::vector<PartTensorEntry> tensors;
  nlohmann::json unknown = nlohmann::json::object();
};

struct StepManifest {
  StepFacts facts;
  uint32_t world_size = 0;  // a multi-rank step's; 0 for a whole step
  std::vector<ManifestPart> parts;
  nlohmann::json unknown = nlohmann::json::object();

  std::string ToJson() const;
  static absl::StatusOr<StepManifest> Parse(std::string_view text, std::string_view where);
  uint64_t bytes() const;  // every file's size
};

struct FailedStep {
  std::string run_id;
  uint64_t step = 0;
  uint32_t world_size = 0;
  std::string reason;
  std::vector<uint32_t> missing_ranks;
  std::string time_utc;
  nlohmann::json unknown = nlohmann::json::object();

  std::string ToJson() const;
  static absl::StatusOr<FailedStep> Parse(std::string_view text, std::string_view where);
};

struct LatestRecord {
  uint64_t step = 0;
  std::string manifest;  // the manifest's key
  nlohmann::json unknown = nlohmann::json::object();

  std::string ToJson() const;
  static absl::StatusOr<LatestRecord> Parse(std::string_view text, std::string_view where);
};

// One rank's availability for a restart of a multi-rank run (written once,
// never changed: every rank decides from the same reports).
struct RestoreReport {
  std::string run_id;
  std::string attempt;
  uint32_t rank = 0;
  uint32_t world_size = 0;
  std::vector<uint64_t> steps;  // ascending
  std::string node;             // who wrote it, for the operator
  std::string time_utc;
  nlohmann::json unknown = nlohmann::json::object();

  std::string ToJson() const;
  static absl::StatusOr<RestoreReport> Parse(std::string_view text, std::string_view where);
};

inline constexpr const char* kUploadStateFile = "ckptd-uploads.json";

struct UploadState {
  // A multipart upload under way: where, and the ETag of each part done
  // ("" for a part not sent yet).
  struct FileProgress {
    std::string upload_id;
    std::string key;
    uint64_t part_size = 0;
    // The parts' layout when some are copied from another object ("" for
    // parts of part_size): a resumed upload keeps its parts only under the
    // same layout.
    std::string layout;
    std::vector<std::string> parts;
    nlohmann::json unknown = nlohmann::json::object();
  };
  struct Waiting {
    std::map<std::string, FileProgress> files;  // by file name
    nlohmann::json unknown = nlohmann::json::object();
  };
  std::map<uint64_t, Waiting> waiting;  // steps to upload
  std::set<uint64_t> uploaded;
  // Multi-rank parts whose step was aborted: the keys this node may have
  // sent of each, deleted from the store (twice, Uploader::Withdraw) before
  // the entry goes.
  std::map<uint64_t, std::vector<std::string>> withdrawn;
  nlohmann::json unknown = nlohmann::json::object();

  std::string ToJson() const;
  static absl::StatusOr<UploadState> Parse(std::string_view text, std::string_view where);
};

}  // namespace ckptd::tier
