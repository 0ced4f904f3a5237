// Tensor-name patterns of export profiles: literal text, `{NAME}` captures
// (one or more characters other than '.'), `{NAME*}` captures (one or more
// characters, dots included: "{all*}" -> "{all*}" keeps every name), and `*`
// (any characters; only in patterns that match, never in ones expanded).
// "model.layers.{L}.self_attn.q_proj.weight" matches
// "model.layers.3.self_attn.q_proj.weight" with L = "3"; expanding
// "blk.{L}.attn_q.weight" with those captures gives "blk.3.attn_q.weight".
// A name used twice in one pattern must capture the same text. Immutable
// after Compile; thread-safe.
//
// Matching remembers every (piece, position) that failed, with the text of
// the names already bound that are used again further on, so a pattern of
// P pieces never costs more than P x len^2 steps on a name of len bytes
// (with k names used twice, times the distinct texts they can bind):
// "*a*a*a*a*a*a*a*a*a*a*a*b" against 63 a's answers at once instead of
// backtracking through ~10^11 splits.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace ckptd::exports {

using Captures = std::map<std::string, std::string, std::less<>>;

class Pattern {
 public:
  static absl::StatusOr<Pattern> Compile(std::string_view text);

  const std::string& text() const { return text_; }
  // Capture names in order of first appearance.
  const std::vector<std::string>& capture_names() const { return names_; }
  bool has_wildcard() const { return wildcard_; }

  // The captures when `name` matches the whole pattern.
  std::optional<Captures> Match(std::string_view name) const;
  // Fills the captures in; fails naming a capture `captures` lacks, or on a `*`.
  absl::StatusOr<std::string> Expand(const Captures& captures) const;

 private:
  struct Piece {
    enum class Kind { kLiteral, kCapture, kWildcard } kind;
    std::string text;     // literal text or capture name
    bool dotted = false;  // a capture that may span dots
  };
  struct Memo;
  bool MatchFrom(size_t piece, std::string_view rest, Captures* out, Memo& memo) const;

  std::string text_;
  std::vector<Piece> pieces_;
  std::vector<std::string> names_;
  bool wildcard_ = false;
  // Per piece: the names bound before it and used at or after it (those a
  // failure there depends on besides the position).
  std::vector<std::vector<std::string>> live_names_;
};

}  // namespace ckptd::exports
