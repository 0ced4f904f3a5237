// The HTTP router without sockets: what each path answers, every refusal a
// JSON error with the right status, the read token where it applies.
#include "daemon/http/router.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/scheduler/scheduler_fixture.h"

namespace ckptd::http {
namespace {

using ::testing::HasSubstr;

class RouterTest : public ::testing::Test, public scheduler::testing::SchedulerFixture {
 protected:
  RouterTest() : queries_(&registry(), {root()}), router_(&registry(), &queries_, {root()}) {
    Open("r");
    EXPECT_OK(Save("r", 10).status());
    EXPECT_OK(Save("r", 20).status());
  }
  // The JSON error's message, checking the body's shape.
  static std::string ErrorOf(const Reply& reply) {
    nlohmann::json j = nlohmann::json::parse(reply.body);
    EXPECT_TRUE(j.contains("error")) << reply.body;
    return j["error"].value("message", "");
  }
  query::Queries queries_;
  Router router_;
};

TEST_F(RouterTest, ThePageProbesAndTheApiAnswer) {
  Reply page = router_.Route("GET", "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_THAT(page.content_type, HasSubstr("text/html"));
  EXPECT_EQ(router_.Route("GET", "/healthz").body, "ok\n");
  Reply ready = router_.Route("GET", "/readyz");
  EXPECT_EQ(ready.status, 200);
  EXPECT_TRUE(nlohmann::json::parse(ready.body)["ready"]);
  nlohmann::json runs = nlohmann::json::parse(router_.Route("GET", "/v1/runs").body);
  ASSERT_EQ(runs["runs"].size(), 1u);
  EXPECT_EQ(runs["runs"][0]["run_id"], "r");
  nlohmann::json page2 =
      nlohmann::json::parse(router_.Route("GET", "/v1/runs/r/checkpoints?page_size=1").body);
  ASSERT_EQ(page2["checkpoints"].size(), 1u);
  EXPECT_EQ(page2["next_page_token"], "10");
  nlohmann::json one =
      nlohmann::json::parse(router_.Route("GET", "/v1/runs/r/checkpoints/20").body);
  EXPECT_EQ(one["info"]["step"], "20");  // uint64 in protobuf's JSON mapping
  EXPECT_EQ(router_.Route("GET", "/v1/runs/r/events").stream_run, "r");
  Reply metrics = router_.Route("GET", "/metrics");
  EXPECT_THAT(metrics.body, HasSubstr("ckptd_checkpoints{run=\"r\"} 2"));
  EXPECT_THAT(metrics.body, HasSubstr("ckptd_last_committed_step{run=\"r\"} 20"));
}

TEST_F(RouterTest, EveryRefusalIsAJsonErrorWithItsStatus) {
  Reply post = router_.Route("POST", "/v1/runs");
  EXPECT_EQ(post.status, 400);
  EXPECT_THAT(ErrorOf(post), HasSubstr("only GET"));
  Reply nowhere = router_.Route("GET", "/v2/things");
  EXPECT_EQ(nowhere.status, 404);
  EXPECT_THAT(ErrorOf(nowhere), HasSubstr("try /v1/runs"));
  Reply unknown = router_.Route("GET", "/v1/runs/nope");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_THAT(ErrorOf(unknown), HasSubstr("'nope' is not known"));
  Reply big = router_.Route("GET", "/v1/runs/r/checkpoints?page_size=2000");
  EXPECT_EQ(big.status, 400);
  EXPECT_THAT(ErrorOf(big), HasSubstr("page_size"));
  Reply remote = router_.Route("GET", "/v1/runs/r/checkpoints?remote=2");
  EXPECT_EQ(remote.status, 400);
  EXPECT_THAT(ErrorOf(remote), HasSubstr("remote"));
  EXPECT_EQ(router_.Route("GET", "/v1/runs/r/checkpoints?since_step=x").status, 400);
  EXPECT_EQ(router_.Route("GET", "/v1/runs/r/checkpoints/x").status, 400);
  Reply missing = router_.Route("GET", "/v1/runs/r/checkpoints/11");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(router_.Route("GET", "/v1/runs/r/checkpoints?remote=1").status, 409);  // no tier
}

TEST_F(RouterTest, TheReadTokenGuardsTheApiButNotTheProbes) {
  Router guarded(&registry(), &queries_, {root()}, "s3cret");
  Reply refused = guarded.Route("GET", "/v1/runs");
  EXPECT_EQ(refused.status, 401);
  EXPECT_THAT(ErrorOf(refused), HasSubstr("read token"));
  EXPECT_EQ(guarded.Route("GET", "/v1/runs", "Bearer wrong").status, 401);
  EXPECT_EQ(guarded.Route("GET", "/metrics").status, 401);
  EXPECT_EQ(guarded.Route("GET", "/v1/runs", "Bearer s3cret").status, 200);
  // The scheme is case-insensitive (RFC 9110), with one or more spaces.
  for (const char* auth : {"bearer s3cret", "BEARER s3cret", "BeArEr  s3cret ", "Bearer\ts3cret"}) {
    EXPECT_EQ(guarded.Route("GET", "/v1/runs", auth).status,
              std::string_view(auth).find('\t') == std::string_view::npos ? 200 : 401)
        << auth;
  }
  EXPECT_EQ(guarded.Route("GET", "/v1/runs", "Bearers3cret").status, 401);
  EXPECT_EQ(guarded.Route("GET", "/v1/runs", "Basic s3cret").status, 401);
  EXPECT_EQ(guarded.Route("GET", "/v1/runs/r/events?token=s3cret").stream_run, "r");
  EXPECT_EQ(guarded.Route("GET", "/healthz").status, 200);
  EXPECT_EQ(guarded.Route("GET", "/readyz").status, 200);
  EXPECT_EQ(guarded.Route("GET", "/").status, 200);
}

}  // namespace
}  // namespace ckptd::http
