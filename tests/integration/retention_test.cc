// Black-box tests of what a run keeps: retention with its deletions,
// pins, the pause on write errors, run directories, settings across
// restarts, the disk guard on a real full filesystem.
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
#include <regex>
#include <thread>

#include "tests/integration/daemon_helpers.h"
#include "tests/integration/daemon_process.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

v1::RetentionPlan Plan(Client& c, const std::string& run) {
  grpc::ClientContext ctx;
  v1::RetentionRequest req;
  req.set_run_id(run);
  v1::RetentionPlan plan;
  EXPECT_TRUE(c.stub().PlanRetention(&ctx, req, &plan).ok());
  return plan;
}

TEST_F(DaemonTest, RetentionKeepLastAndEveryStepsWithDeletionsOnWatchRun) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  v1::OpenRunRequest req = OpenRequest("ret");
  req.mutable_retention()->set_keep_last(3);
  req.mutable_retention()->set_keep_every_steps(200);
  auto run = client->OpenRun(req);
  ASSERT_TRUE(run.ok());
  grpc::ClientContext wctx;
  v1::WatchRunRequest wreq;
  wreq.set_run_id("ret");
  auto watch = client->stub().WatchRun(&wctx, wreq);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Model m(1.0f, 1024);
  for (uint64_t step = 100; step <= 1000; step += 100) {
    auto r = (*run)->Save(step, m.Views());
    ASSERT_TRUE(r.ok() && r->result() == v1::SaveResponse::RESULT_COMMITTED) << step;
  }
  EXPECT_THAT(Names(Weights("ret")),
              UnorderedElementsAre("step_200.gguf", "step_400.gguf", "step_600.gguf",
                                   "step_800.gguf", "step_900.gguf", "step_1000.gguf", "latest"));
  EXPECT_EQ(Latest("ret"), "step_1000.gguf");
  std::vector<uint64_t> deleted;
  v1::RunEvent e;
  while (deleted.size() < 4 && watch->Read(&e)) {
    if (e.type() == v1::RunEvent::TYPE_DELETED) {
      deleted.push_back(e.step());
      EXPECT_THAT(e.reason(), HasSubstr("not kept by keep_last=3, keep_every_steps=200"));
      EXPECT_EQ(e.error(), "");  // a deletion by the policy is not an error
    }
  }
  EXPECT_EQ(deleted, (std::vector<uint64_t>{100, 300, 500, 700}));
  wctx.TryCancel();
  // The plan explains every remaining checkpoint.
  auto plan = Plan(*client, "ret");
  ASSERT_EQ(plan.decisions_size(), 6);
  EXPECT_EQ(plan.decisions(5).reason(), "latest");
  EXPECT_EQ(plan.decisions(4).reason(), "keep_last=3");
  EXPECT_EQ(plan.decisions(0).reason(), "keep_every_steps=200");
  EXPECT_THAT(daemon->Log(), HasSubstr("retention deleted run=ret step=100"));
}

TEST_F(DaemonTest, PinsSurviveRestartsAndProtectFromRetention) {
  const std::string sock = "--socket=unix:" + root_ + "/ckptd.sock";
  {
    auto daemon = StartDaemon();
    auto client = daemon->Connect();
    v1::OpenRunRequest req = OpenRequest("pinr", 1);
    auto run = client->OpenRun(req);
    Model m(2.0f, 1024);
    ASSERT_TRUE((*run)->Save(1, m.Views()).ok());
    auto pin = RunCommand({CKPTCTL_BINARY, "pin", "pinr", "1", "--reason", "eval-2026-11", sock});
    ASSERT_EQ(pin.exit_code, 0) << pin.err;
    EXPECT_EQ(pin.out, "pinned step 1 of run pinr: eval-2026-11\n");
    EXPECT_EQ(RunCommand({CKPTCTL_BINARY, "pin", "pinr", "7", "--reason", "x", sock}).exit_code, 1);
    EXPECT_EQ(daemon->Stop(SIGTERM), 0);
  }
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  v1::OpenRunRequest req = OpenRequest("pinr", 1);
  req.mutable_retention()->set_keep_last(1);
  auto run = client->OpenRun(req);
  Model m(3.0f, 1024);
  ASSERT_TRUE((*run)->Save(2, m.Views()).ok());
  ASSERT_TRUE((*run)->Save(3, m.Views()).ok());
  // keep_last=1 would leave only 3; the pin keeps 1.
  EXPECT_THAT(Names(Weights("pinr")), UnorderedElementsAre("step_1.gguf", "step_3.gguf", "latest"));
  auto ls = RunCommand({CKPTCTL_BINARY, "ls", "pinr", "--json", sock});
  auto cps = nlohmann::json::parse(ls.out)["checkpoints"];
  ASSERT_EQ(cps.size(), 2u);
  EXPECT_EQ(cps[0]["pinned"], true);
  EXPECT_EQ(cps[0]["pin_reason"], "eval-2026-11");
  EXPECT_EQ(cps[0]["retention_reason"], "pinned: eval-2026-11");
  auto plan = RunCommand({CKPTCTL_BINARY, "retention", "plan", "pinr", sock});
  EXPECT_THAT(plan.out, HasSubstr("run pinr: keep_last=1"));
  EXPECT_THAT(plan.out, HasSubstr("pinned: eval-2026-11"));
  // Unpinned, the next apply deletes it.
  ASSERT_EQ(RunCommand({CKPTCTL_BINARY, "unpin", "pinr", "1", sock}).exit_code, 0);
  EXPECT_THAT(RunCommand({CKPTCTL_BINARY, "unpin", "pinr", "1", sock}).err,
              HasSubstr("not pinned"));
  auto apply = RunCommand({CKPTCTL_BINARY, "retention", "apply", "pinr", sock});
  EXPECT_THAT(apply.out, HasSubstr("1 deleted"));
  EXPECT_THAT(Names(Weights("pinr")), UnorderedElementsAre("step_3.gguf", "latest"));
}

