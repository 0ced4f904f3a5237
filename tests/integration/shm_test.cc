// Black-box tests of the shared-memory path: the real daemon, the real
// client library, real memfds and SCM_RIGHTS; hot restore, double
// buffering, huge pages, the stream fallback, refusals.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tests/integration/shm_helpers.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

TEST_F(ShmTest, SharedSaveWritesTheSameTensorsAndUuidAsAStreamSave) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto shm_run = client->OpenRun(Open("via-shm"));
  auto stream_run = client->OpenRun(Open("via-stream"));
  ASSERT_TRUE(shm_run.ok() && stream_run.ok());
  EXPECT_FALSE((*shm_run)->opened().arena_token().empty());
  EXPECT_EQ((*shm_run)->opened().arena_socket(), daemon->socket() + ".arenas");

  std::vector<std::string> notices;
  auto cp = Checkpointer::Create(shm_run->get(),
                                 {.log = [&](const std::string& l) { notices.push_back(l); }});
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_TRUE((*cp)->stats().shared_memory) << (notices.empty() ? "" : notices[0]);
  for (uint64_t step : {100, 200}) {
    Tensors t(static_cast<float>(step), {3 << 20, 12345, 7}, /*with_train=*/true);
    auto staged = (*cp)->MaybeSave(step, t.views, {{"loss", 2.5}});
    ASSERT_TRUE(staged.ok()) << staged.status();
    EXPECT_TRUE(*staged);
    auto saved = (*stream_run)->Save(step, t.views, {{"loss", 2.5}});
    ASSERT_TRUE(saved.ok()) << saved.status();
    ASSERT_EQ(saved->result(), v1::SaveResponse::RESULT_COMMITTED);
  }
  auto not_due = (*cp)->MaybeSave(150, Tensors(1, {10}).views);
  ASSERT_TRUE(not_due.ok());
  EXPECT_FALSE(*not_due);
  absl::Status waited = (*cp)->Wait();
  ASSERT_TRUE(waited.ok()) << waited;
  EXPECT_EQ((*cp)->stats().saves, 2u);
  EXPECT_EQ((*cp)->stats().skipped, 1u);
  ASSERT_EQ((*cp)->finished().size(), 2u);
  EXPECT_EQ((*cp)->finished()[1].state(), v1::WaitSavedResponse::STATE_COMMITTED);
  EXPECT_EQ((*cp)->finished()[1].checkpoint().step(), 200u);

  for (const char* name : {"step_100.gguf", "step_200.gguf", "step_200.train.gguf"}) {
    SCOPED_TRACE(name);
    ParsedFile a = Parse(Weights("via-shm") + "/" + name);
    ParsedFile b = Parse(Weights("via-stream") + "/" + name);
    EXPECT_EQ(a.Data(), b.Data());  // same tensor bytes, same layout
    ASSERT_EQ(a.header.tensors.size(), b.header.tensors.size());
    for (size_t i = 0; i < a.header.tensors.size(); ++i) {
      EXPECT_EQ(a.header.tensors[i].name, b.header.tensors[i].name);
      EXPECT_EQ(a.header.tensors[i].ne, b.header.tensors[i].ne);
      EXPECT_EQ(a.header.tensors[i].offset, b.header.tensors[i].offset);
    }
    EXPECT_EQ(a.Meta("ckpt.content_digest"), b.Meta("ckpt.content_digest"));
    if (std::string(name).find("train") == std::string::npos) {
      EXPECT_EQ(a.Meta("general.uuid"), b.Meta("general.uuid"));
      EXPECT_NE(a.Meta("general.uuid"), "<missing>");
      EXPECT_EQ(a.Meta("ckpt.transport"), "shm");
      EXPECT_EQ(b.Meta("ckpt.transport"), "grpc-stream");
    }
  }
  EXPECT_EQ(fs::read_symlink(Weights("via-shm") + "/latest"), "step_200.gguf");
  // The shm saves' 12 MiB tensor (page-aligned in the arena and in the file)
  // went to disk straight from the arena; the stream path copies everything.
  const std::string metrics = HttpGet(daemon->HttpPort(), "/metrics").body;
  auto zero_copy = [&](const std::string& run) -> uint64_t {
    const std::string key = "ckptd_zero_copy_bytes_total{run=\"" + run + "\"} ";
    const size_t at = metrics.find(key);
    return at == std::string::npos ? UINT64_MAX : std::stoull(metrics.substr(at + key.size()));
  };
  EXPECT_EQ(zero_copy("via-shm"), 2u * (12 << 20)) << metrics;
  EXPECT_EQ(zero_copy("via-stream"), 0u);

  // The final snapshot goes through shared memory too, then the run ends.
  Tensors last(300.0f, {1 << 20});
  auto closed = (*cp)->Close(250, last.views, {{"loss", 1.5}});
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->run().state(), v1::RUN_STATE_FINISHED);
  EXPECT_EQ(closed->final_save().result(), v1::SaveResponse::RESULT_COMMITTED);
  EXPECT_EQ(closed->final_save().checkpoint().step(), 250u);
  EXPECT_EQ(Parse(Weights("via-shm") + "/step_250.gguf").Meta("ckpt.transport"), "shm");
  EXPECT_EQ(fs::read_symlink(Weights("via-shm") + "/latest"), "step_250.gguf");
}

