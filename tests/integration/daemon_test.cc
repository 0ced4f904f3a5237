// Black-box tests of the real ckptd binary through the real C++ client, on a
// temporary root and Unix socket: the save path, commits, crashes during
// them, schedules, refusals, memory, signals, WatchRun.
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

#include "ckptd/restore.h"
#include "tests/integration/daemon_helpers.h"
#include "tests/integration/daemon_process.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

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

// The daemon reads a data message of the plain form (only `data`) straight
// from gRPC's buffers and leaves every other form to protobuf: both give the
// same bytes, and whatever is not data is refused by name, leaving nothing.
TEST_F(DaemonTest, DataMessagesOfEveryFormAreReadExactlyAndTheRestRefused) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  ASSERT_TRUE(client->OpenRun(OpenRequest("rf")).ok());
  const uint64_t floats = 3 << 18;  // 3 MiB
  std::string want(floats * 4, '\0');
  for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<char>((i * 131) >> 3);
  {
    grpc::ClientContext ctx;
    v1::SaveResponse resp;
    auto w = client->stub().Save(&ctx, &resp);
    ASSERT_TRUE(w->Write(OneTensorHeader("rf", 100, floats, true)));
    size_t at = 0;
    auto send = [&](size_t n, bool unknown_field) {
      v1::SaveRequest data;
      data.set_data(want.substr(at, n));
      // An unknown field makes the message protobuf's to read.
      if (unknown_field) data.GetReflection()->MutableUnknownFields(&data)->AddVarint(99, 1);
      at += n;
      return w->Write(data);
    };
    ASSERT_TRUE(send(1 << 20, false));
    ASSERT_TRUE(send(0, false));
    ASSERT_TRUE(send(12345, true));
    ASSERT_TRUE(send(1, false));
    ASSERT_TRUE(send(want.size() - at, true));
    ASSERT_TRUE(w->WritesDone());
    grpc::Status st = w->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  auto restore = Restore::Open(Weights("rf") + "/step_100.gguf");
  ASSERT_TRUE(restore.ok()) << restore.status();
  std::string got(want.size(), 'z');
  ASSERT_TRUE((*restore)->ReadInto("w", got.data(), got.size()).ok());
  EXPECT_TRUE(got == want) << "the saved bytes differ from the sent ones";

  // A raw stream: each message exactly the bytes given.
  auto refused = [&](const std::string& second, const std::string& what) {
    grpc::ClientContext ctx;
    v1::SaveResponse resp;
    const grpc::internal::RpcMethod save("/ckptd.v1.Checkpointd/Save",
                                         grpc::internal::RpcMethod::CLIENT_STREAMING);
    std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> w(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(client->channel(), save, &ctx,
                                                                      &resp));
    for (const std::string& bytes :
         {OneTensorHeader("rf", 200, 1024, true).SerializeAsString(), second}) {
      grpc::Slice slice(bytes);
      if (!w->Write(grpc::ByteBuffer(&slice, 1))) break;
    }
    w->WritesDone();
    grpc::Status st = w->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(what));
  };
  refused(OneTensorHeader("rf", 200, 1024, true).SerializeAsString(),
          "one header, then data messages only");
  refused(std::string("\x0f\x01", 2), "could not be decoded");  // wire type 7 does not exist
  EXPECT_THAT(Names(Weights("rf")), UnorderedElementsAre("step_100.gguf", "latest"));
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
