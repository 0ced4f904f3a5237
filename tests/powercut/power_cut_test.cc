// Power cuts through a real file system: the real daemon on powercut_fs
// (FUSE), three trainers saving over shared memory, pointers and the
// stream, with overwrites, an export and retention on every run; then at a
// random moment the daemon is SIGKILLed and the power cut, and the daemon
// restarts on what survived. After each restart, before any trainer comes
// back: every acknowledged save is there (or retention had keep_last newer
// steps to drop it for) and restores exactly, train file and export
// included; `latest` names the newest step; every listed step is whole;
// nothing half-written is left and nothing lands in quarantine.
// CKPTD_POWER_CUTS cuts (default 100; `make soak` runs 1000). Needs root
// and /dev/fuse; skipped without them.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "tests/integration/shm_helpers.h"

namespace ckptd::testing {
namespace {

namespace fs = std::filesystem;

int PowerCuts() {
  const char* env = std::getenv("CKPTD_POWER_CUTS");
  return env != nullptr && *env != '\0' ? std::atoi(env) : 100;
}

constexpr uint64_t kKeep = 4;
const std::vector<size_t> kSizes = {1 << 14, 3000};

// Step `step`'s tensors as saved the `version`th time (overwrites count up).
float Seed(uint64_t step, int version) {
  return static_cast<float>(step) + 0.5f * static_cast<float>(version);
}

struct Trainer {
  std::string run;
  std::string path;  // "shm", "pointers", "stream"
  uint64_t next_step = 1;
  std::map<uint64_t, int> acknowledged;  // step -> newest acknowledged version
  std::map<uint64_t, int> tried;         // step -> newest version sent
  uint64_t saves = 0, overwrites = 0;
};

bool Mounted(const std::string& dir) {
  std::istringstream mounts(Slurp("/proc/self/mounts"));
  for (std::string line; std::getline(mounts, line);) {
    if (line.find(" " + dir + " ") != std::string::npos) return true;
  }
  return false;
}

class PowerCutTest : public DaemonFixture {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting powercut_fs needs root";
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/fuse";
    mount_ = tmp_.Join("mnt");
    fs::create_directories(mount_);
    fs_pid_ = ::fork();
    if (fs_pid_ == 0) {
      ::execl(POWERCUT_FS, POWERCUT_FS, mount_.c_str(), "--seed", "20261206", nullptr);
      ::_exit(127);
    }
    ASSERT_TRUE(Eventually([&] { return Mounted(mount_); }, std::chrono::seconds(10)))
        << "powercut_fs did not mount " << mount_;
    root_ = mount_ + "/root";
    fs::create_directories(root_);
    SyncDir(mount_);
  }

  void TearDown() override {
    if (fs_pid_ <= 0) return;
    ::umount2(mount_.c_str(), MNT_DETACH);  // the file system's loop then ends
    ::kill(fs_pid_, SIGTERM);
    const bool exited = Eventually([&] { return ::waitpid(fs_pid_, nullptr, WNOHANG) == fs_pid_; },
                                   std::chrono::seconds(10));
    if (!exited) {
      ::kill(fs_pid_, SIGKILL);
      ::waitpid(fs_pid_, nullptr, 0);
    }
  }

  // The daemon on the mount, its sockets beside it (FUSE has no sockets).
  std::unique_ptr<DaemonProcess> StartOnMount() {
    auto d = std::make_unique<DaemonProcess>(DaemonOptions{
        .root = root_, .listen = "unix:" + tmp_.Join("ckptd.sock"), .log = tmp_.Join("ckptd.log")});
    d->Start();
    return d;
  }

  static void SyncDir(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    ASSERT_GE(fd, 0) << dir;
    ASSERT_EQ(::fsync(fd), 0) << dir;
    ::close(fd);
  }