TEST_F(DaemonTest, RetentionPausesWhileAWriteErrorIsUnresolved) {
  // The second save's fdatasync fails with EIO: a write error, not a client's
  // (OpenRun's owner marker and settings file take the first two syncs).
  auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "fail=sync:4:EIO"}});
  auto client = daemon->Connect();
  v1::OpenRunRequest req = OpenRequest("werr", 1);
  req.mutable_retention()->set_keep_last(1);
  auto run = client->OpenRun(req);
  Model m(4.0f, 1024);
  ASSERT_TRUE((*run)->Save(1, m.Views()).ok());
  auto failed = (*run)->Save(2, m.Views());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(failed.status().message()), HasSubstr("Input/output error"));
  auto plan = Plan(*client, "werr");
  EXPECT_THAT(plan.paused(), HasSubstr("paused while a write error is unresolved"));
  auto info = (*run)->Latest();
  grpc::ClientContext ctx;
  v1::GetRunRequest greq;
  greq.set_run_id("werr");
  v1::RunInfo ri;
  ASSERT_TRUE(client->stub().GetRun(&ctx, greq, &ri).ok());
  EXPECT_THAT(ri.write_error(), HasSubstr("Input/output error"));
  // A successful save clears it and retention resumes.
  ASSERT_TRUE((*run)->Save(3, m.Views()).ok());
  EXPECT_TRUE(Plan(*client, "werr").paused().empty());
  EXPECT_THAT(Names(Weights("werr")), UnorderedElementsAre("step_3.gguf", "latest"));
}

TEST_F(DaemonTest, ARunDirectoryBelongsToOneRunAcrossRestarts) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto victim = client->OpenRun(OpenRequest("victim", 1));
  ASSERT_TRUE(victim.ok()) << victim.status();
  Model m(1);
  ASSERT_TRUE((*victim)->Save(1, m.Views()).ok());
  auto open_at = [&](const std::string& id, const std::string& dir) {
    v1::OpenRunRequest req = OpenRequest(id, 1);
    req.set_run_dir(dir);
    return client->OpenRun(req).status();
  };
  auto expect_refused = [&](const std::string& id, const std::string& dir,
                            const std::string& fragment) {
    absl::Status st = open_at(id, dir);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition)
        << id << " at " << dir << ": " << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(fragment)) << id << " at " << dir;
  };
  const std::string victim_dir = root_ + "/victim";
  expect_refused("evil", victim_dir, "belongs to run 'victim'");
  expect_refused("evil", victim_dir + "/", "belongs to run 'victim'");
  expect_refused("evil", victim_dir + "/weights", "inside");
  expect_refused("evil", victim_dir + "/deeper/still", "the directory of run 'victim'");
  // The root itself: named as such, not as "outside the roots".
  for (const std::string& dir : {root_, root_ + "/"}) {
    absl::Status st = open_at("evil", dir);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("itself")) << st;
  }
  // A run with its own directory keeps it, and its id, across a restart;
  // the owner marker refuses everyone else even before the run is reopened.
  const std::string own_dir = root_ + "/shared-name";
  ASSERT_TRUE(open_at("mine", own_dir).ok());
  EXPECT_EQ(testing::ReadFile(own_dir + "/ckptd-run-id"), "mine\n");
  EXPECT_EQ(testing::ReadFile(victim_dir + "/ckptd-run-id"), "victim\n");
  expect_refused("shared-name", "", "belongs to run 'mine'");
  EXPECT_EQ(daemon->Stop(SIGKILL), 128 + SIGKILL);
  daemon = StartDaemon();
  client = daemon->Connect();
  expect_refused("evil", victim_dir, "belongs to run 'victim'");
  expect_refused("shared-name", "", "belongs to run 'mine'");
  expect_refused("evil", own_dir + "/x", "the directory of run 'mine'");
  EXPECT_TRUE(open_at("mine", "").ok());  // found again under its own id
  EXPECT_TRUE(open_at("victim", victim_dir).ok());
  // Nothing of the refused runs was created.
  EXPECT_FALSE(fs::exists(root_ + "/evil"));
  EXPECT_FALSE(fs::exists(victim_dir + "/deeper"));
  EXPECT_THAT(Names(Weights("victim")), UnorderedElementsAre("step_1.gguf", "latest"));
}

