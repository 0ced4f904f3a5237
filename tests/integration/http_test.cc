// Black-box tests of the HTTP listener and readiness: JSON equal to the gRPC
// answers, errors, probes, server-sent events, promtool-checked metrics,
// and the gRPC health service following readiness.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "health.grpc.pb.h"
#include "tests/integration/daemon_helpers.h"
#include "tests/integration/daemon_process.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

nlohmann::json GrpcJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return nlohmann::json::parse(out);
}

class HttpTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    daemon_ = StartDaemon();
    client_ = daemon_->Connect();
    port_ = daemon_->HttpPort();
    ASSERT_GT(port_, 0) << daemon_->Log();
    auto run = client_->OpenRun(OpenRequest("web", 100));
    ASSERT_TRUE(run.ok());
    run_ = std::move(*run);
    Model m(1.0f, 1024);
    for (uint64_t step = 100; step <= 300; step += 100) {
      ASSERT_TRUE(run_->Save(step, m.Views(), {{"loss", 1.0 / static_cast<double>(step)}}).ok());
    }
  }
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<ckptd::Run> run_;
  int port_ = 0;
};

TEST_F(HttpTest, JsonEqualsTheGrpcAnswers) {
  {
    grpc::ClientContext ctx;
    v1::ListRunsResponse resp;
    ASSERT_TRUE(client_->stub().ListRuns(&ctx, {}, &resp).ok());
    auto http = HttpGet(port_, "/v1/runs");
    EXPECT_EQ(http.status, 200);
    EXPECT_EQ(http.content_type, "application/json");
    EXPECT_EQ(nlohmann::json::parse(http.body), GrpcJson(resp));
  }
  {
    grpc::ClientContext ctx;
    v1::GetRunRequest req;
    req.set_run_id("web");
    v1::RunInfo resp;
    ASSERT_TRUE(client_->stub().GetRun(&ctx, req, &resp).ok());
    EXPECT_EQ(nlohmann::json::parse(HttpGet(port_, "/v1/runs/web").body), GrpcJson(resp));
  }
  {
    grpc::ClientContext ctx;
    v1::ListCheckpointsRequest req;
    req.set_run_id("web");
    req.set_page_size(2);
    req.set_since_step(50);
    v1::ListCheckpointsResponse resp;
    ASSERT_TRUE(client_->stub().ListCheckpoints(&ctx, req, &resp).ok());
    auto http = HttpGet(port_, "/v1/runs/web/checkpoints?since_step=50&page_size=2");
    EXPECT_EQ(nlohmann::json::parse(http.body), GrpcJson(resp));
    EXPECT_EQ(nlohmann::json::parse(http.body)["next_page_token"], "200");
    auto next = HttpGet(port_, "/v1/runs/web/checkpoints?page_token=200");
    EXPECT_EQ(nlohmann::json::parse(next.body)["checkpoints"][0]["step"], "300");
  }
  {
    grpc::ClientContext ctx;
    v1::GetCheckpointRequest req;
    req.set_run_id("web");
    req.set_step(200);
    v1::CheckpointDetail resp;
    ASSERT_TRUE(client_->stub().GetCheckpoint(&ctx, req, &resp).ok());
    EXPECT_EQ(nlohmann::json::parse(HttpGet(port_, "/v1/runs/web/checkpoints/200").body),
              GrpcJson(resp));
  }
}

TEST_F(HttpTest, NotFoundAndBadParametersAreJsonErrors) {
  struct Case {
    std::string target;
    int status;
    std::string message;
  };
  for (const Case& c :
       std::vector<Case>{{"/v1/runs/nope", 404, "run 'nope' is not known"},
                         {"/v1/runs/nope/checkpoints", 404, "run 'nope'"},
                         {"/v1/runs/web/checkpoints/999", 404, "no checkpoint at step 999"},
                         {"/nothing/here", 404, "no such path /nothing/here"},
                         {"/v1/runs/web/checkpoints?since_step=abc", 400,
                          "'since_step' must be a non-negative integer"},
                         {"/v1/runs/web/checkpoints?page_size=5000", 400, "'page_size' is 5000"},
                         {"/v1/runs/web/checkpoints?page_token=zz", 400, "page_token"},
                         {"/v1/runs/web/checkpoints/x1", 400, "path parameter 'step'"}}) {
    auto r = HttpGet(port_, c.target);
    EXPECT_EQ(r.status, c.status) << c.target;
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << c.target << ": " << r.body;
    EXPECT_EQ(j["error"]["code"], c.status);
    EXPECT_EQ(j["error"]["status"], c.status == 404 ? "NOT_FOUND" : "INVALID_ARGUMENT");
    EXPECT_THAT(j["error"]["message"].get<std::string>(), HasSubstr(c.message)) << c.target;
  }
}

