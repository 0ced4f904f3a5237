// Black-box tests of the daemon as ops run it: ckptctl against it, config
// choices, SIGHUP, systemd notifications, stalled saves, TCP.
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

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/integration/daemon_helpers.h"
#include "tests/integration/daemon_process.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

TEST_F(DaemonTest, CkptctlTalksToTheDaemon) {
  auto daemon = StartDaemon();
  const std::string sock = "--socket=unix:" + daemon->socket();
  std::string src = tmp_.Join("src.gguf");
  ASSERT_EQ(RunCommand({FIXTURE_WRITER, src, "/dev/null", "4"}).exit_code, 0);
  auto src_json = nlohmann::json::parse(RunCommand({CKPTCTL_BINARY, "inspect", "--json", src}).out);
  std::string src_uuid;
  for (const auto& e : src_json["metadata"]) {
    if (e["key"] == "general.uuid") src_uuid = e["value"];
  }

  auto imp = RunCommand(
      {CKPTCTL_BINARY, "import", "imp", src, "--step", "10", "--metric", "loss=1.5", sock});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  EXPECT_THAT(imp.out, HasSubstr("imported " + src + " as step 10 of run imp"));
  // Same tensors => same uuid, whatever the new metadata.
  EXPECT_THAT(imp.out, HasSubstr(src_uuid));

  auto ls = RunCommand({CKPTCTL_BINARY, "ls", "imp", "--json", sock});
  ASSERT_EQ(ls.exit_code, 0) << ls.err;
  auto cps = nlohmann::json::parse(ls.out)["checkpoints"];
  ASSERT_EQ(cps.size(), 1u);
  EXPECT_EQ(cps[0]["step"], "10");  // protobuf's JSON mapping writes uint64 as a string
  EXPECT_EQ(cps[0]["metrics"]["loss"], 1.5);
  EXPECT_EQ(cps[0]["uuid"], src_uuid);

  auto latest = RunCommand({CKPTCTL_BINARY, "latest", "imp", sock});
  EXPECT_EQ(latest.exit_code, 0);
  EXPECT_EQ(latest.out, fs::canonical(Weights("imp")).string() + "/step_10.gguf\n");
  auto verify = RunCommand({CKPTCTL_BINARY, "verify", Weights("imp") + "/step_10.gguf"});
  EXPECT_EQ(verify.exit_code, 0) << verify.err;

  auto show = RunCommand({CKPTCTL_BINARY, "show", "imp", "10", sock});
  EXPECT_EQ(show.exit_code, 0);
  EXPECT_THAT(show.out, HasSubstr("blk.8.q8_0.weight"));
  EXPECT_THAT(show.out, HasSubstr("ckpt.trainer.extra.imported_from"));
  auto runs = RunCommand({CKPTCTL_BINARY, "runs", sock});
  EXPECT_THAT(runs.out, HasSubstr("imp"));

  auto client = daemon->Connect();
  ASSERT_TRUE(client->OpenRun(OpenRequest("empty")).ok());
  auto none = RunCommand({CKPTCTL_BINARY, "latest", "empty", sock});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_THAT(none.err, HasSubstr("no committed checkpoint"));
  auto unknown = RunCommand({CKPTCTL_BINARY, "show", "imp", "11", sock});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("no checkpoint at step 11"));

  EXPECT_EQ(daemon->Stop(SIGTERM), 0);
  auto down = RunCommand({CKPTCTL_BINARY, "runs", sock});
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_THAT(down.err, HasSubstr("cannot reach ckptd"));
}

TEST_F(DaemonTest, GgufHashUuidSchemeFromConfig) {
  std::string cfg = tmp_.Join("hash.toml");
  std::ofstream(cfg) << "[storage]\nuuid_scheme = \"gguf-hash\"\n[schedule]\nevery_steps = 1\n";
  auto daemon = StartDaemon({}, {"--config", cfg});
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("rh", 1));
  ASSERT_TRUE(run.ok());
  Model m(4.0f);
  auto a = (*run)->Save(1, m.Views());
  auto b = (*run)->Save(2, m.Views());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->checkpoint().uuid(), b->checkpoint().uuid());
  EXPECT_EQ(a->checkpoint().uuid()[14], '5');  // UUIDv5
  grpc::ClientContext ctx;
  v1::GetCheckpointRequest req;
  req.set_run_id("rh");
  req.set_step(2);
  v1::CheckpointDetail d;
  ASSERT_TRUE(client->stub().GetCheckpoint(&ctx, req, &d).ok());
  bool found = false;
  for (const auto& e : d.metadata()) {
    if (e.key() == "ckpt.uuid_scheme") found = e.value().string_value() == "gguf-hash";
  }
  EXPECT_TRUE(found);
  auto v = RunCommand({CKPTCTL_BINARY, "verify", Weights("rh") + "/step_2.gguf"});
  EXPECT_EQ(v.exit_code, 0) << v.err;
}

