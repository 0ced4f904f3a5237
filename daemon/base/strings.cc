// Text checks shared by every layer that takes names from clients.
#include "daemon/base/strings.h"

#include "absl/strings/str_split.h"

namespace ckptd {
namespace {

// Length of the UTF-8 sequence starting at s[i] (1-4), or 0 when it is not
// well formed (overlong forms, surrogates and code points past U+10FFFF
// included).
size_t Utf8Length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint32_t cp = 0;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

bool IsControl(unsigned char c) { return c < 0x20 || c == 0x7F; }

}  // namespace

std::string NameProblem(std::string_view s) {
  if (s.empty()) return "is empty";
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (IsControl(c)) {
      return fmt::format("has a control character (byte 0x{:02x} at offset {})", c, i);
    }
    const size_t n = Utf8Length(s, i);
    if (n == 0) return fmt::format("is not valid UTF-8 (byte 0x{:02x} at offset {})", c, i);
    i += n;
  }
  return "";
}

std::string Printable(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = IsControl(c) ? 0 : Utf8Length(s, i);
    if (n == 0) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

bool ConstantTimeEqual(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::optional<std::string_view> BearerToken(std::string_view authorization) {
  // RFC 9110 11.4: the scheme is case-insensitive, then one or more spaces.
  constexpr std::string_view kBearer = "bearer";
  if (authorization.size() <= kBearer.size() || authorization[kBearer.size()] != ' ') {
    return std::nullopt;
  }
  for (size_t i = 0; i < kBearer.size(); ++i) {
    const char c = authorization[i];
    if ((c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c) != kBearer[i]) return std::nullopt;
  }
  std::string_view token = authorization.substr(kBearer.size());
  while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) token.remove_prefix(1);
  while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
  return token;
}

std::string KeyPrefixProblem(std::string_view prefix) {
  if (prefix.size() > 512) return "is longer than 512 bytes";
  if (prefix.starts_with('/') || prefix.ends_with('/')) return "starts or ends with '/'";
  if (prefix.find("//") != std::string_view::npos) return "has an empty segment ('//')";
  for (unsigned char c : prefix) {
    if (c < 0x20 || c == 0x7f) return "has a control character";
  }
  for (absl::string_view seg :
       absl::StrSplit(absl::string_view(prefix.data(), prefix.size()), '/')) {
    if (seg == "." || seg == "..") return "has a '.' or '..' segment";
  }
  return "";
}

}  // namespace ckptd