TEST_F(HttpTest, HealthReadinessAndStatusPage) {
  auto health = HttpGet(port_, "/healthz");
  EXPECT_EQ(health.status, 200);
  auto ready = HttpGet(port_, "/readyz");
  EXPECT_EQ(ready.status, 200) << ready.body;
  EXPECT_EQ(nlohmann::json::parse(ready.body)["ready"], true);
  auto page = HttpGet(port_, "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_THAT(page.content_type, HasSubstr("text/html"));
  EXPECT_THAT(page.body, HasSubstr("EventSource"));
  EXPECT_THAT(page.body, ::testing::Not(HasSubstr("http://")));  // no external assets
  EXPECT_THAT(page.body, ::testing::Not(HasSubstr("https://")));
}

// A raw SSE subscriber: sends the request (with `headers`), reads until a
// marker arrives, the connection closes, or 20 s pass (a loaded machine may
// leave the stream silent for a second or more between two events).
class SseClient {
 public:
  SseClient(int port, const std::string& path, const std::string& headers = "") {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\n" + headers + "\r\n";
    connected_ = connected_ && ::write(fd_, req.data(), req.size()) > 0;
  }
  ~SseClient() { ::close(fd_); }
  bool ReadUntil(const std::string& what) {
    timeval tv{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    char buf[4096];
    while (connected_ && got_.find(what) == std::string::npos) {
      ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n < 0 && (errno == EAGAIN || errno == EINTR) &&
          std::chrono::steady_clock::now() < deadline) {
        continue;  // a quiet second: keep waiting until the deadline
      }
      if (n <= 0) return false;
      got_.append(buf, static_cast<size_t>(n));
    }
    return connected_;
  }
  // The id of the event whose data holds `marker`.
  std::string IdOf(const std::string& marker) const {
    size_t at = got_.find(marker);
    size_t id = got_.rfind("id: ", at);
    if (at == std::string::npos || id == std::string::npos) return "";
    return got_.substr(id + 4, got_.find('\n', id) - id - 4);
  }
  const std::string& got() const { return got_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string got_;
};

TEST_F(HttpTest, ServerSentEventsDeliverACommitWithinASecond) {
  SseClient sse(port_, "/v1/runs/web/events");
  ASSERT_TRUE(sse.ReadUntil(": watching run web"));
  EXPECT_THAT(sse.got(), HasSubstr("Content-Type: text/event-stream"));
  Model m(2.0f, 1024);
  ASSERT_TRUE(run_->Save(400, m.Views()).ok());
  EXPECT_TRUE(sse.ReadUntil("event: committed\ndata: ")) << sse.got();
  EXPECT_TRUE(sse.ReadUntil("\"step\":\"400\"")) << sse.got();
}

// Each event has an id; a client that reconnects with Last-Event-ID (as a
// browser's EventSource does) gets the events it missed, in order, and one
// whose id the daemon cannot continue from is told so ("event: gap").
TEST_F(HttpTest, AReconnectWithLastEventIdGetsTheEventsItMissed) {
  std::string seen;
  {
    SseClient sse(port_, "/v1/runs/web/events");
    ASSERT_TRUE(sse.ReadUntil(": watching run web"));
    Model m(2.0f, 1024);
    ASSERT_TRUE(run_->Save(400, m.Views()).ok());
    ASSERT_TRUE(sse.ReadUntil("\"step\":\"400\"")) << sse.got();
    seen = sse.IdOf("\"step\":\"400\"");
    ASSERT_THAT(seen, ::testing::MatchesRegex("[0-9a-f]{8}-[0-9]+"));
  }
  Model m(3.0f, 1024);
  ASSERT_TRUE(run_->Save(500, m.Views()).ok());
  ASSERT_TRUE(run_->Save(600, m.Views()).ok());
  SseClient again(port_, "/v1/runs/web/events", "Last-Event-ID: " + seen + "\r\n");
  ASSERT_TRUE(again.ReadUntil("\"step\":\"600\"")) << again.got();
  const std::string& got = again.got();
  EXPECT_LT(got.find("\"step\":\"500\""), got.find("\"step\":\"600\""));
  EXPECT_EQ(got.find("\"step\":\"400\""), std::string::npos) << "only what it missed";
  EXPECT_EQ(got.find("event: gap"), std::string::npos);

  SseClient other(port_, "/v1/runs/web/events", "Last-Event-ID: 0badc0de-7\r\n");
  EXPECT_TRUE(other.ReadUntil("event: gap\ndata: ")) << other.got();
  EXPECT_THAT(other.got(), HasSubstr("\"last_event_id\":\"0badc0de-7\""));
}

// A dashboard may subscribe before the trainer opens its run: it waits.
TEST_F(HttpTest, SubscribingToARunNotOpenYetWaitsForIt) {
  SseClient sse(port_, "/v1/runs/later/events");
  ASSERT_TRUE(sse.ReadUntil(": waiting for run later to open")) << sse.got();
  EXPECT_THAT(sse.got(), HasSubstr("200 OK"));
  auto run = client_->OpenRun(OpenRequest("later", 100));
  ASSERT_TRUE(run.ok());
  Model m(2.0f, 1024);
  ASSERT_TRUE((*run)->Save(100, m.Views()).ok());
  EXPECT_TRUE(sse.ReadUntil("\"step\":\"100\"")) << sse.got();
  EXPECT_THAT(sse.got(), HasSubstr(": run later opened"));
}

TEST_F(HttpTest, MetricsParseWithPromtoolAndCountersMove) {
  auto before = HttpGet(port_, "/metrics");
  EXPECT_EQ(before.status, 200);
  EXPECT_THAT(before.content_type, HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(before.body, HasSubstr("ckptd_saves_total{run=\"web\",result=\"committed\"} 3"));
  Model m(3.0f, 1024);
  ASSERT_TRUE(run_->Save(400, m.Views()).ok());
  {  // a Save for a step that is not due: the server skips it
    grpc::ClientContext ctx;
    v1::SaveResponse resp;
    auto w = client_->stub().Save(&ctx, &resp);
    StreamTensors(w.get(), OneTensorHeader("web", 401, 4).header(), {}, 1);
    ASSERT_TRUE(w->Finish().ok());
    ASSERT_EQ(resp.result(), v1::SaveResponse::RESULT_SKIPPED);
  }
  auto after = HttpGet(port_, "/metrics");
  EXPECT_THAT(after.body, HasSubstr("ckptd_saves_total{run=\"web\",result=\"committed\"} 4"));
  EXPECT_THAT(after.body, HasSubstr("ckptd_saves_total{run=\"web\",result=\"skipped\"} 1"));
  EXPECT_THAT(after.body, HasSubstr("ckptd_last_committed_step{run=\"web\"} 400"));
  EXPECT_THAT(after.body, HasSubstr("ckptd_save_duration_seconds_count{run=\"web\"} 4"));
  EXPECT_THAT(after.body, HasSubstr("ckptd_disk_free_bytes{root="));
  EXPECT_THAT(after.body, HasSubstr("ckptd_build_info{version=\"0.1.0\"} 1"));
  std::string file = tmp_.Join("metrics.txt");
  std::ofstream(file) << after.body;
  auto check = RunCommand({"/bin/sh", "-c", "promtool check metrics < " + file});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
}

TEST_F(DaemonTest, ReadyzIsUnavailableWhileAWriteErrorIsUnresolved) {
  // The first save's sync (after OpenRun's owner marker and settings file).
  auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "fail=sync:3:EIO"}});
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("sick", 1));
  Model m(1.0f, 1024);
  EXPECT_FALSE((*run)->Save(1, m.Views()).ok());
  auto ready = HttpGet(daemon->HttpPort(), "/readyz");
  EXPECT_EQ(ready.status, 503);
  EXPECT_THAT(ready.body, HasSubstr("run sick has an unresolved write error"));
  ASSERT_TRUE((*run)->Save(2, m.Views()).ok());
  EXPECT_EQ(HttpGet(daemon->HttpPort(), "/readyz").status, 200);
}