TEST_F(ShmTest, UnsealedOrForeignFdsAndBadTokensAreRefused) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("seals"));
  ASSERT_TRUE(run.ok());
  const std::string token = (*run)->opened().arena_token();
  const int fds_before = daemon->OpenFds();
  {
    auto channel = ArenaChannel::Connect((*run)->opened().arena_socket());
    ASSERT_TRUE(channel.ok()) << channel.status();

    int unsealed = ::memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ASSERT_EQ(::ftruncate(unsealed, 1 << 20), 0);
    auto r = (*channel)->Register(unsealed, token);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("not sealed against resizing"));
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("F_SEAL_SHRINK | F_SEAL_GROW"));

    int shrink_only = ::memfd_create("shrink-only", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ASSERT_EQ(::ftruncate(shrink_only, 1 << 20), 0);
    ASSERT_EQ(::fcntl(shrink_only, F_ADD_SEALS, F_SEAL_SHRINK), 0);
    EXPECT_EQ((*channel)->Register(shrink_only, token).status().code(),
              absl::StatusCode::kFailedPrecondition);

    int no_sealing = ::memfd_create("no-sealing", MFD_CLOEXEC);
    ASSERT_EQ(::ftruncate(no_sealing, 1 << 20), 0);
    r = (*channel)->Register(no_sealing, token);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("MFD_ALLOW_SEALING"));

    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    EXPECT_EQ((*channel)->Register(pipe_fds[0], token).status().code(),
              absl::StatusCode::kFailedPrecondition);

    auto good = Arena::Create(1 << 20);
    ASSERT_TRUE(good.ok());
    r = (*channel)->Register((*good)->fd(), "not-the-token");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("arena_token"));

    // After all that, the same connection still registers a proper arena.
    r = (*channel)->Register((*good)->fd(), token);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(MemfdFds(daemon->pid()), 1);
    for (int fd : {unsealed, shrink_only, no_sealing, pipe_fds[0], pipe_fds[1]}) ::close(fd);
  }
  // The channel closed: the daemon let go of the arena and of every refused fd.
  EXPECT_TRUE(Eventually([&] { return daemon->OpenFds() == fds_before; }))
      << daemon->OpenFds() << " fds, " << fds_before << " before";
  EXPECT_EQ(MemfdFds(daemon->pid()), 0);
  EXPECT_THAT(daemon->Log(), HasSubstr("refused a registration"));
}

