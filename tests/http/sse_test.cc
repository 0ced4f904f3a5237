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
        SseEvent({.type = type, .run_id = "r", .step = 7, .error = "e", .time_utc = "t", .id = 9},
                 "0a1b2c3d");
    EXPECT_TRUE(framed.starts_with("id: 0a1b2c3d-9\nevent: " + name + "\ndata: {")) << framed;
    EXPECT_TRUE(framed.ends_with("}\n\n")) << framed;
  }
}

TEST(SseTest, ADeletionCarriesItsReasonNotAnError) {
  const std::string framed = SseEvent({.type = Type::kDeleted,
                                       .run_id = "r",
                                       .step = 100,
                                       .time_utc = "t",
                                       .reason = "not kept by keep_last=3"},
                                      "e");
  EXPECT_THAT(framed, HasSubstr("\"reason\":\"not kept by keep_last=3\""));
  EXPECT_THAT(framed, ::testing::Not(HasSubstr("\"error\"")));
}

TEST(SseTest, LastEventIdIsTakenOnlyFromThisEpoch) {
  EXPECT_EQ(ParseLastEventId("0a1b2c3d-41", "0a1b2c3d"), 41u);
  EXPECT_EQ(ParseLastEventId("0a1b2c3d-0", "0a1b2c3d"), 0u);
  for (const char* bad : {"ffffffff-41", "0a1b2c3d-", "0a1b2c3d41", "0a1b2c3d-4x", "", "-41",
                          "0a1b2c3d-99999999999999999999999"}) {
    EXPECT_FALSE(ParseLastEventId(bad, "0a1b2c3d")) << bad;
  }
  // A gap names the id it could not continue from, in our characters only.
  EXPECT_THAT(SseGap("ab-3\"}\ndata: x"), HasSubstr("\"last_event_id\":\"ab-3datax\""));
  EXPECT_TRUE(SseGap("x").starts_with("event: gap\ndata: {"));
}

}  // namespace
}  // namespace ckptd::http
