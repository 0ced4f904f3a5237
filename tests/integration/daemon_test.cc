// Black-box tests of the real ckptd binary through the real C++ client, on a
// temporary root and Unix socket (issue #3's acceptance list).
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

#include "health.grpc.pb.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/daemon_process.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  return out;
}

v1::MetadataEntry Entry(const std::string& key, const std::string& s) {
  v1::MetadataEntry e;
  e.set_key(key);
  e.mutable_value()->set_string_value(s);
  return e;
}

v1::MetadataEntry EntryU32(const std::string& key, uint32_t v) {
  v1::MetadataEntry e;
  e.set_key(key);
  e.mutable_value()->set_u32(v);
  return e;
}

// A small model: two f32 matrices filled from a seed.
struct Model {
  std::vector<float> embd, out, adam;
  explicit Model(float seed, size_t n = 4096) : embd(n), out(n / 2), adam(n) {
    for (size_t i = 0; i < embd.size(); ++i) embd[i] = seed + 0.001f * static_cast<float>(i);
    for (size_t i = 0; i < out.size(); ++i) out[i] = seed * 2 - 0.5f * static_cast<float>(i);
    for (size_t i = 0; i < adam.size(); ++i) adam[i] = seed / (1.0f + static_cast<float>(i));
  }
  std::vector<TensorView> Views(bool with_train = false) const {
    std::vector<TensorView> v = {
        {"token_embd.weight",
         v1::TENSOR_TYPE_F32,
         {64, embd.size() / 64},
         embd.data(),
         embd.size() * 4},
        {"output.weight", v1::TENSOR_TYPE_F32, {out.size()}, out.data(), out.size() * 4}};
    if (with_train) {
      v.push_back({"adam.m.token_embd",
                   v1::TENSOR_TYPE_F32,
                   {adam.size()},
                   adam.data(),
                   adam.size() * 4,
                   v1::TENSOR_GROUP_TRAIN});
    }
    return v;
  }
};

v1::OpenRunRequest OpenRequest(const std::string& run_id, uint64_t every_steps = 100) {
  v1::OpenRunRequest req;
  req.set_run_id(run_id);
  *req.add_model_metadata() = Entry("general.architecture", "llama");
  *req.add_model_metadata() = Entry("general.name", "tiny");
  *req.add_model_metadata() = EntryU32("llama.block_count", 2);
  req.mutable_provenance()->set_git_commit("abc123");
  req.mutable_provenance()->set_command_line("train.py --lr 3e-4");
  req.mutable_provenance()->set_seed(42);
  (*req.mutable_provenance()->mutable_framework_versions())["torch"] = "2.3.0";
  req.set_base_model_uuid("11111111-2222-8333-8444-555555555555");
  req.mutable_schedule()->set_every_steps(every_steps);
  req.mutable_schedule()->set_final_on_close(true);
  return req;
}

// The first message of a hand-made Save stream: one f32 tensor "w" of `floats` elements.
v1::SaveRequest OneTensorHeader(const std::string& run, uint64_t step, uint64_t floats,
                                bool force = false) {
  v1::SaveRequest msg;
  v1::SaveHeader* h = msg.mutable_header();
  h->set_run_id(run);
  h->set_step(step);
  h->set_force(force);
  auto* d = h->add_tensors();
  d->set_name("w");
  d->add_ne(floats);
  return msg;
}

using DaemonTest = DaemonFixture;