TEST_F(ShmTest, ReferencesOutsideTheArenaOrToOthersArenasAreRefused) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("bounds"));
  auto other = client->OpenRun(Open("other"));
  ASSERT_TRUE(run.ok() && other.ok());
  auto channel = ArenaChannel::Connect((*run)->opened().arena_socket());
  auto arena = Arena::Create(1 << 20);
  ASSERT_TRUE(channel.ok() && arena.ok());
  auto id = (*channel)->Register((*arena)->fd(), (*run)->opened().arena_token());
  auto other_arena = Arena::Create(1 << 20);
  auto other_id = (*channel)->Register((*other_arena)->fd(), (*other)->opened().arena_token());
  ASSERT_TRUE(id.ok() && other_id.ok());

  TensorView t{"w", v1::TENSOR_TYPE_F32, {1024}, nullptr, 4096};  // 4 KiB
  auto at = [&](uint64_t arena_id, uint64_t offset) {
    v1::TensorLocation loc;
    loc.set_arena_id(arena_id);
    loc.set_offset(offset);
    return std::vector<v1::TensorLocation>{loc};
  };
  auto r = (*run)->SaveShared(100, {t}, at(*id, (1 << 20) - 100), {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("needs 4096 bytes at offset 1048476 but arena"));
  r = (*run)->SaveShared(100, {t}, at(*id, UINT64_MAX - 10), {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = (*run)->SaveShared(100, {t}, at(*id + 100, 0), {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  r = (*run)->SaveShared(100, {t}, at(*other_id, 0), {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("belongs to run 'other'"));
  r = (*run)->SaveShared(100, {t, t}, at(*id, 0), {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);  // names clash / count
  TensorView bad_dims{"w", v1::TENSOR_TYPE_F32, {}, nullptr, 0};
  r = (*run)->SaveShared(100, {bad_dims}, at(*id, 0), {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  auto w = (*run)->WaitSaved(12345, 0);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);

  // Nothing was queued or written, and a correct reference still works.
  EXPECT_TRUE(Files("bounds").empty());
  r = (*run)->SaveShared(100, {t}, at(*id, (1 << 20) - 4096), {}, {.force = true});
  ASSERT_TRUE(r.ok()) << r.status();
  w = (*run)->WaitSaved(r->save_id(), 30);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->state(), v1::WaitSavedResponse::STATE_COMMITTED) << w->error();
  EXPECT_EQ(Files("bounds"), (std::vector<std::string>{"latest", "step_100.gguf"}));
}

// Raises vm.nr_hugepages by `pages` (root only) and puts it back.
class HugePagesReserved {
 public:
  explicit HugePagesReserved(int pages) {
    std::ifstream in("/proc/sys/vm/nr_hugepages");
    if (!(in >> before_)) return;
    std::ofstream("/proc/sys/vm/nr_hugepages") << before_ + pages << "\n";
    ok_ = FreeHugePages() >= pages;
  }
  ~HugePagesReserved() {
    if (before_ >= 0) std::ofstream("/proc/sys/vm/nr_hugepages") << before_ << "\n";
  }
  bool ok() const { return ok_; }
  static int FreeHugePages() {
    std::istringstream in(Slurp("/proc/meminfo"));
    for (std::string line; std::getline(in, line);) {
      if (line.starts_with("HugePages_Free:")) return std::stoi(line.substr(15));
    }
    return 0;
  }

 private:
  int before_ = -1;
  bool ok_ = false;
};

// With 2 MiB hugetlb pages reserved, an arena is a hugetlb memfd; the daemon
// adopts it (sealed like any other) and writes the save from its pages.
// Without reserved pages the arena is a normal memfd.
TEST_F(ShmTest, ArenasUseReservedHugetlbPagesAndSaveFromThem) {
  if (::geteuid() != 0) GTEST_SKIP() << "reserving hugetlb pages needs root";
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("huge"));
  ASSERT_TRUE(run.ok());
  auto channel = ArenaChannel::Connect((*run)->opened().arena_socket());
  ASSERT_TRUE(channel.ok());
  constexpr size_t kArena = 4 << 20, kTensor = 2 << 20, kAt = 4096;
  std::unique_ptr<Arena> arena;
  {
    HugePagesReserved reserved(2);
    if (!reserved.ok()) GTEST_SKIP() << "the kernel found no free 2 MiB pages";
    auto created = Arena::Create(kArena);
    ASSERT_TRUE(created.ok()) << created.status();
    if (!(*created)->hugetlb() && HugePagesReserved::FreeHugePages() < 2) {
      GTEST_SKIP() << "another test took the reserved pages meanwhile";
    }
    EXPECT_TRUE((*created)->hugetlb());
    arena = std::move(*created);
  }
  for (size_t i = 0; i < kTensor; ++i) arena->data()[kAt + i] = static_cast<char>(i * 13 % 251);
  auto id = (*channel)->Register(arena->fd(), (*run)->opened().arena_token());
  ASSERT_TRUE(id.ok()) << id.status();
  TensorView t{"w", v1::TENSOR_TYPE_F32, {kTensor / 4}, nullptr, kTensor};
  v1::TensorLocation loc;
  loc.set_arena_id(*id);
  loc.set_offset(kAt);
  auto r = (*run)->SaveShared(1, {t}, {loc}, {}, {.force = true});
  ASSERT_TRUE(r.ok()) << r.status();
  auto w = (*run)->WaitSaved(r->save_id(), 30);
  ASSERT_TRUE(w.ok());
  ASSERT_EQ(w->state(), v1::WaitSavedResponse::STATE_COMMITTED) << w->error();
  EXPECT_TRUE(Parse(Weights("huge") + "/step_1.gguf").Data() ==
              std::string_view(arena->data() + kAt, kTensor));
  EXPECT_THAT(HttpGet(daemon->HttpPort(), "/metrics").body,
              HasSubstr("ckptd_zero_copy_bytes_total{run=\"huge\"} " + std::to_string(kTensor)));
  if (HugePagesReserved::FreeHugePages() == 0) {
    auto plain = Arena::Create(kArena);
    ASSERT_TRUE(plain.ok());
    EXPECT_FALSE((*plain)->hugetlb());
  }
}

TEST_F(ShmTest, TrainerKilledRightAfterSaveSharedStillGetsItsCheckpoint) {
  // 64 MiB in 4 MiB writes, each delayed 40 ms: the save is still being
  // written for ~0.6 s after the trainer is gone.
  auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "delay=write:40"}});
  auto client = daemon->Connect();
  ASSERT_TRUE(client->OpenRun(Open("warm-up")).ok());  // the client's connection is up
  const int fds_before = daemon->OpenFds();
  [[maybe_unused]] const uint64_t rss_before = RssBytes(daemon->pid());
  [[maybe_unused]] const uint64_t private_before = PrivateRssBytes(daemon->pid());
  uint64_t private_max = private_before;
  constexpr size_t kBytes = 64 << 20;
  CommandResult trainer =
      RunCommand({SHM_TRAINER, daemon->target(), "doomed", "7", std::to_string(kBytes)});
  ASSERT_EQ(trainer.exit_code, 128 + SIGKILL) << trainer.err;
  EXPECT_THAT(trainer.out, HasSubstr("accepted "));
  // The trainer is dead; the daemon holds its own reference to the memfd.
  EXPECT_EQ(MemfdFds(daemon->pid()), 1);

  ASSERT_TRUE(Eventually([&] {
    private_max = std::max(private_max, PrivateRssBytes(daemon->pid()));
    grpc::ClientContext ctx;
    v1::GetRunRequest req;
    req.set_run_id("doomed");
    v1::RunInfo info;
    return client->stub().GetRun(&ctx, req, &info).ok() && info.has_last_step() &&
           info.last_step() == 7;
  })) << daemon->Log();
  ParsedFile f = Parse(Weights("doomed") + "/step_7.gguf");
  std::string expected(kBytes, '\0');
  for (size_t i = 0; i < kBytes; ++i) expected[i] = static_cast<char>(i * 7 % 251);
  EXPECT_TRUE(f.Data().substr(0, kBytes) == expected) << "tensor bytes differ from the arena's";
  CommandResult verify = RunCommand({CKPTCTL_BINARY, "verify", Weights("doomed") + "/step_7.gguf"});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;

  // Afterwards the daemon holds none of the dead trainer's fds or memory.
  EXPECT_TRUE(Eventually([&] { return daemon->OpenFds() == fds_before; }))
      << daemon->OpenFds() << " fds, " << fds_before << " before";
  EXPECT_EQ(MemfdFds(daemon->pid()), 0);
  EXPECT_EQ(MemfdMappings(daemon->pid()), 0);
#ifndef CKPTD_SANITIZED
  EXPECT_LT(RssBytes(daemon->pid()), rss_before + (32 << 20));
  // While it wrote (40 ms per write), its own memory stayed within its
  // write buffers: the arena's pages were read where they lie, not copied.
  EXPECT_LT(private_max, private_before + (24 << 20))
      << "the daemon's private memory grew by " << ((private_max - private_before) >> 20)
      << " MiB while saving a 64 MiB arena";
#endif
}

// Hot restore: with [shm] keep_last_in_memory the daemon keeps the arena
// of a run's newest shm save after the trainer died, a new trainer restores
// from it (same bytes as from disk), and the copy goes when the run closes.
// A byte bound keeps the most recently used copies only.
TEST_F(ShmTest, HotRestoreServesTheDeadTrainersArenaUntilTheRunCloses) {
  const std::string config = root_ + ".hot.toml";
  std::ofstream(config) << "[shm]\nkeep_last_in_memory = true\nkeep_in_memory_max_bytes = "
                        << (12 << 20) << "\n";
  auto daemon = StartDaemon({}, {"--config", config});
  auto client = daemon->Connect();
  constexpr size_t kBytes = 8 << 20;
  std::string expected(kBytes, '\0');
  for (size_t i = 0; i < kBytes; ++i) expected[i] = static_cast<char>(i * 7 % 251);
  // Committed and kept in memory: the daemon keeps the arena just after the
  // commit becomes visible, so wait for both.
  auto committed = [&](const std::string& run, uint64_t step) {
    return Eventually([&] {
      grpc::ClientContext ctx;
      v1::GetRunRequest req;
      req.set_run_id(run);
      v1::RunInfo info;
      return client->stub().GetRun(&ctx, req, &info).ok() && info.has_last_step() &&
             info.last_step() == step && info.in_memory().step() == step;
    });
  };
  CommandResult trainer =
      RunCommand({SHM_TRAINER, daemon->target(), "hot", "7", std::to_string(kBytes)});
  ASSERT_EQ(trainer.exit_code, 128 + SIGKILL) << trainer.err;
  ASSERT_TRUE(committed("hot", 7)) << daemon->Log();
  EXPECT_EQ(MemfdFds(daemon->pid()), 1) << "the daemon let go of the dead trainer's arena";

  // The restarted trainer: OpenRun says step 7 is in memory; restore reads it from there.
  auto run = client->OpenRun(Open("hot"));
  ASSERT_OK(run.status());
  ASSERT_TRUE((*run)->opened().run().has_in_memory());
  EXPECT_EQ((*run)->opened().run().in_memory().step(), 7u);
  auto hot = Restore::OpenRun(**run);
  ASSERT_OK(hot.status());
  EXPECT_EQ((*hot)->source(), "memory") << (*hot)->memory_error();
  std::string got(kBytes, '\0');
  ASSERT_OK((*hot)->ReadInto("blob", got.data(), got.size()));
  EXPECT_TRUE(got == expected);
  EXPECT_EQ((*hot)->memory_fallbacks(), 0u);
  RestoreOptions disk_only;
  disk_only.allow_memory = false;
  auto cold = Restore::OpenRun(**run, {}, disk_only);
  ASSERT_OK(cold.status());
  EXPECT_EQ((*cold)->source(), "disk");
  std::string from_disk(kBytes, '\0');
  ASSERT_OK((*cold)->ReadInto("blob", from_disk.data(), from_disk.size()));
  EXPECT_TRUE(from_disk == got);
  // Unchecked reads never come from memory (a live trainer may reuse the arena).
  RestoreOptions unchecked;
  unchecked.verify = false;
  auto blind = Restore::OpenRun(**run, {}, unchecked);
  ASSERT_OK(blind.status());
  EXPECT_EQ((*blind)->source(), "disk");
  hot->reset();

  // A second run's copy: together above the 12 MiB bound, the older one goes.
  trainer = RunCommand({SHM_TRAINER, daemon->target(), "hot-2", "3", std::to_string(kBytes)});
  ASSERT_EQ(trainer.exit_code, 128 + SIGKILL) << trainer.err;
  ASSERT_TRUE(committed("hot-2", 3)) << daemon->Log();
  auto again = client->OpenRun(Open("hot"));
  ASSERT_OK(again.status());
  EXPECT_FALSE((*again)->opened().run().has_in_memory()) << "the least recently used copy stayed";
  auto second = client->OpenRun(Open("hot-2"));
  ASSERT_OK(second.status());
  EXPECT_TRUE((*second)->opened().run().has_in_memory());
  auto fallback = Restore::OpenRun(**again);
  ASSERT_OK(fallback.status());
  EXPECT_EQ((*fallback)->source(), "disk");

  // Closing the run drops its copy and the memfd with it.
  ASSERT_OK((*second)->Close().status());
  EXPECT_TRUE(Eventually([&] { return MemfdFds(daemon->pid()) == 0; }));
  auto closed = client->OpenRun(Open("hot-2"));
  ASSERT_OK(closed.status());
  EXPECT_FALSE((*closed)->opened().run().has_in_memory());
}

// The trainer is alive and reuses its arena after the save committed: the
// in-memory copy no longer matches, and restore reads those tensors from disk.
TEST_F(ShmTest, HotRestoreFallsBackToDiskWhenTheArenaChanged) {
  const std::string config = root_ + ".hot.toml";
  std::ofstream(config) << "[shm]\nkeep_last_in_memory = true\n";
  auto daemon = StartDaemon({}, {"--config", config});
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("reused"));
  ASSERT_OK(run.status());
  constexpr size_t kBytes = 1 << 20;
  auto arena = Arena::Create(2 * kBytes);
  auto channel = ArenaChannel::Connect((*run)->opened().arena_socket());
  ASSERT_OK(arena.status());
  ASSERT_OK(channel.status());
  auto id = (*channel)->Register((*arena)->fd(), (*run)->opened().arena_token());
  ASSERT_OK(id.status());
  for (size_t i = 0; i < 2 * kBytes; ++i) (*arena)->data()[i] = static_cast<char>(i % 13);
  TensorView a{"a", v1::TENSOR_TYPE_I8, {kBytes}, nullptr, kBytes};
  TensorView b{"b", v1::TENSOR_TYPE_I8, {kBytes}, nullptr, kBytes};
  v1::TensorLocation la, lb;
  la.set_arena_id(*id);
  lb.set_arena_id(*id);
  lb.set_offset(kBytes);
  auto saved = (*run)->SaveShared(100, {a, b}, {la, lb}, {}, {.force = true});
  ASSERT_OK(saved.status());
  auto done = (*run)->WaitSaved(saved->save_id(), 60);
  ASSERT_OK(done.status());
  ASSERT_EQ(done->state(), v1::WaitSavedResponse::STATE_COMMITTED);
  (*arena)->data()[kBytes + 5] ^= 1;  // the next save is being staged over tensor b

  auto reopened = client->OpenRun(Open("reused"));
  ASSERT_OK(reopened.status());
  auto r = Restore::OpenRun(**reopened);
  ASSERT_OK(r.status());
  EXPECT_EQ((*r)->source(), "memory");
  std::string got_a(kBytes, '\0'), got_b(kBytes, '\0');
  std::vector<ReadTarget> targets = {{"a", got_a.data(), kBytes}, {"b", got_b.data(), kBytes}};
  ASSERT_OK((*r)->ReadMany(targets));
  EXPECT_EQ((*r)->memory_fallbacks(), 1u);
  for (size_t i = 0; i < kBytes; ++i) {
    ASSERT_EQ(got_a[i], static_cast<char>(i % 13)) << i;
    ASSERT_EQ(got_b[i], static_cast<char>((kBytes + i) % 13)) << i;
  }
}

TEST_F(ShmTest, DoubleBufferingOverlapsSavesOnASlowDisk) {
  // Every 4 MiB write takes 50 ms more: a 32 MiB save needs >= 400 ms on disk.
  auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "delay=write:50"}});
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("db", 1));
  ASSERT_TRUE(run.ok());
  auto cp = Checkpointer::Create(run->get(), {.buffers = 2});
  ASSERT_TRUE(cp.ok());
  Tensors t(1.0f, {4 << 20, 4 << 20});  // 32 MiB
  ASSERT_TRUE((*cp)->Reserve(t.bytes()).ok());
  auto last_step = [&]() -> std::optional<uint64_t> {
    auto l = (*run)->Latest();
    return l.ok() && l->has_value() ? std::optional((*l)->first) : std::nullopt;
  };

  ASSERT_TRUE(*(*cp)->MaybeSave(1, t.views));
  const double stall1 = (*cp)->stats().last_stall_s;
  ASSERT_TRUE(*(*cp)->MaybeSave(2, t.views));
  const double stall2 = (*cp)->stats().last_stall_s;
  // Save 2 was staged into the second arena while save 1 was still on its way
  // to disk: nothing is committed yet and the trainer did not wait.
  EXPECT_EQ(last_step(), std::nullopt);
  EXPECT_EQ((*cp)->stats().buffer_waits, 0u);
  // Both arenas busy: save 3 must wait for save 1 to be committed.
  ASSERT_TRUE(*(*cp)->MaybeSave(3, t.views));
  const double stall3 = (*cp)->stats().last_stall_s;
  EXPECT_EQ((*cp)->stats().buffer_waits, 1u);
  EXPECT_GE(last_step().value_or(0), 1u);
  EXPECT_GT(stall3, stall2 * 4) << "stalls: " << stall1 << " " << stall2 << " " << stall3;
  EXPECT_GT((*cp)->stats().buffer_wait_s, 0.0);

  // Close() waits for the staged saves, then ends the run.
  auto closed = (*cp)->Close();
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->run().last_step(), 3u);
  EXPECT_EQ(Files("db"),
            (std::vector<std::string>{"latest", "step_1.gguf", "step_2.gguf", "step_3.gguf"}));
  for (const char* f : {"step_1.gguf", "step_2.gguf", "step_3.gguf"})
    Parse(Weights("db") + "/" + f);
  // The trainer's reported stalls reach the daemon's histogram.
  HttpResponse metrics = HttpGet(daemon->HttpPort(), "/metrics");
  EXPECT_THAT(metrics.body, HasSubstr("ckptd_trainer_stall_seconds_count{run=\"db\"} 3"));
  EXPECT_THAT(metrics.body, HasSubstr("\nckptd_shm_arenas 2\n"));  // still registered
  EXPECT_THAT(metrics.body, HasSubstr("\nckptd_shm_queued_saves 0\n"));
}

