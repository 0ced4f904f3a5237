// Object names of a run in the store.
#include "daemon/tier/remote_keys.h"

#include <charconv>

#include "daemon/base/strings.h"
#include "daemon/storage/file_names.h"

namespace ckptd::tier {
namespace {

template <typename T>
std::optional<T> Decimal(std::string_view digits) {
  if (digits.empty() || (digits.size() > 1 && digits[0] == '0')) return std::nullopt;
  T v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return v;
}

}  // namespace

std::string ManifestName(uint64_t step) { return StrCat("step_", step, ".manifest.json"); }
std::string FailedName(uint64_t step) { return StrCat("step_", step, ".failed.json"); }
std::string PartReportName(uint64_t step, uint32_t rank) {
  return StrCat(kPartsDir, "step_", step, "/rank-", rank, ".json");
}

std::string RestoreReportName(std::string_view attempt, uint32_t rank) {
  return StrCat(kRestoresDir, attempt, "/rank-", rank, ".json");
}

absl::Status CheckRestoreAttempt(std::string_view attempt) {
  bool ok = !attempt.empty() && attempt.size() <= 128 && attempt.front() != '.';
  for (char c : attempt) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '_' || c == ':' || c == '-');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      StrCat("agree_attempt '", attempt,
             "': give 1 to 128 of [A-Za-z0-9._:-] (not starting with '.'), the same on every rank "
             "of one restart and new for each restart (torchrun's TORCHELASTIC_RESTART_COUNT, a "
             "job id and its restart count)"));
}

std::optional<uint64_t> ParseManifestName(std::string_view name) {
  constexpr std::string_view kHead = "step_", kTail = ".manifest.json";
  if (!name.starts_with(kHead) || !name.ends_with(kTail)) return std::nullopt;
  return Decimal<uint64_t>(name.substr(kHead.size(), name.size() - kHead.size() - kTail.size()));
}

std::optional<PartReportKey> ParsePartReportName(std::string_view name) {
  constexpr std::string_view kStep = "step_", kRank = "/rank-", kJson = ".json";
  if (!name.starts_with(kPartsDir)) return std::nullopt;
  name.remove_prefix(kPartsDir.size());
  if (!name.starts_with(kStep) || !name.ends_with(kJson)) return std::nullopt;
  name.remove_prefix(kStep.size());
  name.remove_suffix(kJson.size());
  const size_t slash = name.find(kRank);
  if (slash == std::string_view::npos) return std::nullopt;
  auto step = Decimal<uint64_t>(name.substr(0, slash));
  auto rank = Decimal<uint32_t>(name.substr(slash + kRank.size()));
  if (!step || !rank) return std::nullopt;
  return PartReportKey{*step, *rank};
}

RunKeys::RunKeys(std::string_view prefix, std::string_view run_id)
    : root_(prefix.empty() ? StrCat(run_id, "/") : StrCat(prefix, "/", run_id, "/")) {}

std::vector<std::string> RunKeys::PartObjects(uint64_t step, uint32_t rank,
                                              uint32_t world_size) const {
  return {Object(storage::SplitFileName(step, rank, world_size)),
          Object(storage::PartTrainFileName(step, rank, world_size)), PartReport(step, rank)};
}

std::optional<std::string_view> RunKeys::NameOf(std::string_view key) const {
  if (!key.starts_with(root_)) return std::nullopt;
  return key.substr(root_.size());
}

}  // namespace ckptd::tier
