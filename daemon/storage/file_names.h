// The file-name grammar of a run's weights/ folder: one builder and one
// parser. Recovery and retention touch only names that parse.
//   step_N.gguf               model file (the commit point)
//   step_N.train.gguf         training state committed with it
//   .step_N.gguf.tmp-X        a model file being written (X: random hex)
//   .step_N.train.gguf.tmp-X  a training-state file being written
//   .step_N.train.gguf.next   a written training-state file waiting for its
//                             model file's commit (it belongs to step_N.gguf
//                             only if it records that file's digest)
//   latest                    symlink to the newest step_N.gguf (relative)
//   .latest.tmp-X             the next `latest`, before its rename
// and in the run directory, the run's small state files:
//   pins.json, ckptd-run-state   and their temps .pins.json.tmp-X, ...
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
};

struct ParsedName {
  FileKind kind;
  uint64_t step = 0;  // for model/train files and their temps
};

inline constexpr std::string_view kLatestName = "latest";
inline constexpr std::string_view kWeightsDir = "weights";
inline constexpr std::string_view kPinsFile = "pins.json";
inline constexpr std::string_view kRunStateFile = "ckptd-run-state";

std::string ModelFileName(uint64_t step);
std::string TrainFileName(uint64_t step);
std::string TrainNextFileName(uint64_t step);
// Temp name for a final name (model or train file, "latest", a state file):
// the one temp recipe, shared with env::WriteFileAtomically.
std::string TempFileName(std::string_view final_name);
std::optional<ParsedName> ParseFileName(std::string_view name);

// [A-Za-z0-9._-]{1,128}, not "." or "..".
bool IsValidRunId(std::string_view run_id);

}  // namespace ckptd::storage
