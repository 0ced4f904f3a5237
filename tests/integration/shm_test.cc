// Black-box tests of the shared-memory path (issue #4): the real daemon, the
// real client library, real memfds and SCM_RIGHTS.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "ckptd/arena.h"
#include "ckptd/checkpointer.h"
#include "ckptd/restore.h"
#include "daemon/env/env.h"
#include "daemon/gguf/reader.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/daemon_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Tensors with distinct contents per seed; sizes in floats.
struct Tensors {
  std::vector<std::vector<float>> data;
  std::vector<TensorView> views;
  Tensors(float seed, std::vector<size_t> sizes, bool with_train = false) {
    data.resize(sizes.size() + (with_train ? 1 : 0));
    if (with_train) sizes.push_back(1000);
    for (size_t t = 0; t < sizes.size(); ++t) {
      data[t].resize(sizes[t]);
      for (size_t i = 0; i < sizes[t]; ++i)
        data[t][i] = seed + static_cast<float>(t) * 0.25f + static_cast<float>(i % 4093) * 1e-3f;
      TensorView v{"blk." + std::to_string(t) + ".weight",
                   v1::TENSOR_TYPE_F32,
                   {sizes[t]},
                   data[t].data(),
                   sizes[t] * 4};
      if (with_train && t + 1 == sizes.size()) {
        v.name = "adam.m";
        v.group = v1::TENSOR_GROUP_TRAIN;
      }
      views.push_back(v);
    }
  }
  size_t bytes() const {
    size_t n = 0;
    for (const auto& v : views) n += v.bytes;
    return n;
  }
};

v1::OpenRunRequest Open(const std::string& run_id, uint64_t every_steps = 100) {
  v1::OpenRunRequest req;
  req.set_run_id(run_id);
  v1::MetadataEntry arch;
  arch.set_key("general.architecture");
  arch.mutable_value()->set_string_value("llama");
  *req.add_model_metadata() = arch;
  req.mutable_schedule()->set_every_steps(every_steps);
  req.mutable_schedule()->set_final_on_close(true);
  return req;
}

struct ParsedFile {
  gguf::GgufFile header;
  std::string bytes;
  std::string Meta(const std::string& key) const {
    const gguf::Value* v = header.metadata.Find(key);
    if (v == nullptr) return "<missing>";
    if (const auto* s = v->get_if<std::string>()) return *s;
    return gguf::FormatValue(*v);
  }
  std::string Data() const { return bytes.substr(header.data_offset); }
};

ParsedFile Parse(const std::string& path) {
  ParsedFile f;
  f.bytes = Slurp(path);
  MemorySource src(f.bytes);
  auto h = gguf::ReadHeader(src);
  EXPECT_TRUE(h.ok()) << path << ": " << h.status();
  if (h.ok()) {
    f.header = std::move(*h);
    auto verified = gguf::Verify(src, f.header);
    EXPECT_TRUE(verified.ok()) << path << ": " << verified.status();
  }
  return f;
}

