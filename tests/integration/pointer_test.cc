// Black-box tests of the pointer path: the daemon reads the trainer's own
// memory, only that process's, only while attached; refusals recorded
// alike on every path.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "tests/integration/shm_helpers.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

TEST_F(PointerTest, PointerSaveWritesTheSameBytesAndUuidAsAStreamSave) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto ptr_run = client->OpenRun(Open("via-ptr"));
  auto stream_run = client->OpenRun(Open("via-stream"));
  ASSERT_TRUE(ptr_run.ok() && stream_run.ok());
  std::vector<std::string> notices;
  auto cp = Checkpointer::Create(
      ptr_run->get(),
      {.pointers = true, .log = [&](const std::string& l) { notices.push_back(l); }});
  ASSERT_OK(cp.status());
  EXPECT_TRUE((*cp)->stats().pointers) << (notices.empty() ? "" : notices[0]);
  for (uint64_t step : {100, 200}) {
    Tensors t(static_cast<float>(step), {3 << 20, 12345, 7}, /*with_train=*/true);
    auto staged = (*cp)->MaybeSave(step, t.views, {{"loss", 2.5}});
    ASSERT_OK(staged.status());
    EXPECT_TRUE(*staged);
    // Read in full when MaybeSave returns: the trainer may overwrite its tensors.
    for (auto& d : t.data) std::fill(d.begin(), d.end(), -1.0f);
    Tensors same(static_cast<float>(step), {3 << 20, 12345, 7}, true);
    auto saved = (*stream_run)->Save(step, same.views, {{"loss", 2.5}});
    ASSERT_OK(saved.status());
    ASSERT_EQ(saved->result(), v1::SaveResponse::RESULT_COMMITTED);
  }
  EXPECT_FALSE(*(*cp)->MaybeSave(150, Tensors(1, {10}).views));
  ASSERT_OK((*cp)->Wait());
  EXPECT_EQ((*cp)->stats().saves, 2u);
  EXPECT_EQ((*cp)->stats().skipped, 1u);
  for (const char* name : {"step_100.gguf", "step_200.gguf", "step_200.train.gguf"}) {
    SCOPED_TRACE(name);
    ParsedFile a = Parse(Weights("via-ptr") + "/" + name);
    ParsedFile b = Parse(Weights("via-stream") + "/" + name);
    EXPECT_EQ(a.Data(), b.Data());
    EXPECT_EQ(a.Meta("ckpt.content_digest"), b.Meta("ckpt.content_digest"));
    if (std::string(name).find("train") == std::string::npos) {
      EXPECT_EQ(a.Meta("general.uuid"), b.Meta("general.uuid"));
      EXPECT_EQ(a.Meta("ckpt.transport"), "pointer");
    }
  }
  Tensors last(300.0f, {1 << 20});
  auto closed = (*cp)->Close(250, last.views, {{"loss", 1.5}});
  ASSERT_OK(closed.status());
  EXPECT_EQ(closed->final_save().result(), v1::SaveResponse::RESULT_COMMITTED);
  EXPECT_EQ(Parse(Weights("via-ptr") + "/step_250.gguf").Meta("ckpt.transport"), "pointer");
  EXPECT_EQ(closed->run().state(), v1::RUN_STATE_FINISHED);
}

// A fresh XFS (reflink on) on a loop device mounted at `dir` for one test,
// unmounted at the end; `why()` says why not where it cannot be had.
class XfsAt {
 public:
  explicit XfsAt(std::string dir) : dir_(std::move(dir)), image_(dir_ + ".img") {
    if (::geteuid() != 0) {
      why_ = "mounting a loop device needs root";
      return;
    }
    const std::string make =
        "truncate -s 512M " + image_ + " && timeout 60 mkfs.xfs -q -m reflink=1 " + image_ +
        " >/dev/null 2>&1 && timeout 60 mount -o loop " + image_ + " " + dir_ + " >/dev/null 2>&1";
    if (std::system(make.c_str()) != 0) {
      why_ = "no XFS on a loop device here (scripts/install-deps.sh installs xfsprogs)";
      return;
    }
    mounted_ = true;
  }
  ~XfsAt() {
    for (int i = 0; mounted_ && i < 20; ++i) {  // an exiting daemon may still hold a file
      if (std::system(("timeout 30 umount " + dir_ + " >/dev/null 2>&1").c_str()) == 0) break;
      ::usleep(500'000);
    }
    std::remove(image_.c_str());
  }
  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }

 private:
  std::string dir_, image_, why_;
  bool mounted_ = false;
};

// On a file system that shares extents, a pointer save hashes each tensor
// that may equal the previous checkpoint's first (a second read of the
// trainer's memory) and shares it when it does; the file is the bytes a
// plain stream save writes.
TEST_F(PointerTest, TensorsEqualToThePreviousCheckpointsAreHashedFirstAndShared) {
  XfsAt xfs(root_);
  if (!xfs.mounted()) GTEST_SKIP() << xfs.why();
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto ptr_run = client->OpenRun(Open("ft", 1));
  auto stream_run = client->OpenRun(Open("plain", 1));
  ASSERT_TRUE(ptr_run.ok() && stream_run.ok());
  auto cp = Checkpointer::Create(ptr_run->get(), {.pointers = true});
  ASSERT_OK(cp.status());
  ASSERT_TRUE((*cp)->stats().pointers);
  Tensors t(1.0f, {3 << 20, 1 << 20, 1000});  // two frozen tensors, one that trains
  for (uint64_t step : {1, 2, 3}) {
    t.data[2][0] = static_cast<float>(step);
    auto staged = (*cp)->MaybeSave(step, t.views);
    ASSERT_OK(staged.status());
    ASSERT_TRUE(*staged);
    ASSERT_OK((*cp)->Wait());
    auto saved = (*stream_run)->Save(step, t.views);
    ASSERT_OK(saved.status());
  }
  const uint64_t frozen = (3u << 20) * 4 + (1u << 20) * 4;
  for (const char* name : {"step_2.gguf", "step_3.gguf"}) {
    SCOPED_TRACE(name);
    ParsedFile a = Parse(Weights("ft") + "/" + name);
    ParsedFile b = Parse(Weights("plain") + "/" + name);
    EXPECT_EQ(a.Data(), b.Data());
    EXPECT_EQ(a.Meta("ckpt.content_digest"), b.Meta("ckpt.content_digest"));
    EXPECT_EQ(a.Meta("ckpt.transport"), "pointer");
    EXPECT_GE(std::stoull(a.Meta("ckpt.shared_bytes")), frozen);
    EXPECT_EQ(b.Meta("ckpt.shared_bytes"), "0") << "a stream save writes every byte";
  }
}