TEST_F(ShmTest, SigtermWritesAcceptedSharedSavesBeforeExiting) {
  auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "delay=write:40"}});
  auto client = daemon->Connect({.reconnect_timeout_s = 0});  // no daemon comes back
  auto run = client->OpenRun(Open("drain"));
  ASSERT_TRUE(run.ok());
  auto cp = Checkpointer::Create(run->get());
  ASSERT_TRUE(cp.ok());
  Tensors t(3.0f, {4 << 20, 2 << 20});  // 24 MiB: 6 delayed writes
  ASSERT_TRUE(*(*cp)->Save(5, t.views));
  EXPECT_EQ(daemon->Stop(SIGTERM), 0) << daemon->Log();
  EXPECT_EQ(Files("drain"), (std::vector<std::string>{"latest", "step_5.gguf"}));
  Parse(Weights("drain") + "/step_5.gguf");
}

TEST_F(ShmTest, CheckpointerFallsBackToTheStreamPathWhenShmIsOff) {
  const std::string config = tmp_.Join("ckptd.toml");
  std::ofstream(config) << "[shm]\nenabled = false\n";
  auto daemon = StartDaemon({}, {"--config", config});
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("nos", 10));
  ASSERT_TRUE(run.ok());
  auto cp = ExpectStreamFallback(run->get(), "shared-memory saves off");
  ASSERT_NE(cp, nullptr);
  Tensors t(2.0f, {1000});
  EXPECT_FALSE(*cp->MaybeSave(5, t.views));
  EXPECT_TRUE(*cp->MaybeSave(10, t.views));
  ASSERT_TRUE(cp->Wait().ok());
  EXPECT_EQ(Parse(Weights("nos") + "/step_10.gguf").Meta("ckpt.transport"), "grpc-stream");
  auto r = (*run)->SaveShared(20, t.views, {}, {}, {.force = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ShmTest, CheckpointerOverTcpSavesOverTheStreamPathAndSaysSo) {
  // A different port than daemon_test's TCP test, so the suites can run in parallel.
  const std::string listen = "127.0.0.1:" + std::to_string(40000 + ::getpid() % 20000);
  auto daemon = std::make_unique<DaemonProcess>(DaemonOptions{root_, {"--insecure"}, {}, listen});
  daemon->Start();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("remote", 10));
  ASSERT_TRUE(run.ok()) << run.status();
  auto cp = ExpectStreamFallback(run->get(), "is remote");  // no Unix socket: shm off
  ASSERT_NE(cp, nullptr);
  Tensors t(4.0f, {2000});
  EXPECT_TRUE(*cp->MaybeSave(10, t.views));
  EXPECT_EQ(Parse(Weights("remote") + "/step_10.gguf").Meta("ckpt.transport"), "grpc-stream");
  EXPECT_THAT(daemon->Log(), HasSubstr("shm: off (the API listens on TCP"));
}