TEST_F(DaemonTest, SavesStepsWithLatestProvenanceAndContentUuids) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("r1"));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_FALSE((*run)->opened().resumed());

  std::vector<std::string> uuids;
  for (uint64_t step = 100; step <= 500; step += 100) {
    Model m(step == 300 ? 100.0f
                        : static_cast<float>(step));  // step 300 repeats step 100's weights
    auto r = (*run)->Save(step, m.Views(), {{"loss", 10.0 / static_cast<double>(step)}});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->result(), v1::SaveResponse::RESULT_COMMITTED) << r->reason();
    EXPECT_EQ(r->checkpoint().step(), step);
    EXPECT_TRUE(r->checkpoint().is_latest());
    EXPECT_GT(r->timings().committed_s(), 0);
    uuids.push_back(r->checkpoint().uuid());
  }
  EXPECT_THAT(Names(Weights("r1")),
              UnorderedElementsAre("step_100.gguf", "step_200.gguf", "step_300.gguf",
                                   "step_400.gguf", "step_500.gguf", "latest"));
  EXPECT_EQ(Latest("r1"), "step_500.gguf");
  EXPECT_EQ(uuids[0], uuids[2]);  // same tensors, same uuid
  EXPECT_NE(uuids[0], uuids[1]);
  EXPECT_EQ(std::set<std::string>(uuids.begin(), uuids.end()).size(), 4u);

  // Every file passes ckptctl verify.
  for (uint64_t step = 100; step <= 500; step += 100) {
    auto v = RunCommand(
        {CKPTCTL_BINARY, "verify", Weights("r1") + "/step_" + std::to_string(step) + ".gguf"});
    EXPECT_EQ(v.exit_code, 0) << v.err;
  }
  // @huggingface/gguf parses every file (run by a node script).
  std::vector<std::string> node = {NODE_BINARY, HF_CHECK_SCRIPT};
  for (uint64_t step = 100; step <= 500; step += 100) {
    node.push_back(Weights("r1") + "/step_" + std::to_string(step) + ".gguf");
  }
  auto hf = RunCommand(node, {{"NODE_PATH", NODE_PATH}});
  EXPECT_EQ(hf.exit_code, 0) << hf.out << hf.err;

  // Provenance keys, with their values.
  grpc::ClientContext ctx;
  v1::GetCheckpointRequest req;
  req.set_run_id("r1");
  req.set_step(400);
  v1::CheckpointDetail detail;
  ASSERT_TRUE(client->stub().GetCheckpoint(&ctx, req, &detail).ok());
  std::map<std::string, v1::MetadataValue> md;
  for (const auto& e : detail.metadata()) md[e.key()] = e.value();
  EXPECT_EQ(md["general.architecture"].string_value(), "llama");
  EXPECT_EQ(md["llama.block_count"].u32(), 2u);  // type kept as declared
  EXPECT_EQ(md["ckpt.role"].string_value(), "model");
  EXPECT_EQ(md["ckpt.run_id"].string_value(), "r1");
  EXPECT_EQ(md["ckpt.step"].u64(), 400u);
  EXPECT_THAT(md["ckpt.time_utc"].string_value(), ::testing::MatchesRegex("20[0-9-]+T[0-9:.]+Z"));
  EXPECT_EQ(md["ckpt.daemon.version"].string_value(), "0.1.0");
  EXPECT_FALSE(md["ckpt.daemon.host"].string_value().empty());
  EXPECT_EQ(md["ckpt.transport"].string_value(), "grpc-stream");
  EXPECT_EQ(md["ckpt.trainer.git_commit"].string_value(), "abc123");
  EXPECT_EQ(md["ckpt.trainer.command_line"].string_value(), "train.py --lr 3e-4");
  EXPECT_EQ(md["ckpt.trainer.seed"].u64(), 42u);
  EXPECT_EQ(md["ckpt.trainer.framework.torch"].string_value(), "2.3.0");
  EXPECT_DOUBLE_EQ(md["ckpt.metrics.loss"].f64(), 10.0 / 400);
  EXPECT_EQ(md["ckpt.parent_uuid"].string_value(), uuids[2]);
  EXPECT_EQ(md["general.base_model.count"].u32(), 1u);
  EXPECT_EQ(md["general.base_model.0.uuid"].string_value(), "11111111-2222-8333-8444-555555555555");
  EXPECT_EQ(md["general.uuid"].string_value(), uuids[3]);
  EXPECT_THAT(md["ckpt.content_digest"].string_value(), ::testing::StartsWith("xxh3-128:"));
  EXPECT_EQ(detail.tensors_size(), 2);
  EXPECT_EQ(detail.info().metrics().at("loss"), 10.0 / 400);

  // Resume after a restart: the catalog comes back from the file headers.
  EXPECT_EQ(daemon->Stop(SIGTERM), 0);
  daemon = StartDaemon();
  client = daemon->Connect();
  auto resumed = client->OpenRun(OpenRequest("r1"));
  ASSERT_TRUE(resumed.ok());
  EXPECT_TRUE((*resumed)->opened().resumed());
  EXPECT_EQ((*resumed)->opened().run().last_step(), 500u);
  EXPECT_EQ((*resumed)->opened().run().latest_file(),
            fs::canonical(Weights("r1")) / "step_500.gguf");
  auto latest = (*resumed)->Latest();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->first, 500u);
  grpc::ClientContext lctx;
  v1::ListCheckpointsRequest lreq;
  lreq.set_run_id("r1");
  lreq.set_page_size(2);
  v1::ListCheckpointsResponse page;
  ASSERT_TRUE(client->stub().ListCheckpoints(&lctx, lreq, &page).ok());
  ASSERT_EQ(page.checkpoints_size(), 2);
  EXPECT_EQ(page.checkpoints(0).step(), 100u);
  EXPECT_EQ(page.next_page_token(), "200");
  std::vector<uint64_t> steps;
  lreq.set_page_size(0);
  lreq.set_since_step(100);
  grpc::ClientContext lctx2;
  ASSERT_TRUE(client->stub().ListCheckpoints(&lctx2, lreq, &page).ok());
  for (const auto& c : page.checkpoints()) steps.push_back(c.step());
  EXPECT_EQ(steps, (std::vector<uint64_t>{200, 300, 400, 500}));
  EXPECT_EQ(page.checkpoints(3).uuid(), uuids[4]);
  EXPECT_TRUE(page.checkpoints(3).is_latest());
}

