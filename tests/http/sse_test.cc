// SSE framing: each event type under its own name, the data a RunEvent.
#include "daemon/http/sse.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace ckptd::http {
namespace {

using ::testing::HasSubstr;
using Type = scheduler::Event::Type;

TEST(SseTest, EveryEventTypeHasItsOwnName) {
  const std::vector<std::pair<Type, std::string>> names = {{Type::kFailed, "failed"},
                                                           {Type::kDeleted, "deleted"},
                                                           {Type::kUploaded, "uploaded"},
                                                           {Type::kUploadFailed, "upload_failed"},
                                                           {Type::kQuarantined, "quarantined"}};
  for (const auto& [type, name] : names) {
    const std::string framed =
        SseEvent({.type = type, .run_id = "r", .step = 7, .error = "e", .time_utc = "t"});
    EXPECT_TRUE(framed.starts_with("event: " + name + "\ndata: {")) << framed;
    EXPECT_TRUE(framed.ends_with("}\n\n")) << framed;
  }
}

TEST(SseTest, ADeletionCarriesItsReasonNotAnError) {
  const std::string framed = SseEvent({.type = Type::kDeleted,
                                       .run_id = "r",
                                       .step = 100,
                                       .time_utc = "t",
                                       .reason = "not kept by keep_last=3"});
  EXPECT_THAT(framed, HasSubstr("\"reason\":\"not kept by keep_last=3\""));
  EXPECT_THAT(framed, ::testing::Not(HasSubstr("\"error\"")));
}

}  // namespace
}  // namespace ckptd::http