TEST_F(ShmTest, OverlappedCopyWritesTheSameBytesAsACopyFirstSave) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto a = client->OpenRun(Open("overlap"));
  auto b = client->OpenRun(Open("copy-first"));
  ASSERT_TRUE(a.ok() && b.ok());
  auto overlapped = Checkpointer::Create(a->get(), {.overlap_copy = true});
  auto copy_first = Checkpointer::Create(b->get());
  ASSERT_TRUE(overlapped.ok() && copy_first.ok());
  Tensors t(7.0f, {9 << 20, 3 << 20, 5});  // 48 MiB: several windows and copy pieces
  ASSERT_TRUE(*(*overlapped)->Save(100, t.views));
  ASSERT_TRUE(*(*copy_first)->Save(100, t.views));
  ASSERT_TRUE((*overlapped)->Wait().ok());
  ASSERT_TRUE((*copy_first)->Wait().ok());
  ParsedFile x = Parse(Weights("overlap") + "/step_100.gguf");
  ParsedFile y = Parse(Weights("copy-first") + "/step_100.gguf");
  EXPECT_TRUE(x.Data() == y.Data());
  EXPECT_EQ(x.Meta("general.uuid"), y.Meta("general.uuid"));
  // Only the overlapped one took the progressive path.
  EXPECT_THAT(daemon->Log(), HasSubstr("run=overlap step=100 staged progressively"));
  EXPECT_THAT(daemon->Log(), ::testing::Not(HasSubstr("run=copy-first step=100 staged")));
}

