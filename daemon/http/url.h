// Request targets: the path split into percent-decoded segments and the
// query string into a map. Pure.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace ckptd::http {

struct Target {
  std::vector<std::string> segments;
  std::map<std::string, std::string> query;
};

// "%2F" -> "/", "+" -> " "; malformed escapes are kept as they are.
std::string PercentDecode(std::string_view s);
Target ParseTarget(std::string_view target);
// The query parameter `name` as a u64: nullopt when absent or empty,
// INVALID_ARGUMENT naming it when it is not a non-negative integer.
absl::StatusOr<std::optional<uint64_t>> QueryU64(const Target& t, const std::string& name);
// A path segment as a u64, INVALID_ARGUMENT naming `name` otherwise.
absl::StatusOr<uint64_t> PathU64(const std::string& segment, const std::string& name);

}  // namespace ckptd::http
