// Every object name of a run in the store; nothing else builds one. Under
// <prefix>/<run>/ (or <run>/ with no prefix):
//   step_N.gguf ...               the files, as on disk
//   step_N.manifest.json          the step's commit record (remote_records.h)
//   latest                        names the newest manifest, written last
// and for multi-rank runs:
//   step_N-RRRRR-of-WWWWW.gguf    each rank's part (and its .train.gguf)
//   parts/step_N/rank-R.json      a rank's report: its part is uploaded;
//                                 deleted once the step is decided
//   step_N.failed.json            the coordinator aborted the step (why)
//   restores/<attempt>/rank-R.json  the steps rank R can restore its part
//                                 of, for one restart (`attempt`)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "daemon/base/strings.h"

namespace ckptd::tier {

std::string ManifestName(uint64_t step);
std::string FailedName(uint64_t step);
std::string PartReportName(uint64_t step, uint32_t rank);
inline constexpr std::string_view kPartsDir = "parts/";
inline constexpr std::string_view kLatestName = "latest";
inline constexpr std::string_view kRestoresDir = "restores/";
// "restores/<attempt>/rank-R.json"; the attempt is checked by
// CheckRestoreAttempt.
std::string RestoreReportName(std::string_view attempt, uint32_t rank);
// 1 to 128 of [A-Za-z0-9._:-], not starting with '.'; INVALID_ARGUMENT otherwise.
absl::Status CheckRestoreAttempt(std::string_view attempt);

// "step_N.manifest.json" -> N.
std::optional<uint64_t> ParseManifestName(std::string_view name);
// "parts/step_N/rank-R.json" (relative to the run's key) -> N and R.
struct PartReportKey {
  uint64_t step = 0;
  uint32_t rank = 0;
};
std::optional<PartReportKey> ParsePartReportName(std::string_view name);

// The keys of one run under one prefix.
class RunKeys {
 public:
  // `prefix`: tier.s3.prefix or the run's own, without a trailing '/'.
  RunKeys(std::string_view prefix, std::string_view run_id);

  // "<prefix>/<run>/": every key of the run starts with it.
  const std::string& root() const { return root_; }
  std::string Object(std::string_view name) const { return root_ + std::string(name); }
  std::string Manifest(uint64_t step) const { return Object(ManifestName(step)); }
  std::string Failed(uint64_t step) const { return Object(FailedName(step)); }
  std::string PartReport(uint64_t step, uint32_t rank) const {
    return Object(PartReportName(step, rank));
  }
  // What a node sends of rank `rank`'s part of step N: the part, its
  // training state and its report (exports are not sent for parts).
  std::vector<std::string> PartObjects(uint64_t step, uint32_t rank, uint32_t world_size) const;
  std::string PartsDir() const { return Object(kPartsDir); }
  std::string RestoreReport(std::string_view attempt, uint32_t rank) const {
    return Object(RestoreReportName(attempt, rank));
  }
  std::string RestoresOf(std::string_view attempt) const {
    return Object(StrCat(kRestoresDir, attempt, "/"));
  }
  std::string Latest() const { return Object(kLatestName); }
  // `key` relative to root(), or nullopt for a key of another run.
  std::optional<std::string_view> NameOf(std::string_view key) const;

 private:
  std::string root_;
};

}  // namespace ckptd::tier
