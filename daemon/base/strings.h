// String building on fmt. Debian's abseil keeps its own absl::string_view
// (ABSL_OPTION_USE_STD_STRING_VIEW 0), so StrCat cannot take
// std::string_view; these helpers take anything fmt can format, including
// absl::string_view (a Status message).
#pragma once

#include <fmt/format.h>

#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"

template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  auto format(absl::string_view s, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(std::string_view(s.data(), s.size()), ctx);
  }
};

namespace ckptd {

template <typename... Args>
void StrAppend(std::string* out, const Args&... args) {
  (fmt::format_to(std::back_inserter(*out), "{}", args), ...);
}

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  StrAppend(&out, args...);
  return out;
}

inline std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }

// Why `s` cannot be a name taken from a client (a tensor name, a metadata
// key): "is empty", "has a control character (...)" (NUL included: ggml and
// llama.cpp compare names as C strings), "is not valid UTF-8 (...)"; "" when
// it can.
std::string NameProblem(std::string_view s);
// `s` for a message or a log line: control characters and bytes that are
// not UTF-8 as \xNN.
std::string Printable(std::string_view s);

// What is wrong with an object-storage key prefix ("team-a/ckpt"), or "":
// no leading, trailing or doubled '/', no '.' or '..' segment, no control
// character, at most 512 bytes. "" itself is a valid prefix.
std::string KeyPrefixProblem(std::string_view prefix);

// Equality whose time depends on the lengths only (for secrets).
bool ConstantTimeEqual(std::string_view a, std::string_view b);

// The token of an "Authorization: Bearer <token>" value (gRPC metadata or an
// HTTP header); nullopt when it is not that form. The scheme is matched
// case-insensitively ("bearer", "BEARER"), spaces around the token dropped.
std::optional<std::string_view> BearerToken(std::string_view authorization);

// Splits on `sep`; empty pieces are dropped when skip_empty.
inline std::vector<std::string> Split(std::string_view s, char sep, bool skip_empty = false) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t end = s.find(sep, start);
    std::string_view piece = s.substr(start, end == std::string_view::npos ? s.npos : end - start);
    if (!piece.empty() || !skip_empty) out.emplace_back(piece);
    if (end == std::string_view::npos) return out;
    start = end + 1;
  }
}

}  // namespace ckptd