// memfd/ mappings of the daemon: what it still holds of trainers' arenas.
int MemfdFds(pid_t pid) {
  int n = 0;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    std::error_code ec;
    if (fs::read_symlink(e.path(), ec).string().starts_with("/memfd:")) ++n;
  }
  return n;
}
int MemfdMappings(pid_t pid) {
  std::istringstream maps(Slurp("/proc/" + std::to_string(pid) + "/maps"));
  int n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find("/memfd:") != std::string::npos;
  return n;
}
uint64_t RssBytes(pid_t pid) {
  std::istringstream in(Slurp("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("VmRSS:")) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// The daemon's own memory: RssAnon + RssFile, without RssShmem (the
// trainers' arenas it maps, which are theirs).
uint64_t PrivateRssBytes(pid_t pid) {
  std::istringstream in(Slurp("/proc/" + std::to_string(pid) + "/status"));
  uint64_t total = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("RssAnon:") || line.starts_with("RssFile:")) {
      total += std::stoull(line.substr(line.find(':') + 1)) * 1024;
    }
  }
  return total;
}

template <typename F>
bool Eventually(F pred, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

using ShmTest = DaemonFixture;

// A Checkpointer on a run the shm path cannot serve: one notice containing
// `notice`, then stream saves.
std::unique_ptr<Checkpointer> ExpectStreamFallback(ckptd::Run* run, const std::string& notice) {
  EXPECT_TRUE(run->opened().arena_socket().empty());
  std::vector<std::string> notices;
  auto cp = Checkpointer::Create(run, {.log = [&](const std::string& l) { notices.push_back(l); }});
  EXPECT_TRUE(cp.ok());
  if (!cp.ok()) return nullptr;
  EXPECT_FALSE((*cp)->stats().shared_memory);
  EXPECT_EQ(notices.size(), 1u);
  if (!notices.empty()) {
    EXPECT_THAT(notices[0], HasSubstr(notice));
  }
  return std::move(*cp);
}

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

// A trainer that knows nothing of restarts keeps saving while its daemon is
// stopped with SIGTERM and later SIGKILLed and started again: every save it
// was told succeeded is on disk with its step's bytes, and the final
// snapshot lands. Over shared-memory arenas and over the stream path.
class RestartTest : public ShmTest, public ::testing::WithParamInterface<bool> {};

TEST_P(RestartTest, TheTrainerKeepsSavingAcrossDaemonRestartsWithNoCodeOfItsOwn) {
  const bool stream = GetParam();
  auto daemon = StartDaemon({{"CKPTD_TEST_FAULTS", "delay=write:2"}});
  auto client = Client::Connect(daemon->target(), {.reconnect_timeout_s = 30});
  ASSERT_TRUE(client.ok());
  auto run = (*client)->OpenRun(Open("survivor", 2));
  ASSERT_TRUE(run.ok()) << run.status();
  std::atomic<int> resent{0};
  auto cp =
      Checkpointer::Create(run->get(), {.force_stream = stream, .log = [&](const std::string& l) {
                                          if (l.find("sent again") != l.npos) ++resent;
                                        }});
  ASSERT_TRUE(cp.ok());
  ASSERT_EQ((*cp)->stats().shared_memory, !stream);
  constexpr uint64_t kSteps = 90;
  std::atomic<uint64_t> at{0};
  std::vector<uint64_t> saved;
  std::vector<std::string> errors;
  std::vector<std::pair<uint64_t, double>> done_at;  // step, steady seconds
  auto now = [] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  std::thread trainer([&] {
    for (uint64_t step = 1; step < kSteps; ++step) {
      Tensors t(static_cast<float>(step), {1 << 18, 3000});
      auto r = (*cp)->MaybeSave(step, t.views);
      if (!r.ok()) errors.push_back("step " + std::to_string(step) + ": " + r.status().ToString());
      if (r.ok() && *r) saved.push_back(step);
      done_at.push_back({step, now()});
      at = step;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Tensors last(static_cast<float>(kSteps), {1 << 18, 3000});
    auto closed = (*cp)->Close(kSteps, last.views);
    if (!closed.ok()) errors.push_back("close: " + closed.status().ToString());
    at = kSteps + 1;
  });
  std::vector<double> back_at;
  for (auto [sig, when] : {std::pair{SIGTERM, 25}, std::pair{SIGKILL, 60}}) {
    const auto until = static_cast<uint64_t>(when);
    ASSERT_TRUE(Eventually([&] { return at >= until; }));
    daemon->Stop(sig);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the trainer meets a dead socket
    // Slow writes before the SIGKILL, so that it catches queued saves.
    daemon =
        sig == SIGTERM ? StartDaemon({{"CKPTD_TEST_FAULTS", "delay=write:30"}}) : StartDaemon();
    back_at.push_back(now());
  }
  trainer.join();
  EXPECT_THAT(errors, ::testing::IsEmpty());
  // Saves queued in the killed daemon were sent again from their arenas.
  if (!stream) {
    EXPECT_GE(resent.load(), 1);
  }
  // Every acknowledged save is on disk with its own step's bytes, and the
  // final snapshot too; nothing else is.
  saved.push_back(kSteps);
  std::vector<std::string> want = {"latest"};
  for (uint64_t step : saved) want.push_back("step_" + std::to_string(step) + ".gguf");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(Files("survivor"), want);
  for (uint64_t step : saved) {
    ParsedFile f = Parse(Weights("survivor") + "/step_" + std::to_string(step) + ".gguf");
    Tensors expect(static_cast<float>(step), {1 << 18, 3000});
    ASSERT_EQ(f.header.tensors.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      const auto& info = f.header.tensors[i];
      EXPECT_EQ(f.bytes.compare(f.header.data_offset + info.offset, info.nbytes,
                                static_cast<const char*>(expect.views[i].data), info.nbytes),
                0)
          << "step " << step << " tensor " << i;
    }
  }
  EXPECT_EQ(Latest("survivor"), "step_" + std::to_string(kSteps) + ".gguf");
  // How long after each restart the trainer's next call succeeded (for the
  // record; timings are not asserted).
  for (double back : back_at) {
    auto next = std::find_if(done_at.begin(), done_at.end(),
                             [&](const auto& d) { return d.second >= back; });
    if (next != done_at.end()) {
      std::printf("[ reconnect ] %s: next call done %.3f s after the daemon was ready\n",
                  stream ? "stream" : "shm", next->second - back);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, RestartTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Stream" : "SharedMemory"; });

// The daemon's CPU time (user + system) so far, in seconds.
double CpuSeconds(pid_t pid) {
  std::string stat = Slurp("/proc/" + std::to_string(pid) + "/stat");
  std::istringstream in(stat.substr(stat.rfind(')') + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);
  }
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// Out of file descriptors (a tiny hard limit, many idle connections on both
// sockets): the daemon raises its soft limit to the hard one, caps arena
// connections below it, does not spin, and saves again once they are gone.
TEST_F(ShmTest, RunningOutOfFileDescriptorsNeitherSpinsNorStopsSavingForGood) {
  auto daemon = std::make_unique<DaemonProcess>(
      DaemonOptions{.root = root_, .nofile = std::pair<uint64_t, uint64_t>{300, 600}});
  daemon->Start();
  struct rlimit raised {};
  ASSERT_EQ(::prlimit(daemon->pid(), RLIMIT_NOFILE, nullptr, &raised), 0);
  EXPECT_EQ(raised.rlim_cur, 600u);  // soft raised to hard
  EXPECT_THAT(daemon->Log(), HasSubstr("open files: soft limit raised from 300 to 600"));
  auto client = daemon->Connect();
  auto run = client->OpenRun(Open("fds", 1));
  ASSERT_TRUE(run.ok()) << run.status();
  const std::string arena_socket = (*run)->opened().arena_socket();
  // `patient`: a connect waits (up to 5 s) while the listen backlog is full,
  // so a daemon slow to accept on a loaded machine still gets every peer.
  auto connect_many = [](const std::string& path, int type, int n, bool patient = false) {
    std::vector<int> fds;
    for (int i = 0; i < n; ++i) {
      int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC | (patient ? 0 : SOCK_NONBLOCK), 0);
      if (patient) {
        timeval five{.tv_sec = 5, .tv_usec = 0};
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &five, sizeof five);
      }
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        continue;
      }
      fds.push_back(fd);
    }
    return fds;
  };
  // (600 - 256) / 4 = 86 arena connections at most; the rest are told so.
  std::vector<int> held = connect_many(arena_socket, SOCK_SEQPACKET, 150, /*patient=*/true);
  int told = 0;
  std::set<int> answered;
  Eventually(
      [&] {  // a loaded machine may take a while to accept them all
        for (int fd : held) {
          char buf[512];
          ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
          if (n > 0 && !answered.contains(fd) &&
              std::string(buf, n).find("already has 86 connections") != std::string::npos) {
            answered.insert(fd);
            ++told;
          }
        }
        return told >= 150 - 86;
      },
      std::chrono::seconds(10));
  EXPECT_GE(told, 50)
      << daemon->Log();  // of the 150 - 86 over the cap (a few may still be on their way)
  std::vector<int> api = connect_many(daemon->socket(), SOCK_STREAM, 700);
  held.insert(held.end(), api.begin(), api.end());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // The daemon is out of descriptors now: more arena peers wait in accept.
  std::vector<int> more = connect_many(arena_socket, SOCK_SEQPACKET, 20);
  held.insert(held.end(), more.begin(), more.end());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // A spinning accept loop burns a whole core; over 2 s, well under one
  // core-second leaves room for a loaded machine finishing the handshakes.
  const double cpu0 = CpuSeconds(daemon->pid());
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const double cpu = CpuSeconds(daemon->pid()) - cpu0;
  EXPECT_LT(cpu, 1.0) << "the daemon spins while out of descriptors";
  for (int fd : held) ::close(fd);
  // Descriptors back: a trainer saves over shared memory again.
  Tensors t(5.0f, {1 << 16});
  absl::StatusOr<bool> saved;
  ASSERT_TRUE(Eventually([&] {
    auto again = Client::Connect(daemon->target());
    auto r = (*again)->OpenRun(Open("fds", 1));
    if (!r.ok()) return false;
    auto cp = Checkpointer::Create(r->get());
    if (!cp.ok() || !(*cp)->stats().shared_memory) return false;
    saved = (*cp)->Save(7, t.views);
    return saved.ok() && *saved && (*cp)->Wait().ok();
  })) << saved.status()
      << daemon->Log().substr(daemon->Log().size() > 3000 ? daemon->Log().size() - 3000 : 0);
  EXPECT_EQ(Files("fds"), (std::vector<std::string>{"latest", "step_7.gguf"}));
  EXPECT_THAT(daemon->Log(), HasSubstr("arena socket: out of file descriptors"));
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

}  // namespace
}  // namespace ckptd::testing

// The pointer path: the daemon reads the trainer's own memory.
namespace ckptd::testing {
namespace {

uint64_t PeakRssBytes(pid_t pid) {
  std::istringstream in(Slurp("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("VmHWM:")) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

using PointerTest = DaemonFixture;

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

}  // namespace
}  // namespace ckptd::testing

namespace ckptd::testing {
namespace {

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

namespace ckptd::testing {
namespace {

// The crash soak: three trainers save continuously, one over each path
// (shared memory, pointers, stream); the daemon is SIGKILLed at a random
// moment, restarted, and before any trainer comes back every invariant is
// checked: recovery left no temp file, `latest` names the newest step, every
// step on disk verifies and holds its own step's bytes, and every save a
// trainer was told was committed is there (or retention, keep_last 4, had
// 4 newer steps to drop it for). CKPTD_SOAK_KILLS kills (default 50; `make
// soak` runs 1000), each after 50-400 ms of saving.
class CrashSoak : public ShmTest {};

int SoakKills() {
  const char* env = std::getenv("CKPTD_SOAK_KILLS");
  if (env != nullptr && *env != '\0') return std::atoi(env);
#ifdef CKPTD_SANITIZED
  return 10;
#else
  return 50;
#endif
}

constexpr uint64_t kSoakKeep = 4;
const std::vector<size_t> kSoakSizes = {1 << 14, 3000};

struct SoakTrainer {
  std::string run;
  const char* path;  // "shm", "pointers", "stream"
  uint64_t next_step = 1;
  std::set<uint64_t> acknowledged;
  uint64_t saves_attempted = 0;
};

// Steps present in a run's weights/ (step_N.gguf), ascending.
std::vector<uint64_t> StepsOnDisk(const std::string& weights) {
  std::vector<uint64_t> steps;
  for (const auto& e : fs::directory_iterator(weights)) {
    const std::string name = e.path().filename();
    if (name.starts_with("step_") && name.ends_with(".gguf") && !name.ends_with(".train.gguf")) {
      steps.push_back(std::stoull(name.substr(5, name.size() - 10)));
    }
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

TEST_F(CrashSoak, EveryAcknowledgedSaveSurvivesRandomKillsOnEveryPath) {
  const int kills = SoakKills();
  std::vector<SoakTrainer> trainers = {
      {"soak-shm", "shm"}, {"soak-pointers", "pointers"}, {"soak-stream", "stream"}};
  std::mt19937 rng(20261130);
  uint64_t temp_files_seen = 0;
  std::set<std::pair<std::string, uint64_t>> committed_unacknowledged;
  for (int kill = 0; kill <= kills; ++kill) {
    auto daemon = StartDaemon();
    // Invariants after recovery, before any trainer is back.
    for (SoakTrainer& t : trainers) {
      if (!fs::exists(Weights(t.run))) continue;
      for (const std::string& f : Files(t.run)) {
        ASSERT_EQ(f.find(".tmp"), std::string::npos)
            << "kill " << kill << ": " << t.run << "/" << f;
      }
      const std::vector<uint64_t> steps = StepsOnDisk(Weights(t.run));
      if (steps.empty()) continue;
      ASSERT_EQ(Latest(t.run), "step_" + std::to_string(steps.back()) + ".gguf") << "kill " << kill;
      for (uint64_t step : steps) {
        ParsedFile f = Parse(Weights(t.run) + "/step_" + std::to_string(step) + ".gguf");
        Tensors expect(static_cast<float>(step), kSoakSizes);
        ASSERT_EQ(f.header.tensors.size(), 2u) << t.run << " step " << step;
        for (size_t i = 0; i < 2; ++i) {
          const auto& info = f.header.tensors[i];
          ASSERT_EQ(f.bytes.compare(f.header.data_offset + info.offset, info.nbytes,
                                    static_cast<const char*>(expect.views[i].data), info.nbytes),
                    0)
              << t.run << " step " << step << " tensor " << i << " (kill " << kill << ")";
        }
        if (!t.acknowledged.contains(step)) committed_unacknowledged.insert({t.run, step});
      }
      for (uint64_t step : t.acknowledged) {
        const auto newer =
            static_cast<uint64_t>(steps.end() - std::upper_bound(steps.begin(), steps.end(), step));
        ASSERT_TRUE(std::binary_search(steps.begin(), steps.end(), step) || newer >= kSoakKeep)
            << t.run << ": acknowledged step " << step << " is gone with only " << newer
            << " newer steps on disk (kill " << kill << ")";
      }
      t.next_step = std::max(t.next_step, steps.back() + 1);
    }
    if (kill == kills) break;
    // Save until the kill.
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (SoakTrainer& t : trainers) {
      threads.emplace_back([&, &t = t] {
        auto client = Client::Connect(daemon->target(), {.reconnect_timeout_s = 0});
        if (!client.ok()) return;
        v1::OpenRunRequest req = Open(t.run, 1);
        req.mutable_retention()->set_keep_last(kSoakKeep);
        auto run = (*client)->OpenRun(req);
        if (!run.ok()) return;
        const std::string path = t.path;
        auto cp = Checkpointer::Create(run->get(), {.force_stream = path == "stream",
                                                    .pointers = path == "pointers",
                                                    .log = [](const std::string&) {}});
        if (!cp.ok()) return;
        size_t seen = 0;
        auto collect = [&] {
          const auto& done = (*cp)->finished();
          for (; seen < done.size(); ++seen) {
            if (done[seen].state() == v1::WaitSavedResponse::STATE_COMMITTED) {
              t.acknowledged.insert(done[seen].step());
            }
          }
        };
        // Pointer saves read the trainer's memory: it stays as it is until
        // the save is settled, so each step has its own tensors.
        std::deque<Tensors> live;
        while (!stop) {
          const uint64_t step = t.next_step++;
          live.emplace_back(static_cast<float>(step), kSoakSizes);
          ++t.saves_attempted;
          auto r = (*cp)->MaybeSave(step, live.back().views);
          if (!r.ok()) break;
          if (path == "stream") t.acknowledged.insert(step);
          if (path == "pointers" && !(*cp)->Wait().ok()) break;
          collect();
          while (live.size() > 4) live.pop_front();
        }
        collect();
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 350));
    EXPECT_EQ(daemon->Stop(SIGKILL), 128 + SIGKILL);
    stop = true;
    for (auto& th : threads) th.join();
    for (const SoakTrainer& t : trainers) {
      if (fs::exists(Weights(t.run))) {
        for (const std::string& f : Files(t.run)) temp_files_seen += f.find(".tmp") != f.npos;
      }
    }
  }
  uint64_t acknowledged = 0, attempted = 0;
  for (const SoakTrainer& t : trainers) {
    acknowledged += t.acknowledged.size();
    attempted += t.saves_attempted;
    EXPECT_GT(t.acknowledged.size(), 0u) << t.run << " never saved";
  }
  std::printf(
      "[ soak ] %d kills: %llu saves attempted, %llu acknowledged, %llu temp files left by kills "
      "(all removed at restart), %llu steps found committed without an acknowledgement\n",
      kills, static_cast<unsigned long long>(attempted),
      static_cast<unsigned long long>(acknowledged),
      static_cast<unsigned long long>(temp_files_seen),
      static_cast<unsigned long long>(committed_unacknowledged.size()));
}

}  // namespace
}  // namespace ckptd::testing

namespace ckptd::testing {
namespace {

// Load: 16 trainers (shared memory, pointers and stream, mixed) save 50
// steps each while 200 WatchRun streams and 2,000 idle connections are
// held open. Nothing may be refused or lost; ShouldSave's latency
// percentiles and the daemon's own memory are reported (and bounded).
TEST_F(ShmTest, SixteenTrainersSaveUnderHeldWatchesAndIdleConnections) {
  struct rlimit lim {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  ASSERT_GE(lim.rlim_max, 4096u) << "the test needs 4096 descriptors";
  lim.rlim_cur = lim.rlim_max;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0);
  auto daemon = StartDaemon();
  constexpr int kTrainers = 16, kSteps = 50, kWatches = 200, kIdle = 2000;
  auto admin = daemon->Connect({.reconnect_timeout_s = 0});
  for (int i = 0; i < kTrainers; ++i) {
    ASSERT_TRUE(admin->OpenRun(Open("load-" + std::to_string(i), 1)).ok());
  }
  // 200 watches over 4 connections, never read: they hold their streams
  // (and, before the callback API, a server thread each).
  std::vector<std::unique_ptr<Client>> watch_clients;
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_ctx;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::RunEvent>>> watches;
  for (int c = 0; c < 4; ++c) watch_clients.push_back(daemon->Connect({.reconnect_timeout_s = 0}));
  for (int w = 0; w < kWatches; ++w) {
    watch_ctx.push_back(std::make_unique<grpc::ClientContext>());
    v1::WatchRunRequest req;
    req.set_run_id("load-" + std::to_string(w % kTrainers));
    watches.push_back(watch_clients[w % 4]->stub().WatchRun(watch_ctx.back().get(), req));
  }
  // 2,000 idle connections to the API socket.
  std::vector<int> idle;
  for (int i = 0; i < kIdle; ++i) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", daemon->socket().c_str());
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << i;
    idle.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::vector<std::vector<double>> should_save_ms(kTrainers);
  std::vector<std::vector<uint64_t>> committed(kTrainers);
  std::vector<std::string> errors(kTrainers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kTrainers; ++i) {
    threads.emplace_back([&, i] {
      const std::string run_id = "load-" + std::to_string(i);
      auto client = Client::Connect(daemon->target(), {.reconnect_timeout_s = 0});
      if (!client.ok()) return void(errors[i] = client.status().ToString());
      auto run = (*client)->OpenRun(Open(run_id, 1));
      if (!run.ok()) return void(errors[i] = run.status().ToString());
      const int path = i % 3;  // 0 shm, 1 pointers, 2 stream
      auto cp = Checkpointer::Create(
          run->get(),
          {.force_stream = path == 2, .pointers = path == 1, .log = [](const std::string&) {}});
      if (!cp.ok()) return void(errors[i] = cp.status().ToString());
      std::deque<Tensors> live;
      for (uint64_t step = 1; step <= kSteps; ++step) {
        const auto t0 = std::chrono::steady_clock::now();
        auto due = (*run)->ShouldSave(step);
        should_save_ms[i].push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
        if (!due.ok() || !due->due()) {
          return void(errors[i] = "ShouldSave " + std::to_string(step) + ": " +
                                  (due.ok() ? due->reason() : due.status().ToString()));
        }
        live.emplace_back(static_cast<float>(step + 1000 * i), std::vector<size_t>{1 << 14, 3000});
        auto r = (*cp)->Save(step, live.back().views);
        if (!r.ok() || !*r) {
          return void(errors[i] = "save " + std::to_string(step) + ": " + r.status().ToString());
        }
        if (path == 1 && !(*cp)->Wait().ok()) return void(errors[i] = "pointer wait");
        if (path == 2) committed[i].push_back(step);
        while (live.size() > 4) live.pop_front();
      }
      if (absl::Status st = (*cp)->Wait(); !st.ok()) return void(errors[i] = st.ToString());
      for (const auto& done : (*cp)->finished()) {
        if (done.state() == v1::WaitSavedResponse::STATE_COMMITTED) {
          committed[i].push_back(done.step());
        } else {
          errors[i] = "step " + std::to_string(done.step()) + ": " + done.error();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const uint64_t rss = PrivateRssBytes(daemon->pid());
  std::vector<double> all;
  for (int i = 0; i < kTrainers; ++i) {
    EXPECT_EQ(errors[i], "") << "trainer " << i;
    // Every step on disk (the Checkpointer keeps only its latest answers,
    // each of which must be COMMITTED), and for the stream path every answer.
    std::vector<uint64_t> want(kSteps);
    std::iota(want.begin(), want.end(), 1);
    EXPECT_EQ(StepsOnDisk(Weights("load-" + std::to_string(i))), want) << "trainer " << i;
    if (i % 3 == 2) {
      EXPECT_EQ(committed[i], want) << "trainer " << i;
    }
    all.insert(all.end(), should_save_ms[i].begin(), should_save_ms[i].end());
  }
  std::sort(all.begin(), all.end());
  ASSERT_FALSE(all.empty());
  auto pct = [&](double p) {
    return all[std::min(all.size() - 1, static_cast<size_t>(p * all.size()))];
  };
  std::printf(
      "[ load ] %d trainers x %d saves, %d held watches, %d idle connections: ShouldSave p50 "
      "%.2f ms, p99 %.2f ms, max %.2f ms; daemon private RSS %.1f MiB\n",
      kTrainers, kSteps, kWatches, kIdle, pct(0.5), pct(0.99), all.back(),
      static_cast<double>(rss) / (1 << 20));
#ifndef CKPTD_SANITIZED
  EXPECT_LT(rss, uint64_t{256} << 20) << "the daemon's memory under load";
#endif
  // The watches were all held: each is still open and has its run's commits queued.
  int live_watches = 0;
  for (auto& w : watches) {
    v1::RunEvent e;
    live_watches += w->Read(&e) && e.step() >= 1;
  }
  EXPECT_EQ(live_watches, kWatches);
  for (auto& ctx : watch_ctx) ctx->TryCancel();
  for (int fd : idle) ::close(fd);
  watches.clear();
}

}  // namespace
}  // namespace ckptd::testing