TEST_F(DaemonTest, ARunKeepsItsScheduleRetentionAndSavesAcrossRestarts) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  v1::OpenRunRequest req = OpenRequest("keep", 5);
  req.mutable_retention()->set_keep_last(2);
  auto run = client->OpenRun(req);
  ASSERT_TRUE(run.ok()) << run.status();
  Model m(1);
  ASSERT_TRUE((*run)->Save(5, m.Views()).ok());
  for (int sig : {SIGTERM, SIGKILL}) {
    EXPECT_EQ(daemon->Stop(sig), sig == SIGTERM ? 0 : 128 + SIGKILL);
    daemon = StartDaemon();
    client = daemon->Connect();
    // The same Run handle, through a new connection, without reopening.
    ckptd::Run same(client.get(), (*run)->opened());
    auto due = same.ShouldSave(10 + (sig == SIGKILL ? 5 : 0));
    ASSERT_TRUE(due.ok()) << due.status();
    EXPECT_TRUE(due->due()) << "after " << strsignal(sig) << ": " << due->reason();
    EXPECT_THAT(due->reason(), HasSubstr("every_steps=5"));
    auto not_due = same.ShouldSave(11);
    ASSERT_TRUE(not_due.ok());
    EXPECT_FALSE(not_due->due()) << not_due->reason();
    auto saved = same.Save(sig == SIGTERM ? 10 : 15, m.Views());
    ASSERT_TRUE(saved.ok()) << saved.status();
    EXPECT_EQ(saved->result(), v1::SaveResponse::RESULT_COMMITTED) << saved->reason();
  }
  // keep_last=2 still applies: 5 went when 15 committed.
  EXPECT_THAT(Names(Weights("keep")),
              UnorderedElementsAre("step_10.gguf", "step_15.gguf", "latest"));
  EXPECT_THAT(testing::ReadFile(root_ + "/keep/ckptd-run.json"), HasSubstr("\"keep_last\": 2"));
}

// A 64 MiB tmpfs as the daemon's root (unmounted when the result goes);
// null where tmpfs cannot be mounted (not root).
struct Unmount {
  std::string path;
  ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
};

class DiskGuardTest : public DaemonFixture {
 protected:
  std::unique_ptr<Unmount> SmallRoot() {
    std::string mnt = tmp_.Join("small");
    fs::create_directories(mnt);
    if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64m") != 0) return nullptr;
    root_ = mnt;
    auto unmount = std::make_unique<Unmount>();  // built in place: a temporary would unmount
    unmount->path = mnt;
    return unmount;
  }
};

