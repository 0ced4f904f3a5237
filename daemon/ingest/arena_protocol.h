// The arena socket's requests (see arena_server.h for the protocol), parsed
// without sockets: what the peer asked for, or INVALID_ARGUMENT saying what
// a well-formed request looks like. Pure; fuzzed (tests/fuzz).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace ckptd::ingest {

constexpr size_t kMaxArenaMessage = 512;  // bytes of one request datagram

struct ArenaRequest {
  enum class Kind { kRegister, kAttach, kHot };
  Kind kind = Kind::kRegister;
  std::string token;   // REGISTER, ATTACH: the run's token from OpenRun
  uint64_t probe = 0;  // ATTACH: an address in the trainer, and a length to read there
  uint64_t probe_len = 0;
  std::string run_id;  // HOT
  uint64_t step = 0;   // HOT
  std::string key;     // HOT: the copy's key (in_memory.key)
};

// `text`: the datagram; `fds`: how many descriptors came with it.
absl::StatusOr<ArenaRequest> ParseArenaRequest(std::string_view text, size_t fds);

}  // namespace ckptd::ingest