TEST_F(DaemonTest, ModelAndTrainFilesAreCommittedTogether) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("rt"));
  ASSERT_TRUE(run.ok());
  Model m(1.0f);
  SaveOptions opts;
  v1::MetadataEntry lr;
  lr.set_key("optimizer.lr");
  lr.mutable_value()->set_f32(3e-4f);
  opts.train_metadata.push_back(lr);
  auto r = (*run)->Save(100, m.Views(/*with_train=*/true), {}, opts);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->checkpoint().train_file(), HasSubstr("step_100.train.gguf"));
  EXPECT_THAT(Names(Weights("rt")),
              UnorderedElementsAre("step_100.gguf", "step_100.train.gguf", "latest"));
  grpc::ClientContext ctx;
  v1::GetCheckpointRequest req;
  req.set_run_id("rt");
  req.set_step(100);
  v1::CheckpointDetail detail;
  ASSERT_TRUE(client->stub().GetCheckpoint(&ctx, req, &detail).ok());
  EXPECT_EQ(detail.tensors_size(), 2);  // the model file holds model tensors only
  ASSERT_EQ(detail.train_tensors_size(), 1);
  EXPECT_EQ(detail.train_tensors(0).tensor().name(), "adam.m.token_embd");
  std::map<std::string, v1::MetadataValue> train_md;
  for (const auto& e : detail.train_metadata()) train_md[e.key()] = e.value();
  EXPECT_EQ(train_md["ckpt.model_content_digest"].string_value(), detail.info().content_digest());
  EXPECT_FLOAT_EQ(train_md["optimizer.lr"].f32(), 3e-4f);
  EXPECT_EQ(train_md["ckpt.role"].string_value(), "train");
}

// Killing the daemon at each rename of the commit leaves both files or neither.
class CrashDuringCommitTest : public DaemonTest,
                              public ::testing::WithParamInterface<std::pair<const char*, bool>> {};

TEST_P(CrashDuringCommitTest, BothOrNeitherAfterRestart) {
  const auto [fault, committed] = GetParam();
  {
    auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", fault}});
    auto client = daemon->Connect({.reconnect_timeout_s = 0});  // the daemon dies: fail at once
    auto run = client->OpenRun(OpenRequest("rc"));
    ASSERT_TRUE(run.ok());
    Model m(3.0f);
    auto r = (*run)->Save(100, m.Views(true));
    EXPECT_FALSE(r.ok());  // the daemon died mid-commit
    EXPECT_EQ(daemon->Wait(), 86) << daemon->Log();
  }
  auto daemon = StartDaemon();
  std::vector<std::string> names = Names(Weights("rc"));
  if (committed) {
    EXPECT_THAT(names, UnorderedElementsAre("step_100.gguf", "step_100.train.gguf", "latest"));
    EXPECT_EQ(Latest("rc"), "step_100.gguf");
  } else {
    EXPECT_THAT(names, ::testing::IsEmpty());
  }
  EXPECT_THAT(daemon->Log(), HasSubstr("recovery run=rc"));
}

