// libFuzzer target: any datagram (its first byte: how many fds came with it)
// through the arena socket's request parser. It must answer a request or a
// Status; a crash, sanitizer report, or a parsed request that does not
// match its text is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/ingest/arena_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t fds = data[0] % 4;
  std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  auto r = ckptd::ingest::ParseArenaRequest(text, fds);
  if (!r.ok()) return 0;
  using Kind = ckptd::ingest::ArenaRequest::Kind;
  // What was parsed came from the text, and only REGISTER takes an fd.
  if ((r->kind == Kind::kRegister) != (fds == 1)) std::abort();
  if (r->kind != Kind::kHot && text.find(r->token) == std::string_view::npos) std::abort();
  if (r->kind == Kind::kHot &&
      (r->run_id.empty() || text.find(r->run_id) == std::string_view::npos))
    std::abort();
  return 0;
}
