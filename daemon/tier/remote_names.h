// The object names of a run in the store, under <prefix>/<run>/:
//   step_N.gguf ... (the files, as on disk)
//   step_N.manifest.json          the step's commit record (files, sizes, ETags)
//   latest                        {"step": N, "manifest": key}, written last
// and for multi-rank runs:
//   step_N-RRRRR-of-WWWWW.gguf    each rank's part (and its .train.gguf)
//   parts/step_N/rank-R.json      a rank's report: its part is uploaded
//                                 (files, tensors and slices); deleted once
//                                 the step is decided
//   step_N.failed.json            the coordinator aborted the step (why)
// The step manifest of a multi-rank step lists every rank's files.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ckptd::tier {

std::string ManifestName(uint64_t step);
std::string FailedName(uint64_t step);
std::string PartReportName(uint64_t step, uint32_t rank);
inline constexpr std::string_view kPartsDir = "parts/";

// "step_N.manifest.json" -> N.
std::optional<uint64_t> ParseManifestName(std::string_view name);
// "parts/step_N/rank-R.json" (relative to the run's key) -> N and R.
struct PartReportKey {
  uint64_t step = 0;
  uint32_t rank = 0;
};
std::optional<PartReportKey> ParsePartReportName(std::string_view name);

}  // namespace ckptd::tier