// The health service follows the same readiness as /readyz: NOT_SERVING
// while a write error is unresolved, SERVING again once a save succeeds.
TEST_F(DaemonTest, HealthServiceFollowsReadiness) {
  // The first save's sync (after OpenRun's owner marker and settings file).
  auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "fail=sync:3:EIO"}});
  auto channel =
      grpc::CreateChannel("unix:" + daemon->socket(), grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  auto status = [&] {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    EXPECT_TRUE(health->Check(&ctx, req, &resp).ok());
    return resp.status();
  };
  auto eventually = [&](grpc::health::v1::HealthCheckResponse::ServingStatus want) {
    for (int i = 0; i < 100 && status() != want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return status();
  };
  EXPECT_EQ(eventually(grpc::health::v1::HealthCheckResponse::SERVING),
            grpc::health::v1::HealthCheckResponse::SERVING);
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("sick", 1));
  Model m(1.0f, 1024);
  EXPECT_FALSE((*run)->Save(1, m.Views()).ok());  // fdatasync fails: a write error
  EXPECT_EQ(eventually(grpc::health::v1::HealthCheckResponse::NOT_SERVING),
            grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_THAT(daemon->Log(), HasSubstr("readiness: run sick has an unresolved write error"));
  ASSERT_TRUE((*run)->Save(2, m.Views()).ok());
  EXPECT_EQ(eventually(grpc::health::v1::HealthCheckResponse::SERVING),
            grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace ckptd::testing