INSTANTIATE_TEST_SUITE_P(
    Renames, CrashDuringCommitTest,
    // Renames: train -> .next 1, model 2 (the commit point), .next -> train 3, latest 4.
    // OpenRun's two state files (owner marker, settings) take the first two
    // syncs, renames and directory syncs of a fresh daemon.
    ::testing::Values(std::pair{"crash_before=rename:3", false},  // before the train rename
                      std::pair{"crash_before=rename:4", false},  // between train and model
                      std::pair{"crash_after=rename:4", true},    // model renamed, train waits
                      std::pair{"crash_before=syncdir:4", true},  // commit not yet fsynced
                      std::pair{"crash_before=rename:6", true}),  // train in place, latest not yet
    [](const auto& info) {
      std::string name = info.param.first;
      std::replace_if(
          name.begin(), name.end(), [](char c) { return !std::isalnum(c); }, '_');
      return name;
    });

TEST_F(DaemonTest, ScheduleSkipsForcesAndCloseWritesTheFinalSnapshot) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  v1::OpenRunRequest req = OpenRequest("rs", 100);
  req.mutable_schedule()->add_at_steps(150);
  req.mutable_schedule()->set_every_seconds(0.5);
  auto run = client->OpenRun(req);
  ASSERT_TRUE(run.ok());
  EXPECT_TRUE((*run)->ShouldSave(100)->due());
  EXPECT_TRUE((*run)->ShouldSave(150)->due());
  EXPECT_THAT((*run)->ShouldSave(120)->reason(), HasSubstr("not due"));
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  auto by_time = (*run)->ShouldSave(121);
  EXPECT_TRUE(by_time->due());
  EXPECT_THAT(by_time->reason(), HasSubstr("every_seconds=0.5"));

  Model m(5.0f);
  ASSERT_EQ((*run)->Save(100, m.Views())->result(), v1::SaveResponse::RESULT_COMMITTED);
  // Not due (and no time has passed since the commit): skipped, nothing written.
  auto skipped = (*run)->Save(120, m.Views());
  ASSERT_TRUE(skipped.ok());
  EXPECT_EQ(skipped->result(), v1::SaveResponse::RESULT_SKIPPED);
  // The server skips too when a client sends a not-due step anyway.
  grpc::ClientContext ctx;
  v1::SaveResponse resp;
  auto w = client->stub().Save(&ctx, &resp);
  StreamTensors(w.get(), OneTensorHeader("rs", 130, 4).header(), {}, 1);
  ASSERT_TRUE(w->Finish().ok());
  EXPECT_EQ(resp.result(), v1::SaveResponse::RESULT_SKIPPED);
  // Forced: written.
  ASSERT_EQ((*run)->Save(130, m.Views(), {}, {.force = true})->result(),
            v1::SaveResponse::RESULT_COMMITTED);
  // CloseRun with tensors: the final snapshot, then FINISHED.
  auto closed = (*run)->Close(137, m.Views(), {{"loss", 0.1}});
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->final_save().result(), v1::SaveResponse::RESULT_COMMITTED);
  EXPECT_EQ(closed->run().state(), v1::RUN_STATE_FINISHED);
  EXPECT_EQ(closed->run().last_step(), 137u);
  EXPECT_THAT(Names(Weights("rs")),
              UnorderedElementsAre("step_100.gguf", "step_130.gguf", "step_137.gguf", "latest"));
  // Closing again at an already committed step replaces it (the final
  // snapshot wins) rather than failing the close.
  auto reopened = client->OpenRun(req);
  ASSERT_TRUE(reopened.ok());
  Model final_weights(9.0f);
  auto again = (*reopened)->Close(137, final_weights.Views());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->final_save().result(), v1::SaveResponse::RESULT_COMMITTED);
  EXPECT_NE(again->final_save().checkpoint().uuid(), closed->final_save().checkpoint().uuid());
  // A finished run refuses saves until reopened.
  auto after = (*run)->Save(200, m.Views(), {}, {.force = true});
  EXPECT_EQ(after.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(DaemonTest, ClientDisconnectMidStreamLeavesNothing) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("rd"));
  Model m(7.0f);
  ASSERT_TRUE((*run)->Save(100, m.Views()).ok());
  ASSERT_EQ(Latest("rd"), "step_100.gguf");
  {
    grpc::ClientContext ctx;
    v1::SaveResponse resp;
    auto w = client->stub().Save(&ctx, &resp);
    ASSERT_TRUE(w->Write(OneTensorHeader("rd", 200, 1 << 20)));  // 4 MiB declared
    v1::SaveRequest data;
    data.set_data(std::string(1 << 20, 'x'));  // a quarter of it
    ASSERT_TRUE(w->Write(data));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ctx.TryCancel();
  }
  // The daemon notices, reports the failure and removes its temp file.
  std::string err;
  for (int i = 0; i < 100 && err.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    grpc::ClientContext ctx;
    v1::GetRunRequest req;
    req.set_run_id("rd");
    v1::RunInfo info;
    ASSERT_TRUE(client->stub().GetRun(&ctx, req, &info).ok());
    err = info.last_error();
  }
  EXPECT_THAT(err, HasSubstr("CANCELLED"));
  EXPECT_THAT(Names(Weights("rd")), UnorderedElementsAre("step_100.gguf", "latest"));
  EXPECT_EQ(Latest("rd"), "step_100.gguf");
}

