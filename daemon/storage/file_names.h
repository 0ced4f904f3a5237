// The file-name grammar of a run's weights/ folder: one builder and one
// parser. Recovery and retention touch only names that parse.
//   step_N.gguf               model file (the commit point)
//   step_N.train.gguf         training state committed with it
//   .step_N.gguf.tmp-X        a model file being written (X: random hex)
//   .step_N.train.gguf.tmp-X  a training-state file being written
//   .step_N.train.gguf.next   a written training-state file waiting for its
//                             model file's commit (it belongs to step_N.gguf
//                             only if it records that file's digest)
//   step_N.E.gguf             export E of step N (E: [a-z0-9_-]{1,64}, not
//                             "train"); renamed before the model file, it
//                             belongs to step_N.gguf only if its
//                             general.source.uuid is that file's uuid
//   .step_N.E.gguf.tmp-X      an export being written
//   latest                    symlink to the newest step_N.gguf (relative)
//   latest.E                  symlink to the newest step_N.E.gguf
//   .latest.tmp-X, .latest.E.tmp-X  the next link, before its rename
//   step_N-RRRRR-of-WWWWW.gguf        a multi-rank run's part (rank R-1 of W)
//   step_N-RRRRR-of-WWWWW.train.gguf  its training state (same commit rule
//                             as step_N.train.gguf: it records the part's digest)
//   .step_N.gguf.deleting     a model file (or .PART.deleting, a part) being
//                             deleted: renamed away first, so the step is no
//                             longer committed; the files saved with it go
//                             next and it last (recovery finishes the job)
//   step_N.commit             the step's commit marker on this node: the
//                             part beside it is visible only with it (until
//                             then the part is pending: every rank's part
//                             is not known durable yet)
//   and their temps .NAME.tmp-X
// and in the run directory, the run's small state files:
//   pins.json, ckptd-run-state   and their temps .pins.json.tmp-X, ...
//   ckptd-run-id                 the owner: the id of the run this directory
//                                belongs to (one line); written at the first
//                                OpenRun, checked at every later one
//   ckptd-run.json               the run's settings as last opened (the
//                                OpenRunRequest in protobuf JSON), reloaded
//                                at startup
// N is decimal without leading zeros (a u64); X is 16 hex digits.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ckptd::storage {

enum class FileKind {
  kModel,
  kTrain,
  kModelTemp,
  kTrainTemp,
  kTrainNext,
  kLatest,
  kLatestTemp,
  kStateFile,
  kStateTemp,
  kExport,
  kExportTemp,
  kExportLatest,
  kExportLatestTemp,
  kPart,
  kPartTrain,
  kCommitMarker,
  kDeleting,
};

struct ParsedName {
  FileKind kind;
  uint64_t step = 0;        // for model/train/export files and their temps
  std::string export_name;  // for exports and their links
  uint32_t rank = 0;        // for parts (0-based)
  uint32_t world_size = 0;  // for parts
};

inline constexpr std::string_view kLatestName = "latest";
inline constexpr std::string_view kWeightsDir = "weights";
// <run_dir>/quarantine/: files recovery or the scrubber took out of
// weights/ (damaged, or not belonging to their checkpoint), each with a
// NAME.why beside it saying why. Never read by restore, never deleted by
// ckptd.
inline constexpr std::string_view kQuarantineDir = "quarantine";
inline constexpr std::string_view kQuarantineReasonSuffix = ".why";
inline constexpr std::string_view kPinsFile = "pins.json";
inline constexpr std::string_view kRunStateFile = "ckptd-run-state";
inline constexpr std::string_view kRunOwnerFile = "ckptd-run-id";
inline constexpr std::string_view kRunSettingsFile = "ckptd-run.json";
// In each root: flock'ed by the daemon serving it (holds its pid).
inline constexpr std::string_view kRootLockFile = "ckptd-root.lock";

std::string ModelFileName(uint64_t step);
std::string TrainFileName(uint64_t step);
std::string TrainNextFileName(uint64_t step);
// ".NAME.deleting" for a model file's or a part's name.
std::string DeletingFileName(std::string_view model_name);
std::string ExportFileName(uint64_t step, std::string_view export_name);
std::string ExportLatestName(std::string_view export_name);
// Temp name for a final name (model or train file, "latest", a state file):
// the one temp recipe, shared with env::WriteFileAtomically.
std::string TempFileName(std::string_view final_name);
std::optional<ParsedName> ParseFileName(std::string_view name);

// A rank's part of a step of a multi-rank run, named as llama.cpp's
// gguf-split names shards: "step_N-RRRRR-of-WWWWW.gguf", RRRRR the 1-based
// part number (rank + 1) and WWWWW the world size, both 5 digits (the GGUF
// keys split.no and split.count are u16, so 1 <= rank + 1 <= world <=
// 65535). Loaders are given the first part. ParseFileName knows them as
// kPart (and kPartTrain for PartTrainFileName).
struct SplitName {
  uint64_t step = 0;
  uint32_t rank = 0;  // 0-based
  uint32_t world_size = 0;
};
inline constexpr uint32_t kMaxWorldSize = 65535;
// Requires rank < world_size <= kMaxWorldSize.
std::string SplitFileName(uint64_t step, uint32_t rank, uint32_t world_size);
std::optional<SplitName> ParseSplitFileName(std::string_view name);
std::string PartTrainFileName(uint64_t step, uint32_t rank, uint32_t world_size);
std::string CommitMarkerName(uint64_t step);

// [A-Za-z0-9._-]{1,128}, not "." or "..".
bool IsValidRunId(std::string_view run_id);

}  // namespace ckptd::storage