  void Cut(bool any_subset) {
    const int fd = ::open((mount_ + "/.powercut").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    const std::string cmd = any_subset ? "cut any" : "cut";
    ASSERT_EQ(::write(fd, cmd.data(), cmd.size()), static_cast<ssize_t>(cmd.size()));
    ::close(fd);
  }
  std::map<std::string, uint64_t> Counters() const {
    std::map<std::string, uint64_t> out;
    std::istringstream in(Slurp(mount_ + "/.powercut"));
    std::string key;
    uint64_t value;
    while (in >> key >> value) out[key] = value;
    return out;
  }

  // The invariants, on what the restarted daemon recovered.
  void Check(Trainer& t, DaemonProcess& daemon, int cut);
  void SaveUntilKilled(Trainer& t, DaemonProcess& daemon, const std::atomic<bool>& stop,
                       bool overwrite_first);

  std::string mount_;
  pid_t fs_pid_ = -1;
};

v1::OpenRunRequest RunRequest(const std::string& run) {
  v1::OpenRunRequest req = Open(run, 1);
  req.mutable_retention()->set_keep_last(kKeep);
  v1::ExportRequest* e = req.add_exports();
  e->set_name("f16");
  e->mutable_definition()->set_name("f16");
  v1::ExportProfile::Rename* keep = e->mutable_definition()->add_rename();
  keep->set_from("{all*}");
  keep->set_to("{all*}");
  v1::ExportProfile::Cast* cast = e->mutable_definition()->add_cast();
  cast->set_match("*");
  cast->set_type("f16");
  return req;
}

void PowerCutTest::Check(Trainer& t, DaemonProcess& daemon, int cut) {
  if (!fs::exists(Weights(t.run))) {
    ASSERT_TRUE(t.acknowledged.empty())
        << t.run << ": the run directory is gone (cut " << cut << ")";
    return;
  }
  for (const std::string& f : Files(t.run)) {
    ASSERT_EQ(f.find(".tmp"), std::string::npos) << "cut " << cut << ": " << t.run << "/" << f;
    ASSERT_FALSE(f.ends_with(".next")) << "cut " << cut << ": " << t.run << "/" << f;
  }
  const std::string quarantine = root_ + "/" + t.run + "/quarantine";
  ASSERT_TRUE(!fs::exists(quarantine) || fs::is_empty(quarantine))
      << "cut " << cut << ": " << t.run << " quarantined "
      << fs::begin(fs::directory_iterator(quarantine))->path();
  const std::vector<uint64_t> steps = StepsOnDisk(Weights(t.run));
  if (!steps.empty()) {
    ASSERT_EQ(Latest(t.run), "step_" + std::to_string(steps.back()) + ".gguf") << "cut " << cut;
  }
  // What the daemon lists is exactly what is on disk.
  auto client = daemon.Connect();
  v1::ListCheckpointsRequest lreq;
  lreq.set_run_id(t.run);
  lreq.set_page_size(1000);
  v1::ListCheckpointsResponse page;
  grpc::ClientContext ctx;
  ASSERT_TRUE(client->stub().ListCheckpoints(&ctx, lreq, &page).ok());
  std::vector<uint64_t> listed;
  for (const auto& c : page.checkpoints()) listed.push_back(c.step());
  ASSERT_EQ(listed, steps) << t.run << " (cut " << cut << ")";
  for (uint64_t step : steps) {
    const std::string model = Weights(t.run) + "/step_" + std::to_string(step) + ".gguf";
    ASSERT_TRUE(t.tried.contains(step)) << t.run << " step " << step << " was never saved";
    // Whole and exact, train file included: Restore checks the digests and the tie.
    auto r = Restore::Open(model);
    ASSERT_TRUE(r.ok()) << model << " (cut " << cut << "): " << r.status();
    ASSERT_NE((*r)->Find("adam.m"), nullptr) << model << ": its train file is missing";
    float first = 0;
    std::vector<std::vector<char>> got;
    for (const RestoreTensor& rt : (*r)->tensors()) {
      got.emplace_back(rt.nbytes);
      ASSERT_TRUE((*r)->ReadInto(rt.name, got.back().data(), rt.nbytes).ok()) << model;
    }
    std::memcpy(&first, got[0].data(), sizeof first);
    const int version = static_cast<int>((first - static_cast<float>(step)) * 2.0f + 0.5f);
    ASSERT_LE(version, t.tried.at(step)) << model << " holds a version never sent";
    if (auto a = t.acknowledged.find(step); a != t.acknowledged.end()) {
      ASSERT_GE(version, a->second)
          << model << ": an acknowledged overwrite was lost (cut " << cut << ")";
    }
    Tensors expect(Seed(step, version), kSizes, /*with_train=*/true);
    ASSERT_EQ(got.size(), expect.views.size());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(std::memcmp(got[i].data(), expect.views[i].data, expect.views[i].bytes), 0)
          << model << " tensor " << i << " (cut " << cut << ")";
    }
    // The export of the same save, whole.
    ParsedFile e = Parse(Weights(t.run) + "/step_" + std::to_string(step) + ".f16.gguf");
    ASSERT_EQ(e.Meta("ckpt.save_id"), Parse(model).Meta("ckpt.save_id"))
        << model << ": its export is another save's";
  }
  for (const auto& [step, version] : t.acknowledged) {
    const auto newer =
        static_cast<uint64_t>(steps.end() - std::upper_bound(steps.begin(), steps.end(), step));
    ASSERT_TRUE(std::binary_search(steps.begin(), steps.end(), step) || newer >= kKeep)
        << t.run << ": acknowledged step " << step << " is gone with only " << newer
        << " newer steps on disk (cut " << cut << ")";
  }
  if (!steps.empty()) t.next_step = std::max(t.next_step, steps.back() + 1);
}

void PowerCutTest::SaveUntilKilled(Trainer& t, DaemonProcess& daemon, const std::atomic<bool>& stop,
                                   bool overwrite_first) {
  auto client = Client::Connect(daemon.target(), {.reconnect_timeout_s = 0});
  if (!client.ok()) return;
  auto run = (*client)->OpenRun(RunRequest(t.run));
  if (!run.ok()) return;
  auto cp = Checkpointer::Create(run->get(), {.force_stream = t.path == "stream",
                                              .pointers = t.path == "pointers",
                                              .log = [](const std::string&) {}});
  if (!cp.ok()) return;
  std::map<uint64_t, int> sent;  // this session's versions, by step
  size_t seen = 0;
  auto collect = [&] {
    const auto& done = (*cp)->finished();
    for (; seen < done.size(); ++seen) {
      if (done[seen].state() == v1::WaitSavedResponse::STATE_COMMITTED) {
        t.acknowledged[done[seen].step()] = sent.at(done[seen].step());
      }
    }
  };
  std::deque<Tensors> live;  // pointer saves read the trainer's memory until settled
  auto save = [&](uint64_t step, bool overwrite) {
    const int version = t.tried.contains(step) ? t.tried[step] + 1 : 0;
    t.tried[step] = sent[step] = version;
    live.emplace_back(Seed(step, version), kSizes, /*with_train=*/true);
    ++t.saves;
    auto r = (*cp)->Save(step, live.back().views, {}, {.force = true, .overwrite = overwrite});
    if (!r.ok()) return false;
    if (t.path == "stream") t.acknowledged[step] = version;
    if ((overwrite || t.path == "pointers") && !(*cp)->Wait().ok()) return false;
    collect();
    while (live.size() > 4) live.pop_front();
    return true;
  };
  // A resumed trainer that saves its newest step again: the overwrite path.
  if (overwrite_first && !t.acknowledged.empty() && t.next_step > 1) {
    ++t.overwrites;
    if (!save(t.next_step - 1, true)) return;
  }
  while (!stop) {
    if (!save(t.next_step++, false)) break;
  }
  collect();
}

TEST_F(PowerCutTest,
       EveryAcknowledgedSaveSurvivesPowerCutsDuringSavesOverwritesExportsAndRetention) {
  const int cuts = PowerCuts();
  std::vector<Trainer> trainers = {
      {"cut-shm", "shm"}, {"cut-pointers", "pointers"}, {"cut-stream", "stream"}};
  std::mt19937 rng(20261206);
  bool said_buffered = false;
  for (int cut = 0; cut <= cuts; ++cut) {
    auto daemon = StartOnMount();
    for (Trainer& t : trainers) {
      Check(t, *daemon, cut);
      if (HasFatalFailure()) {
        std::fprintf(stderr, "daemon log:\n%s\n", daemon->Log().c_str());
        return;
      }
    }
    if (cut == cuts) break;
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (Trainer& t : trainers) {
      const bool overwrite = rng() % 3 == 0;
      threads.emplace_back(
          [&, &t = t, overwrite] { SaveUntilKilled(t, *daemon, stop, overwrite); });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + rng() % 250));
    // FUSE refuses O_DIRECT here: the daemon writes buffered, and says so.
    if (const std::string log = daemon->Log(); log.find(" io=buffered ") != std::string::npos) {
      EXPECT_NE(log.find("direct I/O refused run="), std::string::npos) << log;
      said_buffered = true;
    }
    EXPECT_EQ(daemon->Stop(SIGKILL), 128 + SIGKILL);
    stop = true;
    for (auto& th : threads) th.join();
    Cut(cut % 2 == 1);
  }
  uint64_t acknowledged = 0, saves = 0, overwrites = 0;
  for (const Trainer& t : trainers) {
    acknowledged += t.acknowledged.size();
    saves += t.saves;
    overwrites += t.overwrites;
    EXPECT_GT(t.acknowledged.size(), 0u) << t.run << " never saved";
  }
  EXPECT_TRUE(said_buffered);
  const auto c = Counters();
  std::printf(
      "[ power cuts ] %d cuts (%llu dropping every un-synced change, %llu keeping a random "
      "subset): "
      "%llu saves sent, %llu overwrites, %llu steps acknowledged, none lost; the cuts dropped "
      "%llu directory operations, kept %llu, lost the un-synced bytes of %llu files and tore %llu; "
      "%llu fsyncs, %llu directory fsyncs, %llu O_DIRECT opens refused\n",
      cuts, static_cast<unsigned long long>((cuts + 1) / 2),
      static_cast<unsigned long long>(cuts / 2), static_cast<unsigned long long>(saves),
      static_cast<unsigned long long>(overwrites), static_cast<unsigned long long>(acknowledged),
      static_cast<unsigned long long>(c.at("ops_dropped")),
      static_cast<unsigned long long>(c.at("ops_kept")),
      static_cast<unsigned long long>(c.at("files_dropped")),
      static_cast<unsigned long long>(c.at("files_torn")),
      static_cast<unsigned long long>(c.at("fsyncs")),
      static_cast<unsigned long long>(c.at("fsyncdirs")),
      static_cast<unsigned long long>(c.at("refused_direct")));
  EXPECT_EQ(c.at("cuts"), static_cast<uint64_t>(cuts));
}

}  // namespace
}  // namespace ckptd::testing