TEST_F(DaemonTest, BadRequestsGetClearStatusesAndLeaveNothing) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto bad_id = client->OpenRun(OpenRequest("../evil"));
  EXPECT_EQ(bad_id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_id.status().message()), HasSubstr("run_id '../evil'"));
  v1::OpenRunRequest outside = OpenRequest("ro");
  outside.set_run_dir(tmp_.Join("elsewhere/ro"));
  auto out = client->OpenRun(outside);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("outside the configured roots"));
  fs::create_symlink(tmp_.path(), root_ + "/escape");
  outside.set_run_dir(root_ + "/escape/ro");
  EXPECT_EQ(client->OpenRun(outside).status().code(), absl::StatusCode::kPermissionDenied);
  v1::OpenRunRequest reserved = OpenRequest("rr");
  *reserved.add_model_metadata() = Entry("ckpt.step", "x");
  EXPECT_THAT(std::string(client->OpenRun(reserved).status().message()),
              HasSubstr("written by the daemon"));
  v1::OpenRunRequest narrow = OpenRequest("rr");
  v1::MetadataEntry e;
  e.set_key("x.small");
  e.mutable_value()->set_u8(300);
  *narrow.add_model_metadata() = e;
  EXPECT_THAT(std::string(client->OpenRun(narrow).status().message()),
              HasSubstr("300 does not fit in u8"));

  auto run = client->OpenRun(OpenRequest("rr"));
  ASSERT_TRUE(run.ok());
  Model m(1.0f);
  ASSERT_TRUE((*run)->Save(100, m.Views()).ok());
  auto again = (*run)->Save(100, m.Views(), {}, {.force = true});
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  auto bad_tensor = m.Views();
  bad_tensor[0].ne = {0};
  EXPECT_THAT(std::string((*run)->Save(200, bad_tensor).status().message()),
              HasSubstr("dim 0 is 0"));
  auto short_data = m.Views();
  short_data[1].bytes -= 4;  // declares more than it sends
  auto short_save = (*run)->Save(200, short_data);
  EXPECT_EQ(short_save.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(short_save.status().message()), HasSubstr("stream ended after"));
  auto long_data = m.Views();
  std::vector<float> longer(m.out.size() + 1);  // sends one float more than declared
  long_data[1].data = longer.data();
  long_data[1].bytes = longer.size() * 4;
  EXPECT_THAT(std::string((*run)->Save(200, long_data).status().message()),
              HasSubstr("past the last tensor"));

  grpc::ClientContext ctx;
  v1::GetRunRequest get;
  get.set_run_id("nope");
  v1::RunInfo info;
  EXPECT_EQ(client->stub().GetRun(&ctx, get, &info).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(Names(Weights("rr")), UnorderedElementsAre("step_100.gguf", "latest"));
  EXPECT_FALSE(fs::exists(tmp_.Join("elsewhere")));
}