TEST_F(DaemonTest, SighupReloadsTheDefaultSchedule) {
  std::string cfg = tmp_.Join("reload.toml");
  std::ofstream(cfg) << "[schedule]\nevery_steps = 100\n";
  auto daemon = StartDaemon({}, {"--config", cfg});
  auto client = daemon->Connect();
  v1::OpenRunRequest req = OpenRequest("rh");
  req.clear_schedule();  // follow the daemon's default
  auto run = client->OpenRun(req);
  ASSERT_TRUE(run.ok());
  EXPECT_FALSE((*run)->ShouldSave(7)->due());
  std::ofstream(cfg, std::ios::trunc) << "[schedule]\nevery_steps = 7\n";
  ::kill(daemon->pid(), SIGHUP);
  bool due = false;
  for (int i = 0; i < 100 && !due; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    due = (*run)->ShouldSave(7)->due();
  }
  EXPECT_TRUE(due);
  EXPECT_THAT(daemon->Log(), HasSubstr("reloaded: schedule every_steps=7"));
  // A broken file on reload keeps the running config.
  std::ofstream(cfg, std::ios::trunc) << "[schedule]\nevery_steps = \"x\"\n";
  ::kill(daemon->pid(), SIGHUP);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE((*run)->ShouldSave(14)->due());
  EXPECT_THAT(daemon->Log(), HasSubstr("reload failed, keeping the running config"));
}

TEST_F(DaemonTest, NotifiesSystemdReadyStatusAndStopping) {
  std::string path = tmp_.Join("notify.sock");
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto receive = [&] {
    char buf[512];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  };
  auto daemon = StartDaemon({{"NOTIFY_SOCKET", path}, {"WATCHDOG_USEC", "200000"}});
  std::string ready = receive();
  EXPECT_THAT(ready, HasSubstr("READY=1"));
  EXPECT_THAT(ready, HasSubstr("STATUS=serving 0 runs on unix:"));
  // WatchdogSec=0.2s: pings every 100 ms.
  int pings = 0;
  for (int i = 0; i < 3; ++i) pings += receive() == "WATCHDOG=1";
  EXPECT_EQ(pings, 3);
  // STATUS= follows the daemon: a commit shows within a second or two.
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("st"));
  ASSERT_TRUE(run.ok()) << run.status();
  Model m(2.0f);
  ASSERT_TRUE((*run)->Save(100, m.Views(), {}, {.force = true}).ok());
  std::string status;
  for (int i = 0; i < 100 && status.find("last commit") == std::string::npos; ++i) {
    if (std::string msg = receive(); msg.starts_with("STATUS=")) status = msg;
  }
  EXPECT_THAT(status, HasSubstr("STATUS=serving 1 runs (1 open) on unix:"));
  EXPECT_THAT(status, HasSubstr("; last commit run=st step=100 at "));
  ::kill(daemon->pid(), SIGTERM);
  std::string msg;
  do {
    msg = receive();
  } while (msg == "WATCHDOG=1");
  EXPECT_THAT(msg, HasSubstr("STOPPING=1"));
  EXPECT_EQ(daemon->Wait(), 0) << daemon->Log();
  ::close(fd);
}

TEST_F(DaemonTest, StalledSaveIsCancelledAndFreesTheRun) {
  std::string cfg = tmp_.Join("idle.toml");
  std::ofstream(cfg) << "[server]\nsave_idle_timeout_seconds = 1\n";
  auto daemon = StartDaemon({}, {"--config", cfg});
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("ri"));
  ASSERT_TRUE(run.ok());
  grpc::ClientContext ctx;
  v1::SaveResponse resp;
  auto writer = client->stub().Save(&ctx, &resp);
  // Then nothing: a hung trainer.
  ASSERT_TRUE(writer->Write(OneTensorHeader("ri", 100, 1 << 20, /*force=*/true)));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // it holds the run's save slot
  // Another save of the same run waits for the slot, then goes through.
  Model m(9.0f);
  auto next = (*run)->Save(200, m.Views(), {}, {.force = true});
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->checkpoint().step(), 200u);
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_THAT(daemon->Log(), HasSubstr("cancelling a save stream idle"));
  EXPECT_THAT(Names(Weights("ri")), UnorderedElementsAre("step_200.gguf", "latest"));
}

TEST_F(DaemonTest, ListensOnTcpWhenAsked) {
  // Port 0: the daemon picks a free one and its ready line names it.
  auto daemon =
      std::make_unique<DaemonProcess>(DaemonOptions{root_, {"--insecure"}, {}, "127.0.0.1:0"});
  daemon->Start();
  EXPECT_THAT(daemon->target(), ::testing::MatchesRegex("127\\.0\\.0\\.1:[1-9][0-9]*"));
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("tcp"));
  ASSERT_TRUE(run.ok()) << run.status();
  Model m(6.0f);
  auto r = (*run)->Save(100, m.Views());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->result(), v1::SaveResponse::RESULT_COMMITTED);
  EXPECT_FALSE(fs::exists(root_ + "/ckptd.sock"));
  EXPECT_EQ(daemon->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace ckptd::testing