TEST_F(ShmTest, AStalledProgressCounterFailsTheSaveAndLeavesNothing) {
  const std::string config = tmp_.Join("ckptd.toml");
  std::ofstream(config) << "[shm]\nstaging_timeout_seconds = 0.5\n";
  auto daemon = StartDaemon({}, {"--config", config});
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("stuck"));
  ASSERT_TRUE(run.ok());
  auto channel = ArenaChannel::Connect((*run)->opened().arena_socket());
  auto arena = Arena::Create(8 << 20);
  ASSERT_TRUE(channel.ok() && arena.ok());
  auto id = (*channel)->Register((*arena)->fd(), (*run)->opened().arena_token());
  ASSERT_TRUE(id.ok());
  auto* counter = reinterpret_cast<uint64_t*>((*arena)->data());
  TensorView t{"w", v1::TENSOR_TYPE_F32, {1 << 20}, nullptr, 4 << 20};
  v1::TensorLocation loc, progress;
  loc.set_arena_id(*id);
  loc.set_offset(4096);
  progress.set_arena_id(*id);
  progress.set_offset(0);

  // Half the bytes staged, then the "trainer" stops: the save fails, cleanly.
  *counter = 2 << 20;
  auto r = (*run)->SaveShared(100, {t}, {loc}, {}, {.force = true}, 0, &progress);
  ASSERT_TRUE(r.ok()) << r.status();
  auto w = (*run)->WaitSaved(r->save_id(), 30);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->state(), v1::WaitSavedResponse::STATE_FAILED);
  EXPECT_EQ(w->error_code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(w->error(), HasSubstr("stopped staging: 2097152 of 4194304"));
  EXPECT_TRUE(Files("stuck").empty());

  // A counter that gets there commits; a misaligned counter is refused up front.
  *counter = 4 << 20;
  r = (*run)->SaveShared(100, {t}, {loc}, {}, {.force = true}, 0, &progress);
  ASSERT_TRUE(r.ok());
  w = (*run)->WaitSaved(r->save_id(), 30);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->state(), v1::WaitSavedResponse::STATE_COMMITTED) << w->error();
  progress.set_offset(3);
  r = (*run)->SaveShared(200, {t}, {loc}, {}, {.force = true}, 0, &progress);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("8-byte aligned"));
}

