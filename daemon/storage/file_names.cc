// Builder and parser of weights/ file names.
#include "daemon/storage/file_names.h"

#include <fmt/format.h>

#include <charconv>

#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/export/profile.h"

namespace ckptd::storage {
namespace {

constexpr std::string_view kStepPrefix = "step_";
constexpr std::string_view kModelSuffix = ".gguf";
constexpr std::string_view kTrainSuffix = ".train.gguf";
constexpr std::string_view kNextSuffix = ".next";
constexpr std::string_view kCommitSuffix = ".commit";
constexpr std::string_view kDeletingSuffix = ".deleting";

std::optional<uint64_t> ParseStep(std::string_view digits) {
  if (digits.empty() || digits.size() > 20 || (digits.size() > 1 && digits[0] == '0')) {
    return std::nullopt;
  }
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return v;
}

std::optional<SplitName> ParseSplit(std::string_view name);

// "step_N.gguf" / "step_N.train.gguf" / parts / markers -> kind and step.
std::optional<ParsedName> ParseFinal(std::string_view name) {
  if (!name.starts_with(kStepPrefix)) return std::nullopt;
  if (name.ends_with(kTrainSuffix)) {
    const std::string_view model = name.substr(0, name.size() - kTrainSuffix.size());
    if (auto p = ParseSplit(StrCat(model, kModelSuffix))) {
      return ParsedName{FileKind::kPartTrain, p->step, "", p->rank, p->world_size};
    }
  }
  if (auto p = ParseSplit(name)) {
    return ParsedName{FileKind::kPart, p->step, "", p->rank, p->world_size};
  }
  if (name.ends_with(kCommitSuffix)) {
    auto step = ParseStep(
        name.substr(kStepPrefix.size(), name.size() - kStepPrefix.size() - kCommitSuffix.size()));
    if (step) return ParsedName{FileKind::kCommitMarker, *step};
    return std::nullopt;
  }
  name.remove_prefix(kStepPrefix.size());
  for (auto [suffix, kind] :
       {std::pair{kTrainSuffix, FileKind::kTrain}, std::pair{kModelSuffix, FileKind::kModel}}) {
    if (!name.ends_with(suffix)) continue;
    auto step = ParseStep(name.substr(0, name.size() - suffix.size()));
    if (step) return ParsedName{kind, *step};
  }
  // step_N.E.gguf
  if (!name.ends_with(kModelSuffix)) return std::nullopt;
  name.remove_suffix(kModelSuffix.size());
  size_t dot = name.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  auto step = ParseStep(name.substr(0, dot));
  std::string_view export_name = name.substr(dot + 1);
  if (!step || !exports::IsValidExportName(export_name)) return std::nullopt;
  return ParsedName{FileKind::kExport, *step, std::string(export_name)};
}

// "latest.E" -> E, when E is a valid export name.
std::optional<std::string_view> ExportLatestOf(std::string_view name) {
  if (!name.starts_with("latest.")) return std::nullopt;
  std::string_view e = name.substr(7);
  if (!exports::IsValidExportName(e)) return std::nullopt;
  return e;
}

bool IsHex(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

std::string SplitFileName(uint64_t step, uint32_t rank, uint32_t world_size) {
  return fmt::format("{}{}-{:05d}-of-{:05d}{}", kStepPrefix, step, rank + 1, world_size,
                     kModelSuffix);
}

std::optional<SplitName> ParseSplitFileName(std::string_view name) { return ParseSplit(name); }

namespace {
std::optional<SplitName> ParseSplit(std::string_view name) {
  // step_N-RRRRR-of-WWWWW.gguf: the tail is 18 bytes after N.
  constexpr size_t kTail = 1 + 5 + 4 + 5;  // "-RRRRR-of-WWWWW"
  if (!name.starts_with(kStepPrefix) || !name.ends_with(kModelSuffix)) return std::nullopt;
  name.remove_prefix(kStepPrefix.size());
  name.remove_suffix(kModelSuffix.size());
  if (name.size() <= kTail) return std::nullopt;
  const std::string_view tail = name.substr(name.size() - kTail);
  auto step = ParseStep(name.substr(0, name.size() - kTail));
  if (!step || tail[0] != '-' || tail.substr(6, 4) != "-of-") return std::nullopt;
  auto five = [](std::string_view d) -> std::optional<uint32_t> {
    uint32_t v = 0;
    for (char c : d) {
      if (c < '0' || c > '9') return std::nullopt;
      v = v * 10 + static_cast<uint32_t>(c - '0');
    }
    return v;
  };
  auto no = five(tail.substr(1, 5));
  auto count = five(tail.substr(10, 5));
  if (!no || !count || *no < 1 || *no > *count || *count > kMaxWorldSize) return std::nullopt;
  return SplitName{.step = *step, .rank = *no - 1, .world_size = *count};
}
}  // namespace

std::string PartTrainFileName(uint64_t step, uint32_t rank, uint32_t world_size) {
  std::string name = SplitFileName(step, rank, world_size);
  name.resize(name.size() - kModelSuffix.size());
  return StrCat(name, kTrainSuffix);
}

std::string CommitMarkerName(uint64_t step) { return StrCat(kStepPrefix, step, kCommitSuffix); }

std::string ModelFileName(uint64_t step) { return StrCat(kStepPrefix, step, kModelSuffix); }
std::string TrainFileName(uint64_t step) { return StrCat(kStepPrefix, step, kTrainSuffix); }

std::string TrainNextFileName(uint64_t step) {
  return StrCat(".", TrainFileName(step), kNextSuffix);
}

std::string DeletingFileName(std::string_view model_name) {
  return StrCat(".", model_name, kDeletingSuffix);
}

std::string ExportFileName(uint64_t step, std::string_view export_name) {
  return StrCat(kStepPrefix, step, ".", export_name, kModelSuffix);
}
std::string ExportLatestName(std::string_view export_name) {
  return StrCat(kLatestName, ".", export_name);
}

namespace {
bool IsStateFile(std::string_view name) {
  return name == kPinsFile || name == kRunStateFile || name == kRunOwnerFile ||
         name == kRunSettingsFile;
}
}  // namespace

std::string TempFileName(std::string_view final_name) { return env::TempName(final_name); }

std::optional<ParsedName> ParseFileName(std::string_view name) {
  if (name == kLatestName) return ParsedName{FileKind::kLatest};
  if (auto e = ExportLatestOf(name)) return ParsedName{FileKind::kExportLatest, 0, std::string(*e)};
  if (IsStateFile(name)) return ParsedName{FileKind::kStateFile};
  if (!name.starts_with('.')) return ParseFinal(name);
  if (name.ends_with(kNextSuffix)) {
    auto parsed = ParseFinal(name.substr(1, name.size() - 1 - kNextSuffix.size()));
    if (!parsed || parsed->kind != FileKind::kTrain) return std::nullopt;
    parsed->kind = FileKind::kTrainNext;
    return parsed;
  }
  if (name.ends_with(kDeletingSuffix)) {
    auto parsed = ParseFinal(name.substr(1, name.size() - 1 - kDeletingSuffix.size()));
    if (!parsed || (parsed->kind != FileKind::kModel && parsed->kind != FileKind::kPart)) {
      return std::nullopt;
    }
    parsed->kind = FileKind::kDeleting;
    return parsed;
  }
  size_t marker = name.rfind(env::kTempMarker);
  if (marker == std::string_view::npos || !IsHex(name.substr(marker + env::kTempMarker.size()))) {
    return std::nullopt;
  }
  std::string_view final_name = name.substr(1, marker - 1);
  if (final_name == kLatestName) return ParsedName{FileKind::kLatestTemp};
  if (auto e = ExportLatestOf(final_name)) {
    return ParsedName{FileKind::kExportLatestTemp, 0, std::string(*e)};
  }
  if (IsStateFile(final_name)) return ParsedName{FileKind::kStateTemp};
  auto parsed = ParseFinal(final_name);
  if (!parsed) return std::nullopt;
  switch (parsed->kind) {
    case FileKind::kModel:
    case FileKind::kPart:
      parsed->kind = FileKind::kModelTemp;
      break;
    case FileKind::kTrain:
    case FileKind::kPartTrain:
      parsed->kind = FileKind::kTrainTemp;
      break;
    case FileKind::kCommitMarker:
      parsed->kind = FileKind::kStateTemp;
      break;
    default:
      parsed->kind = FileKind::kExportTemp;
      break;
  }
  return parsed;
}

bool IsValidRunId(std::string_view run_id) {
  if (run_id.empty() || run_id.size() > 128 || run_id == "." || run_id == "..") return false;
  for (char c : run_id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace ckptd::storage
