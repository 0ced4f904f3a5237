// Request-target parsing.
#include "daemon/http/url.h"

#include <charconv>

#include "daemon/base/strings.h"

namespace ckptd::http {
namespace {

std::optional<uint64_t> ParseU64(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int v = 0;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec == std::errc() && p == s.data() + i + 3) {
        out += static_cast<char>(v);
        i += 2;
        continue;
      }
    }
    out += s[i] == '+' ? ' ' : s[i];
  }
  return out;
}

Target ParseTarget(std::string_view t) {
  Target out;
  size_t q = t.find('?');
  std::string_view path = t.substr(0, q);
  for (const std::string& seg : Split(path, '/', true)) out.segments.push_back(PercentDecode(seg));
  if (q != std::string_view::npos) {
    for (const std::string& kv : Split(t.substr(q + 1), '&', true)) {
      size_t eq = kv.find('=');
      out.query[PercentDecode(kv.substr(0, eq))] =
          eq == std::string::npos ? "" : PercentDecode(kv.substr(eq + 1));
    }
  }
  return out;
}

absl::StatusOr<std::optional<uint64_t>> QueryU64(const Target& t, const std::string& name) {
  auto it = t.query.find(name);
  if (it == t.query.end() || it->second.empty()) return std::optional<uint64_t>();
  auto v = ParseU64(it->second);
  if (!v) {
    return absl::InvalidArgumentError(StrCat(
        "query parameter '", name, "' must be a non-negative integer, got '", it->second, "'"));
  }
  return v;
}

absl::StatusOr<uint64_t> PathU64(const std::string& segment, const std::string& name) {
  auto v = ParseU64(segment);
  if (!v) {
    return absl::InvalidArgumentError(
        StrCat("path parameter '", name, "' must be a non-negative integer, got '", segment, "'"));
  }
  return *v;
}

}  // namespace ckptd::http
