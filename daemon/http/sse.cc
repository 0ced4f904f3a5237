// SSE framing.
#include "daemon/http/sse.h"

#include "daemon/api/convert.h"
#include "daemon/base/strings.h"
#include "daemon/query/queries.h"

namespace ckptd::http {

std::string SseHead(const std::string& run_id) {
  return StrCat(
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
      "Connection: close\r\n\r\n: watching run ",
      run_id, "\n\n");
}

std::string SseEvent(const scheduler::Event& e) {
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
  return fmt::format("event: {}\ndata: {}\n\n", name,
                     api::MessageToJson(query::Queries::EventToProto(e)));
}

}  // namespace ckptd::http
