// SSE framing.
#include "daemon/http/sse.h"

#include <cctype>
#include <charconv>

#include "daemon/api/convert.h"
#include "daemon/base/strings.h"
#include "daemon/query/queries.h"

namespace ckptd::http {

std::string SseHead(const std::string& run_id, bool waiting) {
  return StrCat(
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
      "Connection: close\r\n\r\n",
      waiting ? ": waiting for run " : ": watching run ", run_id,
      waiting ? " to open\n\n" : "\n\n");
}

std::string SseGap(std::string_view last_event_id) {
  return fmt::format(
      "event: gap\ndata: {{\"last_event_id\":\"{}\",\"message\":\"events after it were "
      "missed and are no longer kept (or the daemon restarted): reload the run's state\"}}\n\n",
      // Only the characters an id of ours has: the client's header is not echoed raw.
      [&] {
        std::string safe;
        for (char c : last_event_id.substr(0, 64)) {
          if (std::isalnum(static_cast<unsigned char>(c)) || c == '-') safe += c;
        }
        return safe;
      }());
}

std::optional<uint64_t> ParseLastEventId(std::string_view id, std::string_view epoch) {
  if (id.size() <= epoch.size() + 1 || !id.starts_with(epoch) || id[epoch.size()] != '-') {
    return std::nullopt;
  }
  std::string_view n = id.substr(epoch.size() + 1);
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), v);
  if (ec != std::errc() || end != n.data() + n.size()) return std::nullopt;
  return v;
}

std::string SseEvent(const scheduler::Event& e, std::string_view epoch) {
  using Type = scheduler::Event::Type;
  const char* name = "committed";
  switch (e.type) {
    case Type::kCommitted:
      name = "committed";
      break;
    case Type::kFailed:
      name = "failed";
      break;
    case Type::kDeleted:
      name = "deleted";
      break;
    case Type::kUploaded:
      name = "uploaded";
      break;
    case Type::kUploadFailed:
      name = "upload_failed";
      break;
    case Type::kQuarantined:
      name = "quarantined";
      break;
  }
  return fmt::format("id: {}-{}\nevent: {}\ndata: {}\n\n", epoch, e.id, name,
                     api::MessageToJson(query::Queries::EventToProto(e)));
}

}  // namespace ckptd::http
