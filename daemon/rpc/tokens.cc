// Bearer tokens per run-id prefix.
#include "daemon/rpc/tokens.h"

#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::rpc {
namespace {

constexpr size_t kMinTokenLength = 16;
constexpr size_t kMaxTokenLength = 512;

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// The whitespace-separated words of `line`, up to a word starting with '#'
// (a '#' inside a word is part of it).
std::vector<std::string_view> Words(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    if (IsSpace(line[i])) {
      ++i;
      continue;
    }
    if (line[i] == '#') break;
    size_t j = i;
    while (j < line.size() && !IsSpace(line[j])) ++j;
    out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

absl::Status CheckToken(std::string_view token, const std::string& at) {
  if (token.size() < kMinTokenLength || token.size() > kMaxTokenLength) {
    return absl::InvalidArgumentError(StrCat(
        at, "a token is ", kMinTokenLength, " to ", kMaxTokenLength, " characters (this one has ",
        token.size(), "); generate one with `openssl rand -hex 32`"));
  }
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(StrCat(at, "a token is printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

// A secret's file: refused when other users may read it.
absl::StatusOr<std::string> ReadPrivateFile(env::Env* env, const std::string& path) {
  CKPTD_ASSIGN_OR_RETURN(env::FileStat st, env->Stat(path));
  if ((st.mode & 0007) != 0) {
    return absl::PermissionDeniedError(StrCat(path, ": other users can read this token file (mode ",
                                              fmt::format("{:04o}", st.mode), "); chmod o-rwx it"));
  }
  return env::ReadWholeFile(env, path);
}

}  // namespace

absl::StatusOr<TokenTable> TokenTable::Parse(std::string_view text, std::string_view source) {
  TokenTable table;
  size_t line_no = 0;
  for (const std::string& line : Split(text, '\n')) {
    ++line_no;
    const std::vector<std::string_view> words = Words(line);
    if (words.empty()) continue;
    const std::string at = StrCat(source, ":", line_no, ": ");
    if (words.size() != 2) {
      return absl::InvalidArgumentError(
          StrCat(at, "expected '<run-id prefix> <token>' ('*' for every run), found ", words.size(),
                 " words"));
    }
    const std::string_view token = words[1];
    CKPTD_TRY(CheckToken(token, at));
    // A prefix: "llama-" or, the same, "llama-*"; "*" = every run. A '*'
    // elsewhere is not a pattern this file has: refused, not matched
    // literally (which would deny every run without a word).
    std::string_view prefix = words[0];
    if (prefix.ends_with('*')) prefix.remove_suffix(1);
    if (prefix.find('*') != std::string_view::npos) {
      return absl::InvalidArgumentError(StrCat(
          at, "'", Printable(words[0]),
          "': a '*' may only end a run-id prefix ('llama-*' or 'llama-' covers every run whose "
          "id starts with 'llama-'; '*' covers every run)"));
    }
    table.grants_[std::string(token)].push_back(std::string(prefix));
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::Load(env::Env* env, const std::string& path) {
  CKPTD_ASSIGN_OR_RETURN(std::string text, ReadPrivateFile(env, path));
  CKPTD_ASSIGN_OR_RETURN(TokenTable table, Parse(text, path));
  if (table.size() == 0) {
    return absl::InvalidArgumentError(StrCat(
        path, ": no tokens; every TCP call would be refused (add '<prefix> <token>' lines)"));
  }
  return table;
}

const std::vector<std::string>* TokenTable::Find(std::string_view token) const {
  const std::vector<std::string>* found = nullptr;
  for (const auto& [known, prefixes] : grants_) {
    if (ConstantTimeEqual(known, token)) found = &prefixes;
  }
  return found;
}

absl::Status TokenTable::Authorize(std::optional<std::string_view> authorization,
                                   std::string_view run_id) const {
  if (!authorization) {
    return absl::UnauthenticatedError(
        "this daemon requires a bearer token (server.tokens_file): send the 'authorization: "
        "Bearer <token>' metadata (clients: the token option, ckptctl --token-file)");
  }
  const std::optional<std::string_view> token = BearerToken(*authorization);
  if (!token) {
    return absl::UnauthenticatedError("the 'authorization' metadata is not 'Bearer <token>'");
  }
  const std::vector<std::string>* prefixes = Find(*token);
  if (prefixes == nullptr) {
    return absl::UnauthenticatedError(
        "the bearer token is not one this daemon knows (server.tokens_file); check the token "
        "the client sends");
  }
  for (const std::string& p : *prefixes) {
    if (run_id.starts_with(p)) return absl::OkStatus();
  }
  if (run_id.empty()) {
    return absl::PermissionDeniedError(
        "this call names no run; only a token granted for every run ('*') may make it");
  }
  std::string list;
  for (const std::string& p : *prefixes) list += StrCat(list.empty() ? "" : ", ", "'", p, "*'");
  return absl::PermissionDeniedError(StrCat("the bearer token covers runs ", list, ", not '",
                                            Printable(run_id), "'; use a token granted for it"));
}

bool TokenTable::Covers(std::string_view authorization, std::string_view run_id) const {
  return Authorize(authorization, run_id).ok();
}

absl::StatusOr<std::string> LoadSingleToken(env::Env* env, const std::string& path) {
  CKPTD_ASSIGN_OR_RETURN(std::string text, ReadPrivateFile(env, path));
  const std::string_view first_line = std::string_view(text).substr(0, text.find('\n'));
  const std::vector<std::string_view> words = Words(first_line);
  if (words.size() != 1 ||
      text.find_first_not_of(" \t\r\n", text.find('\n')) != std::string::npos) {
    return absl::InvalidArgumentError(StrCat(path, ": expected one token on one line"));
  }
  CKPTD_TRY(CheckToken(words[0], StrCat(path, ": ")));
  return std::string(words[0]);
}

}  // namespace ckptd::rpc
