// Bearer tokens for clients that reach the API over TCP, each good for the
// runs whose id starts with a prefix. The daemon reads them from a file
// (server.tokens_file) at start; a token is never logged or echoed back.
//
// File format, one grant per line; '#' starts a comment, blank lines are
// ignored, a token may appear on several lines (it gets every prefix):
//
//   # <run-id prefix> <token>
//   llama-            3f9c0c2e5b1d4a7f8e6b2c1d0a9f8e7d
//   *                 0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a   # every run
//
// A token is 16 to 512 printable ASCII characters without spaces (generate
// one with `openssl rand -hex 32`). Calls that name no run (ListRuns) are
// allowed with any known token and answer only the runs it covers.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"

namespace ckptd::rpc {

class TokenTable {
 public:
  TokenTable() = default;

  // `source` names the text in errors ("/etc/ckptd/tokens:3: ...").
  static absl::StatusOr<TokenTable> Parse(std::string_view text, std::string_view source);
  // Reads and parses `path`; refuses a file other users can read.
  static absl::StatusOr<TokenTable> Load(env::Env* env, const std::string& path);

  // UNAUTHENTICATED when `authorization` (the call's "authorization"
  // metadata; nullopt when it sent none) is missing, malformed or an unknown
  // token; PERMISSION_DENIED when the token does not cover `run_id`. Both
  // say what to do.
  absl::Status Authorize(std::optional<std::string_view> authorization,
                         std::string_view run_id) const;
  // Whether a known token (as above) covers `run_id`; false for an unknown one.
  bool Covers(std::string_view authorization, std::string_view run_id) const;

  size_t size() const { return grants_.size(); }

 private:
  // The prefixes `token` grants, or null when it is unknown. Compares every
  // known token in full, so timing does not reveal how much of one matched.
  const std::vector<std::string>* Find(std::string_view token) const;

  std::map<std::string, std::vector<std::string>, std::less<>> grants_;  // token -> prefixes
};

// A file holding one token (http.token_file), with the same rules for the
// token and the file's mode as TokenTable::Load.
absl::StatusOr<std::string> LoadSingleToken(env::Env* env, const std::string& path);

}  // namespace ckptd::rpc