TEST_F(DaemonTest, StreamingOneGibKeepsDaemonMemoryBounded) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("big"));
  ASSERT_TRUE(run.ok());
  const size_t n = size_t{1} << 30;
  std::vector<char> data(n);
  for (size_t i = 0; i < n; i += 4096) data[i] = static_cast<char>(i >> 12);
  std::vector<TensorView> views;
  for (int i = 0; i < 8; ++i) {
    views.push_back({"blk." + std::to_string(i) + ".weight",
                     v1::TENSOR_TYPE_F32,
                     {4096, (n / 8) / 4 / 4096},
                     data.data() + i * (n / 8),
                     n / 8});
  }
  auto r = (*run)->Save(100, views, {}, {.force = true});
  ASSERT_TRUE(r.ok()) << r.status();
  const uint64_t rss = daemon->PeakRssBytes();
  std::printf("daemon peak RSS while streaming 1 GiB: %.1f MiB (received %.2fs, durable %.2fs)\n",
              static_cast<double>(rss) / (1 << 20), r->timings().received_s(),
              r->timings().durable_s());
  RecordProperty("daemon_peak_rss_bytes", std::to_string(rss));
#ifndef CKPTD_SANITIZED
  EXPECT_LT(rss, 128u << 20);
#endif
  EXPECT_EQ(r->checkpoint().size_bytes(), fs::file_size(Weights("big") + "/step_100.gguf"));
}

TEST_F(DaemonTest, InvalidConfigExitsTwoWithFileAndLine) {
  struct Case {
    std::string text, want;
  };
  std::string blocker = tmp_.Join("a-file");
  std::ofstream(blocker) << "x";
  for (const Case& c : std::vector<Case>{
           {"[server]\nmax_threads = \"lots\"\n",
            ":2: server.max_threads: expected an integer, got a string"},
           {"[storage]\n\nroots = [\"/tmp\"]\nretain = 3\n", ":4: unknown key 'storage.retain'"},
           {"[storage]\nroots = [\"" + blocker + "/sub\"]\n",
            ":2: storage.roots: mkdir " + blocker + "/sub"}}) {
    std::string path = tmp_.Join("bad.toml");
    std::ofstream(path, std::ios::trunc) << c.text;
    auto r = RunCommand({CKPTD_BINARY, "--config", path});
    EXPECT_EQ(r.exit_code, 2) << c.text;
    EXPECT_THAT(r.err, HasSubstr(path + c.want));
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

TEST_F(DaemonTest, SigtermDuringASaveLetsItFinishThenExitsZero) {
  // A slow disk (5 ms per write call) keeps the save in flight while SIGTERM arrives.
  auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "delay=write:5"}});
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("rt"));
  ASSERT_TRUE(run.ok());
  std::vector<float> w(8 << 20);  // 32 MiB in 64 KiB chunks: ~500 writes
  std::thread saver([&] {
    auto r = (*run)->Save(100, {{"w", v1::TENSOR_TYPE_F32, {w.size()}, w.data(), w.size() * 4}}, {},
                          {.force = true, .chunk_bytes = 64 << 10});
    EXPECT_TRUE(r.ok()) << r.status();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ::kill(daemon->pid(), SIGTERM);
  saver.join();
  EXPECT_EQ(daemon->Wait(), 0) << daemon->Log();
  EXPECT_THAT(Names(Weights("rt")), UnorderedElementsAre("step_100.gguf", "latest"));
  EXPECT_THAT(daemon->Log(), HasSubstr("stopping"));
}

TEST_F(DaemonTest, SigtermPastTheDeadlineFailsTheSaveCleanly) {
  std::string cfg = tmp_.Join("short.toml");
  std::ofstream(cfg) << "[server]\nshutdown_deadline_seconds = 0.5\n";
  auto daemon = StartDaemon({}, {"--config", cfg});
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("rl"));
  ASSERT_TRUE(run.ok());
  grpc::ClientContext ctx;
  v1::SaveResponse resp;
  auto writer = client->stub().Save(&ctx, &resp);
  ASSERT_TRUE(writer->Write(OneTensorHeader("rl", 100, 1 << 20, /*force=*/true)));
  v1::SaveRequest data;
  data.set_data(std::string(4096, 'x'));
  ASSERT_TRUE(writer->Write(data));  // then the client stalls
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(daemon->pid(), SIGTERM);
  EXPECT_EQ(daemon->Wait(), 0) << daemon->Log();
  EXPECT_FALSE(writer->Finish().ok());
  EXPECT_THAT(Names(Weights("rl")), ::testing::IsEmpty());
}

