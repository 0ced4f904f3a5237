// Parsing the arena socket's requests.
#include "daemon/ingest/arena_protocol.h"

#include "absl/strings/numbers.h"
#include "daemon/base/strings.h"

namespace ckptd::ingest {
namespace {

constexpr std::string_view kRegister = "REGISTER ";
constexpr std::string_view kAttach = "ATTACH ";
constexpr std::string_view kHot = "HOT ";

bool ParseU64(const std::string& s, uint64_t* out) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos &&
         absl::SimpleAtoi(s, out);
}

}  // namespace

absl::StatusOr<ArenaRequest> ParseArenaRequest(std::string_view text, size_t fds) {
  ArenaRequest r;
  if (text.starts_with(kAttach)) {
    if (fds != 0) return absl::InvalidArgumentError("ATTACH takes no fd");
    std::vector<std::string> parts = Split(text.substr(kAttach.size()), ' ', /*skip_empty=*/true);
    if (parts.size() != 3 || !ParseU64(parts[1], &r.probe) || !ParseU64(parts[2], &r.probe_len)) {
      return absl::InvalidArgumentError(
          "expected \"ATTACH <token> <probe address> <probe length>\" (decimal numbers)");
    }
    r.kind = ArenaRequest::Kind::kAttach;
    r.token = std::move(parts[0]);
    return r;
  }
  if (text.starts_with(kHot)) {
    if (fds != 0) return absl::InvalidArgumentError("HOT takes no fd");
    std::vector<std::string> parts = Split(text.substr(kHot.size()), ' ', /*skip_empty=*/true);
    if (parts.size() != 3 || !ParseU64(parts[1], &r.step)) {
      return absl::InvalidArgumentError(
          "expected \"HOT <run_id> <step> <key>\" (the key is GetRun's in_memory.key)");
    }
    r.kind = ArenaRequest::Kind::kHot;
    r.run_id = std::move(parts[0]);
    r.key = std::move(parts[2]);
    return r;
  }
  if (!text.starts_with(kRegister)) {
    return absl::InvalidArgumentError(
        "expected \"REGISTER <token>\" with one fd, \"ATTACH <token> <address> <length>\" or "
        "\"HOT <run_id> <step> <key>\"");
  }
  if (fds != 1) {
    return absl::InvalidArgumentError(
        StrCat("REGISTER needs exactly one fd attached (SCM_RIGHTS); got ", fds));
  }
  r.kind = ArenaRequest::Kind::kRegister;
  r.token = std::string(text.substr(kRegister.size()));
  return r;
}

}  // namespace ckptd::ingest