// A pointer save is read when MaybeSave returns true and committed later;
// the trainer's tensors move on at once. When the daemon dies in between,
// those steps are gone with it, and the next Wait() (or Close()) says so,
// naming each of them, while the saves after the restart commit: every save
// that returned true commits or is reported, never dropped.
TEST_F(PointerTest, APointerSaveLostWithTheDaemonIsReportedByWaitAndByClose) {
  for (const bool by_close : {false, true}) {
    SCOPED_TRACE(by_close ? "Close" : "Wait");
    const std::string id = by_close ? "lost-close" : "lost-wait";
    // Slow writes: the daemon is killed right after reading step 200, long
    // before it could commit it (step 100 may or may not be committed by then).
    auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "delay=write:500"}});
    auto client = Client::Connect(daemon->target(), {.reconnect_timeout_s = 30});
    ASSERT_OK(client.status());
    auto run = (*client)->OpenRun(Open(id));
    ASSERT_OK(run.status());
    auto cp = Checkpointer::Create(run->get(), {.pointers = true});
    ASSERT_OK(cp.status());
    ASSERT_TRUE((*cp)->stats().pointers);
    for (uint64_t step : {100, 200}) {
      Tensors t(static_cast<float>(step), {1 << 20});
      auto staged = (*cp)->MaybeSave(step, t.views);
      ASSERT_OK(staged.status());
      ASSERT_TRUE(*staged);
    }
    daemon->Stop(SIGKILL);
    daemon = StartDaemon();
    Tensors next(3.0f, {1 << 18});
    auto later = (*cp)->MaybeSave(300, next.views);
    ASSERT_OK(later.status());
    EXPECT_TRUE(*later);
    absl::Status reported;
    if (by_close) {
      Tensors last(4.0f, {1 << 18});
      reported = (*cp)->Close(400, last.views).status();
    } else {
      reported = (*cp)->Wait();
    }
    EXPECT_EQ(reported.code(), absl::StatusCode::kDataLoss) << reported;
    const std::string message(reported.message());
    EXPECT_THAT(message, HasSubstr("step 200:"));
    EXPECT_THAT(message, HasSubstr("not on disk"));
    for (uint64_t step : {100, 200}) {  // on disk or reported: exactly one of them
      const std::string name = "step_" + std::to_string(step) + ".gguf";
      const bool reported_lost = message.find("step " + std::to_string(step) + ":") != message.npos;
      EXPECT_NE(fs::exists(Weights(id) + "/" + name), reported_lost) << name;
    }
    EXPECT_TRUE(fs::exists(Weights(id) + "/step_300.gguf"));
    if (!by_close) {
      EXPECT_OK((*cp)->Wait());  // reported once
    }
    daemon->Stop(SIGTERM);
  }
}

TEST_F(PointerTest, AnUnreadableAddressFailsTheSaveAndLeavesNothing) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("bad-ptr"));
  ASSERT_TRUE(run.ok());
  auto channel = ArenaChannel::Connect((*run)->opened().arena_socket());
  ASSERT_OK(channel.status());
  auto attached = (*channel)->Attach((*run)->opened().arena_token());
  ASSERT_OK(attached.status());
  // Pages the trainer may not read either (PROT_NONE).
  const size_t bytes = 1 << 20;
  void* none = ::mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(none, MAP_FAILED);
  Tensors t(1.0f, {1000, bytes / 4});
  t.views[1].data = none;
  auto r = (*run)->SavePointers(100, t.views, *attached, {}, {.force = true});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("tensors[1]"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("not readable memory"));
  EXPECT_TRUE(Files("bad-ptr").empty()) << Files("bad-ptr")[0];
  ::munmap(none, bytes);
  // The same attachment then saves fine.
  Tensors good(2.0f, {1000, 1024});
  auto ok = (*run)->SavePointers(100, good.views, *attached, {}, {.force = true});
  ASSERT_OK(ok.status());
  auto w = (*run)->WaitSaved(ok->save_id(), 30);
  ASSERT_OK(w.status());
  EXPECT_EQ(w->state(), v1::WaitSavedResponse::STATE_COMMITTED) << w->error();
}