TEST_F(DaemonTest, WatchRunStreamsCommitsAndFailures) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(OpenRequest("rw"));
  ASSERT_TRUE(run.ok());
  grpc::ClientContext ctx;
  v1::WatchRunRequest req;
  req.set_run_id("rw");
  auto reader = client->stub().WatchRun(&ctx, req);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // subscribed
  Model m(2.0f);
  ASSERT_TRUE((*run)->Save(100, m.Views()).ok());
  auto bad = m.Views();
  bad[1].bytes -= 4;
  EXPECT_FALSE((*run)->Save(200, bad).ok());
  v1::RunEvent e;
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::RunEvent::TYPE_COMMITTED);
  EXPECT_EQ(e.step(), 100u);
  EXPECT_TRUE(e.checkpoint().is_latest());
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::RunEvent::TYPE_FAILED);
  EXPECT_EQ(e.step(), 200u);
  EXPECT_THAT(e.error(), HasSubstr("stream ended after"));
  ctx.TryCancel();
}

}  // namespace
}  // namespace ckptd::testing

namespace ckptd::testing {
namespace {

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

}  // namespace
}  // namespace ckptd::testing

namespace ckptd::testing {
namespace {

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
  ::kill(daemon->pid(), SIGTERM);
  std::string msg;
  do {
    msg = receive();
  } while (msg == "WATCHDOG=1");
  EXPECT_THAT(msg, HasSubstr("STOPPING=1"));
  EXPECT_EQ(daemon->Wait(), 0);
  ::close(fd);
}

}  // namespace
}  // namespace ckptd::testing

namespace ckptd::testing {
namespace {

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

}  // namespace
}  // namespace ckptd::testing

namespace ckptd::testing {
namespace {

TEST_F(DaemonTest, ListensOnTcpWhenAsked) {
  const std::string listen = "127.0.0.1:" + std::to_string(20000 + ::getpid() % 20000);
  auto daemon = std::make_unique<DaemonProcess>(DaemonOptions{root_, {"--insecure"}, {}, listen});
  daemon->Start();
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

namespace ckptd::testing {
namespace {

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
      EXPECT_THAT(e.error(), HasSubstr("not kept by keep_last=3, keep_every_steps=200"));
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
  std::vector<std::string> want = {"latest"};
  for (uint64_t s = 1; s < step; ++s) want.push_back("step_" + std::to_string(s) + ".gguf");
  EXPECT_THAT(Names(Weights("k")), ::testing::UnorderedElementsAreArray(want));
  EXPECT_THAT(daemon->Log(), ::testing::Not(HasSubstr("disk guard deleted")));
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

namespace ckptd::testing {
namespace {

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

TEST_F(HttpTest, ServerSentEventsDeliverACommitWithinASecond) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::string req = "GET /v1/runs/web/events HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_GT(::write(fd, req.data(), req.size()), 0);
  std::string got;
  char buf[4096];
  auto read_until = [&](const std::string& what) {
    timeval tv{1, 0};  // the bound the issue asks for
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (got.find(what) == std::string::npos) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) return false;
      got.append(buf, static_cast<size_t>(n));
    }
    return true;
  };
  ASSERT_TRUE(read_until(": watching run web"));
  EXPECT_THAT(got, HasSubstr("Content-Type: text/event-stream"));
  Model m(2.0f, 1024);
  ASSERT_TRUE(run_->Save(400, m.Views()).ok());
  EXPECT_TRUE(read_until("event: committed\ndata: ")) << got;
  EXPECT_TRUE(read_until("\"step\":\"400\"")) << got;
  ::close(fd);
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

}  // namespace
}  // namespace ckptd::testing

namespace ckptd::testing {
namespace {

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