TEST_F(DiskGuardTest, NeverDeletesWhatKeepEverythingKeepsAndRefusesClearly) {
  auto small = SmallRoot();
  if (!small) GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  std::string cfg = tmp_.Join("guard.toml");
  std::ofstream(cfg) << "[disk_guard]\nmin_free_bytes = 16777216\nmin_free_percent = 0\n";
  auto daemon = StartDaemon({}, {"--config", cfg});
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("k", 1));  // no retention rule: keep everything
  ASSERT_TRUE(run.ok());
  std::vector<float> w(10 << 18);  // 10 MiB
  std::vector<TensorView> ten = {{"w", v1::TENSOR_TYPE_F32, {w.size()}, w.data(), w.size() * 4}};
  // 64 MiB with 16 MiB kept free: 4 fit, the 5th is refused and nothing goes.
  uint64_t step = 1;
  absl::StatusOr<v1::SaveResponse> r;
  for (; step <= 8; ++step) {
    r = (*run)->Save(step, ten);
    if (!r.ok()) break;
  }
  ASSERT_FALSE(r.ok()) << "eight 10 MiB saves fit a 64 MiB filesystem that keeps 16 MiB free?";
  EXPECT_GE(step, 4u);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(r.status().message());
  EXPECT_THAT(msg, HasSubstr("run 'k' step " + std::to_string(step) + " needs"));
  EXPECT_THAT(msg, HasSubstr("never deletes a checkpoint the policy keeps"));
  EXPECT_THAT(msg, HasSubstr("disk_guard.on_full"));
  // Every term is named, and they add up.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      msg, m,
      std::regex("needs (\\d+) bytes \\(its files\\) \\+ (\\d+) \\(margin for filesystem "
                 "metadata\\) \\+ (\\d+) the disk guard keeps free \\(the larger of "
                 "disk_guard.min_free_bytes = 16777216 and disk_guard.min_free_percent = 0% of "
                 "\\d+\\) = (\\d+) bytes, but \\S+ has (\\d+) free: (\\d+) short")))
      << msg;
  auto n = [&](int i) { return std::stoull(m[i].str()); };
  EXPECT_EQ(n(3), 16777216u);
  EXPECT_EQ(n(1) + n(2) + n(3), n(4)) << msg;
  EXPECT_EQ(n(4) - n(5), n(6)) << msg;
  std::vector<std::string> want = {"latest"};
  for (uint64_t s = 1; s < step; ++s) want.push_back("step_" + std::to_string(s) + ".gguf");
  EXPECT_THAT(Names(Weights("k")), ::testing::UnorderedElementsAreArray(want));
  EXPECT_THAT(daemon->Log(), ::testing::Not(HasSubstr("disk guard deleted")));
  // What the disk-guard alert watches, and the overdue alert's clock.
  const std::string metrics = HttpGet(daemon->HttpPort(), "/metrics").body;
  EXPECT_THAT(metrics, HasSubstr("ckptd_disk_guard_refusals_total{run=\"k\"} 1\n"));
  EXPECT_THAT(metrics, HasSubstr("ckptd_last_commit_or_open_timestamp_seconds{run=\"k\"} "));
}

TEST_F(DiskGuardTest, PrunesOldestWhenOptedInThenRefusesBeforeWriting) {
  auto small = SmallRoot();
  if (!small) GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  std::string cfg = tmp_.Join("guard.toml");
  std::ofstream(cfg) << "[disk_guard]\nmin_free_bytes = 16777216\nmin_free_percent = 0\n"
                        "on_full = \"prune_oldest\"\n";
  auto daemon = StartDaemon({}, {"--config", cfg});
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("g", 1));  // no retention rule: keep everything
  ASSERT_TRUE(run.ok());
  std::vector<float> w(10 << 18);  // 10 MiB
  std::vector<TensorView> ten = {{"w", v1::TENSOR_TYPE_F32, {w.size()}, w.data(), w.size() * 4}};
  // 64 MiB with 16 MiB kept free: 4 fit; later saves prune the oldest.
  for (uint64_t step = 1; step <= 8; ++step) {
    auto r = (*run)->Save(step, ten);
    ASSERT_TRUE(r.ok()) << "step " << step << ": " << r.status();
  }
  auto names = Names(Weights("g"));
  EXPECT_LE(names.size(), 5u);
  EXPECT_THAT(names, ::testing::Contains("step_8.gguf"));
  EXPECT_THAT(daemon->Log(), HasSubstr("disk guard deleted run=g step=1"));
  // Pin everything but latest: nothing can be pruned, so a save is refused
  // before a byte is written, and nothing is touched.
  for (const auto& n : names) {
    auto parsed = n.find("step_") == 0 ? std::stoull(n.substr(5)) : 0;
    if (parsed == 0 || parsed == 8) continue;
    grpc::ClientContext ctx;
    v1::PinRequest pin;
    pin.set_run_id("g");
    pin.set_step(parsed);
    pin.set_reason("keep");
    v1::CheckpointInfo info;
    ASSERT_TRUE(client->stub().Pin(&ctx, pin, &info).ok());
  }
  auto before = Names(Weights("g"));
  auto refused = (*run)->Save(9, ten);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(refused.status().message());
  EXPECT_THAT(msg, HasSubstr("run 'g' step 9 needs"));
  EXPECT_THAT(msg, HasSubstr("disk_guard.min_free_bytes"));
  EXPECT_THAT(msg, HasSubstr("Nothing was written or deleted"));
  EXPECT_THAT(Names(Weights("g")), ::testing::UnorderedElementsAreArray(before));
  EXPECT_EQ(Latest("g"), "step_8.gguf");
}

}  // namespace
}  // namespace ckptd::testing