TEST_F(ShmTest, OnlyTheDaemonsUidRootAndAllowedUidsMayRegisterArenas) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a peer as other uids";
  const std::string config = tmp_.Join("ckptd.toml");
  std::ofstream(config) << "[shm]\nallowed_uids = [65534]\n";
  auto daemon = StartDaemon({}, {"--config", config});
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("uids"));
  ASSERT_TRUE(run.ok());
  const std::string socket = (*run)->opened().arena_socket();
  ASSERT_TRUE(socket.starts_with("/")) << socket;  // absolute, whatever the trainer's cwd
  // The socket's permissions are the first gate (as for the API socket): open them.
  for (const std::string& p : {tmp_.path(), root_}) fs::permissions(p, fs::perms::all);
  fs::permissions(socket, fs::perms::all);
  auto as = [&](const std::string& uid) {
    return RunCommand({"/usr/bin/setpriv", "--reuid=" + uid, "--regid=" + uid, "--clear-groups",
                       SHM_TRAINER, "register", socket, (*run)->opened().arena_token()});
  };
  CommandResult allowed = as("65534");
  EXPECT_EQ(allowed.exit_code, 0) << allowed.out << allowed.err;
  EXPECT_THAT(allowed.out, HasSubstr("OK "));
  CommandResult refused = as("65533");
  EXPECT_EQ(refused.exit_code, 1) << refused.out << refused.err;
  EXPECT_THAT(refused.out, HasSubstr("PERMISSION_DENIED"));
  EXPECT_THAT(refused.out, HasSubstr("uid 65533 may not register arenas"));
  EXPECT_THAT(refused.out, HasSubstr("shm.allowed_uids"));
}

