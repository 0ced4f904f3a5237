// Builder and parser of weights/ file names.
#include "daemon/storage/file_names.h"

#include <charconv>

#include "daemon/base/strings.h"
#include "daemon/env/env.h"

namespace ckptd::storage {
namespace {

constexpr std::string_view kStepPrefix = "step_";
constexpr std::string_view kModelSuffix = ".gguf";
constexpr std::string_view kTrainSuffix = ".train.gguf";
constexpr std::string_view kNextSuffix = ".next";

std::optional<uint64_t> ParseStep(std::string_view digits) {
  if (digits.empty() || digits.size() > 20 || (digits.size() > 1 && digits[0] == '0')) {
    return std::nullopt;
  }
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return v;
}

// "step_N.gguf" / "step_N.train.gguf" -> kind and step.
std::optional<ParsedName> ParseFinal(std::string_view name) {
  if (!name.starts_with(kStepPrefix)) return std::nullopt;
  name.remove_prefix(kStepPrefix.size());
  for (auto [suffix, kind] :
       {std::pair{kTrainSuffix, FileKind::kTrain}, std::pair{kModelSuffix, FileKind::kModel}}) {
    if (!name.ends_with(suffix)) continue;
    auto step = ParseStep(name.substr(0, name.size() - suffix.size()));
    if (step) return ParsedName{kind, *step};
  }
  return std::nullopt;
}

bool IsHex(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

std::string ModelFileName(uint64_t step) { return StrCat(kStepPrefix, step, kModelSuffix); }
std::string TrainFileName(uint64_t step) { return StrCat(kStepPrefix, step, kTrainSuffix); }

std::string TrainNextFileName(uint64_t step) {
  return StrCat(".", TrainFileName(step), kNextSuffix);
}

std::string TempFileName(std::string_view final_name) { return env::TempName(final_name); }

std::optional<ParsedName> ParseFileName(std::string_view name) {
  if (name == kLatestName) return ParsedName{FileKind::kLatest};
  if (name == kPinsFile || name == kRunStateFile) return ParsedName{FileKind::kStateFile};
  if (!name.starts_with('.')) return ParseFinal(name);
  if (name.ends_with(kNextSuffix)) {
    auto parsed = ParseFinal(name.substr(1, name.size() - 1 - kNextSuffix.size()));
    if (!parsed || parsed->kind != FileKind::kTrain) return std::nullopt;
    parsed->kind = FileKind::kTrainNext;
    return parsed;
  }
  size_t marker = name.rfind(env::kTempMarker);
  if (marker == std::string_view::npos || !IsHex(name.substr(marker + env::kTempMarker.size()))) {
    return std::nullopt;
  }
  std::string_view final_name = name.substr(1, marker - 1);
  if (final_name == kLatestName) return ParsedName{FileKind::kLatestTemp};
  if (final_name == kPinsFile || final_name == kRunStateFile) {
    return ParsedName{FileKind::kStateTemp};
  }
  auto parsed = ParseFinal(final_name);
  if (!parsed) return std::nullopt;
  parsed->kind = parsed->kind == FileKind::kModel ? FileKind::kModelTemp : FileKind::kTrainTemp;
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
