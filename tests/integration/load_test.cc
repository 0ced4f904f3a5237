// Load: many trainers over every path under held watches and idle
// connections; nothing refused or lost, latency and memory reported.
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
