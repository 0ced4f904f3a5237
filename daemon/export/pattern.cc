// Name patterns: compile, match by memoized backtracking over the pieces, expand.
#include "daemon/export/pattern.h"

#include <algorithm>
#include <set>
#include <unordered_set>

#include "daemon/base/strings.h"

namespace ckptd::exports {
namespace {

bool IsNameChar(char c, bool first) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
         (!first && c >= '0' && c <= '9');
}

}  // namespace

absl::StatusOr<Pattern> Pattern::Compile(std::string_view text) {
  Pattern p;
  p.text_ = std::string(text);
  if (text.empty()) return absl::InvalidArgumentError("empty tensor-name pattern");
  std::string literal;
  auto flush = [&] {
    if (!literal.empty()) p.pieces_.push_back({Piece::Kind::kLiteral, std::move(literal)});
    literal.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '*') {
      flush();
      if (!p.pieces_.empty() && p.pieces_.back().kind != Piece::Kind::kLiteral) {
        return absl::InvalidArgumentError(
            StrCat("pattern '", text, "': '*' must not follow another capture or '*'"));
      }
      p.pieces_.push_back({Piece::Kind::kWildcard, ""});
      p.wildcard_ = true;
    } else if (c == '{') {
      size_t close = text.find('}', i);
      if (close == std::string_view::npos) {
        return absl::InvalidArgumentError(StrCat("pattern '", text, "': '{' without '}'"));
      }
      std::string name(text.substr(i + 1, close - i - 1));
      const bool dotted = name.ends_with('*');
      if (dotted) name.pop_back();
      bool ok = !name.empty();
      for (size_t k = 0; k < name.size(); ++k) ok = ok && IsNameChar(name[k], k == 0);
      if (!ok) {
        return absl::InvalidArgumentError(
            StrCat("pattern '", text, "': capture '{", name,
                   "}' must be [A-Za-z_][A-Za-z0-9_]* (with a trailing * to match dots too)"));
      }
      flush();
      if (!p.pieces_.empty() && p.pieces_.back().kind != Piece::Kind::kLiteral) {
        return absl::InvalidArgumentError(
            StrCat("pattern '", text, "': two captures need literal text between them"));
      }
      if (std::find(p.names_.begin(), p.names_.end(), name) == p.names_.end()) {
        p.names_.push_back(name);
      }
      p.pieces_.push_back({Piece::Kind::kCapture, std::move(name), dotted});
      i = close;
    } else if (c == '}') {
      return absl::InvalidArgumentError(StrCat("pattern '", text, "': '}' without '{'"));
    } else {
      literal.push_back(c);
    }
  }
  flush();
  // The names each piece's outcome depends on: bound before it, used at or after it.
  p.live_names_.resize(p.pieces_.size() + 1);
  for (size_t i = 0; i <= p.pieces_.size(); ++i) {
    std::set<std::string> before, after;
    for (size_t k = 0; k < p.pieces_.size(); ++k) {
      if (p.pieces_[k].kind != Piece::Kind::kCapture) continue;
      (k < i ? before : after).insert(p.pieces_[k].text);
    }
    for (const std::string& n : before) {
      if (after.contains(n)) p.live_names_[i].push_back(n);
    }
  }
  return p;
}

// Failed states: (piece, remaining length) in a bitmap when no bound name is
// used again, else with those names' texts in a set.
struct Pattern::Memo {
  size_t len = 0;
  std::vector<bool> failed;  // (pieces + 1) x (len + 1)
  std::unordered_set<std::string> failed_bound;
  std::string Key(size_t piece, size_t rest, const std::vector<std::string>& names,
                  const Captures& c) const {
    std::string key = StrCat(piece, ":", rest);
    for (const std::string& n : names) {
      auto it = c.find(n);
      key += '\0';
      if (it != c.end()) key += it->second;
    }
    return key;
  }
};

bool Pattern::MatchFrom(size_t piece, std::string_view rest, Captures* out, Memo& memo) const {
  if (piece == pieces_.size()) return rest.empty();
  const std::vector<std::string>& live = live_names_[piece];
  const size_t slot = piece * (memo.len + 1) + rest.size();
  std::string key;
  if (live.empty()) {
    if (memo.failed[slot]) return false;
  } else {
    key = memo.Key(piece, rest.size(), live, *out);
    if (memo.failed_bound.contains(key)) return false;
  }
  bool matched = false;
  const Piece& p = pieces_[piece];
  switch (p.kind) {
    case Piece::Kind::kLiteral:
      matched =
          rest.starts_with(p.text) && MatchFrom(piece + 1, rest.substr(p.text.size()), out, memo);
      break;
    case Piece::Kind::kWildcard:
      for (size_t n = 0; n <= rest.size() && !matched; ++n) {
        matched = MatchFrom(piece + 1, rest.substr(n), out, memo);
      }
      break;
    case Piece::Kind::kCapture: {
      auto bound = out->find(p.text);
      if (bound != out->end()) {
        matched = rest.starts_with(bound->second) &&
                  MatchFrom(piece + 1, rest.substr(bound->second.size()), out, memo);
        break;
      }
      for (size_t n = 1; n <= rest.size() && (p.dotted || rest[n - 1] != '.') && !matched; ++n) {
        (*out)[p.text] = std::string(rest.substr(0, n));
        matched = MatchFrom(piece + 1, rest.substr(n), out, memo);
      }
      if (!matched) out->erase(p.text);
      break;
    }
  }
  if (!matched) {
    if (live.empty()) {
      memo.failed[slot] = true;
    } else {
      memo.failed_bound.insert(std::move(key));
    }
  }
  return matched;
}

std::optional<Captures> Pattern::Match(std::string_view name) const {
  Captures captures;
  Memo memo;
  memo.len = name.size();
  memo.failed.assign((pieces_.size() + 1) * (name.size() + 1), false);
  if (!MatchFrom(0, name, &captures, memo)) return std::nullopt;
  return captures;
}

absl::StatusOr<std::string> Pattern::Expand(const Captures& captures) const {
  std::string out;
  for (const Piece& p : pieces_) {
    switch (p.kind) {
      case Piece::Kind::kLiteral:
        out += p.text;
        break;
      case Piece::Kind::kWildcard:
        return absl::InvalidArgumentError(
            StrCat("pattern '", text_, "' names an output: it cannot contain '*'"));
      case Piece::Kind::kCapture: {
        auto it = captures.find(p.text);
        if (it == captures.end()) {
          return absl::InvalidArgumentError(StrCat("pattern '", text_, "' uses {", p.text,
                                                   "}, which its source pattern does not capture"));
        }
        out += it->second;
        break;
      }
    }
  }
  return out;
}

}  // namespace ckptd::exports
