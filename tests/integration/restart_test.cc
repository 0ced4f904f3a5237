// Black-box tests of trainers across daemon restarts and of a daemon out of
// file descriptors: saving goes on, nothing acknowledged is lost.
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

}  // namespace
}  // namespace ckptd::testing