TEST_F(ShmTest, CloseWithoutFinalOnCloseWritesNoFinalSnapshot) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  v1::OpenRunRequest req = Open("no-final", 10);
  req.mutable_schedule()->set_final_on_close(false);
  auto run = client->OpenRun(req);
  ASSERT_TRUE(run.ok());
  auto cp = Checkpointer::Create(run->get());
  ASSERT_TRUE(cp.ok() && (*cp)->stats().shared_memory);
  Tensors t(5.0f, {1000});
  ASSERT_TRUE(*(*cp)->MaybeSave(10, t.views));
  auto closed = (*cp)->Close(15, t.views);
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->run().state(), v1::RUN_STATE_FINISHED);
  EXPECT_EQ(closed->run().last_step(), 10u);
  EXPECT_NE(closed->final_save().result(), v1::SaveResponse::RESULT_COMMITTED);
  EXPECT_EQ(Files("no-final"), (std::vector<std::string>{"latest", "step_10.gguf"}));
}

// Restore::ReadRun: the latest step's data rotted, the one before it has a
// flipped metadata byte; the trainer gets step 1, exactly, with each
// skipped step named and why. Asked for by number, a step is never swapped.
TEST_F(ShmTest, ReadRunFallsBackToTheNewestIntactStepAndSaysWhy) {
  auto daemon = StartDaemon();
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("rotting", 1));
  ASSERT_OK(run.status());
  auto cp =
      Checkpointer::Create(run->get(), {.force_stream = true, .log = [](const std::string&) {}});
  ASSERT_OK(cp.status());
  std::vector<Tensors> saved;
  for (uint64_t step = 1; step <= 3; ++step) {
    saved.emplace_back(static_cast<float>(step), std::vector<size_t>{4096, 300}, true);
    ASSERT_OK((*cp)->Save(step, saved.back().views).status());
  }
  ASSERT_OK((*cp)->Wait());
  auto flip = [&](uint64_t step, int64_t at) {
    const std::string path = Weights("rotting") + "/step_" + std::to_string(step) + ".gguf";
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(at);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x04);
    f.seekp(at);
    f.write(&c, 1);
  };
  ParsedFile three_file = Parse(Weights("rotting") + "/step_3.gguf");
  flip(3, static_cast<int64_t>(three_file.header.data_offset + three_file.header.tensors[0].offset +
                               40));  // blk.0.weight's data
  ParsedFile two = Parse(Weights("rotting") + "/step_2.gguf");
  flip(2, static_cast<int64_t>(two.bytes.find("llama")));  // general.architecture's value

  std::vector<std::vector<char>> buffers;
  std::vector<ReadTarget> targets;
  for (const TensorView& v : saved[0].views) buffers.emplace_back(v.bytes);
  for (size_t i = 0; i < buffers.size(); ++i) {
    targets.push_back(
        {.name = saved[0].views[i].name, .dst = buffers[i].data(), .n = buffers[i].size()});
  }
  auto r = Restore::ReadRun(*client, "rotting", targets);
  ASSERT_OK(r.status());
  EXPECT_EQ((*r)->step(), 1u);
  for (size_t i = 0; i < buffers.size(); ++i) {
    EXPECT_EQ(std::memcmp(buffers[i].data(), saved[0].views[i].data, buffers[i].size()), 0) << i;
  }
  ASSERT_EQ((*r)->skipped().size(), 2u);
  EXPECT_EQ((*r)->skipped()[0].step, 3u);
  EXPECT_THAT((*r)->skipped()[0].why, HasSubstr("blk.0.weight"));
  EXPECT_EQ((*r)->skipped()[1].step, 2u);
  EXPECT_THAT((*r)->skipped()[1].why, HasSubstr("metadata digest"));

  // By number: step 3 is refused, not swapped.
  auto three = Restore::OpenRun(*client, "rotting", 3);
  ASSERT_OK(three.status());
  EXPECT_TRUE(absl::IsDataLoss((*three)->ReadMany(targets)));
  // A target of the wrong size is the caller's error, returned at once.
  std::vector<char> small(8);
  std::vector<ReadTarget> wrong = {
      {.name = "blk.1.weight", .dst = small.data(), .n = small.size()}};
  auto refused = Restore::ReadRun(*client, "rotting", wrong);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("blk.1.weight"));
  EXPECT_THAT(std::string(refused.status().message()), ::testing::Not(HasSubstr("no step")));
}

// A trainer started while its daemon restarts (the socket still there)
// waits for it in OpenRun, as a run's calls do; with no socket there is no
// daemon to wait for.
TEST_F(ShmTest, OpenRunWaitsForADaemonThatIsRestartingAndFailsAtOnceWithoutOne) {
  auto daemon = StartDaemon();
  ASSERT_EQ(daemon->Stop(SIGKILL), 128 + SIGKILL);
  ASSERT_TRUE(std::filesystem::exists(daemon->socket()));
  auto client = Client::Connect(daemon->target());
  ASSERT_OK(client.status());
  std::thread restart([&] {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    daemon->Start();
  });
  auto t0 = std::chrono::steady_clock::now();
  auto run = (*client)->OpenRun(Open("waited"));
  restart.join();
  ASSERT_OK(run.status());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(900));
  auto none = Client::Connect("unix:" + tmp_.Join("nobody-here.sock"));
  ASSERT_OK(none.status());
  t0 = std::chrono::steady_clock::now();
  auto refused = (*none)->OpenRun(Open("x"));
  EXPECT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

}  // namespace
}  // namespace ckptd::testing