TEST_F(PointerTest, OnlyTheAttachedProcessWhileConnectedAndOnlyItsRun) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("owner"));
  auto other = client->OpenRun(Open("other"));
  ASSERT_TRUE(run.ok() && other.ok());
  auto channel = ArenaChannel::Connect((*run)->opened().arena_socket());
  ASSERT_OK(channel.status());
  auto attached = (*channel)->Attach((*run)->opened().arena_token());
  ASSERT_OK(attached.status());
  Tensors t(1.0f, {1000});
  // Naming the attachment without its key (as another process would): refused.
  PointerAttachment forged{attached->id, "0123456789abcdef0123456789abcdef"};
  auto r = (*run)->SavePointers(100, t.views, forged, {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("only the process that attached"));
  // Another run's save cannot use it.
  r = (*other)->SavePointers(100, t.views, *attached, {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("belongs to run 'owner'"));
  EXPECT_TRUE(Files("owner").empty());
  // Once its connection closes the attachment is gone (a save racing the
  // daemon's notice of the close may still go through: that is the trainer's).
  channel->reset();
  EXPECT_TRUE(Eventually([&] {
    auto gone = (*run)->SavePointers(100, t.views, *attached, {}, {.force = true});
    return gone.status().code() == absl::StatusCode::kNotFound;
  }));
  EXPECT_TRUE(Files("other").empty());
}

TEST_F(PointerTest, TheDaemonsPrivateMemoryStaysBounded) {
#ifdef CKPTD_SANITIZED
  GTEST_SKIP() << "a sanitized daemon's RSS is mostly shadow memory";
#endif
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("big-ptr"));
  ASSERT_TRUE(run.ok());
  auto cp = Checkpointer::Create(run->get(), {.pointers = true});
  ASSERT_OK(cp.status());
  ASSERT_TRUE((*cp)->stats().pointers);
  Tensors warm(1.0f, {1 << 20});
  ASSERT_OK((*cp)->Save(1, warm.views).status());
  ASSERT_OK((*cp)->Wait());
  const uint64_t before = PeakRssBytes(daemon->pid());
  Tensors big(2.0f, {32 << 20, 32 << 20});  // 256 MiB in the trainer
  ASSERT_OK((*cp)->Save(2, big.views).status());
  ASSERT_OK((*cp)->Wait());
  const uint64_t after = PeakRssBytes(daemon->pid());
  EXPECT_LT(after - before, 48u << 20) << "peak RSS " << (before >> 20) << " -> " << (after >> 20)
                                       << " MiB for a 256 MiB pointer save";
  EXPECT_EQ(Parse(Weights("big-ptr") + "/step_2.gguf").Meta("ckpt.transport"), "pointer");
}

// A refusal is recorded the same way whatever the path: the log line, the
// run's last error, the failed-save count.
TEST_F(PointerTest, RefusalsAreRecordedAlikeOnEveryPath) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("refusals"));
  ASSERT_TRUE(run.ok());
  Tensors t(1.0f, {1000});
  ASSERT_OK((*run)->Save(100, t.views, {}, {.force = true}).status());
  auto last_error = [&] {
    grpc::ClientContext ctx;
    v1::GetRunRequest req;
    req.set_run_id("refusals");
    v1::RunInfo info;
    EXPECT_TRUE(client->stub().GetRun(&ctx, req, &info).ok());
    return info.last_error();
  };
  auto count = [&] {
    const std::string log = daemon->Log();
    size_t n = 0;
    for (size_t at = log.find("save failed run=refusals step=100"); at != std::string::npos;
         at = log.find("save failed run=refusals step=100", at + 1)) {
      ++n;
    }
    return n;
  };
  auto stream = (*run)->Save(100, t.views, {}, {.force = true});
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(last_error(), HasSubstr("ALREADY_EXISTS"));
  EXPECT_EQ(count(), 1u);

  auto arena = Arena::Create(1 << 20);
  auto channel = ArenaChannel::Connect((*run)->opened().arena_socket());
  ASSERT_TRUE(arena.ok() && channel.ok());
  auto id = (*channel)->Register((*arena)->fd(), (*run)->opened().arena_token());
  ASSERT_OK(id.status());
  v1::TensorLocation loc;
  loc.set_arena_id(*id);
  auto shared = (*run)->SaveShared(100, t.views, {loc}, {}, {.force = true});
  EXPECT_EQ(shared.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(count(), 2u);

  auto attached = (*channel)->Attach((*run)->opened().arena_token());
  ASSERT_OK(attached.status());
  auto pointers = (*run)->SavePointers(100, t.views, *attached, {}, {.force = true});
  EXPECT_EQ(pointers.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(count(), 3u) << daemon->Log();
  EXPECT_THAT(last_error(), HasSubstr("step 100 is already committed"));
}

}  // namespace
}  // namespace ckptd::testing
