// shm_save_bench SOCKET RUN BYTES SAVES: saves BYTES of f32 tensors (64 MiB
// each) SAVES times through ckptd::Checkpointer's shared-memory path and
// prints JSON: the trainer's stall per save (the call's blocking time), the
// time from the call to the durable commit, the one-time arena setup, and
// the warm single-thread memcpy of the same bytes into a pre-faulted memfd
// arena (the physical floor for the stall), and call_s: the stall minus the
// copy, i.e. the SaveShared round trip (validate + queue), all measured in
// this process.
// SAVES = 0: interactive, for interleaving with other measurements: prints
// "ready", then runs one command per line read from stdin, printing one
// JSON line each, and the summary of the `save` commands at EOF:
//   save          one save, waited for: {"stall_s", "durable_s"}
//   spaced N GAP  N saves with GAP seconds of "compute" (a sleep) after
//                 each, as a trainer spaces them, not waited for in between:
//                 {"stalls": [...], "copies": [the copy's part of each],
//                 "waits": [waiting for a free arena, part of each],
//                 "durable_s": the last call to durable}
//   burst N       N saves back to back, faster than the disk (backpressure):
//                 {"stalls": [...], "seconds": the first call to the last durable}
// shm_save_bench --arena-setup BYTES: creates (and populates) a BYTES arena
// three times: {"setup_s": median, "hugetlb": bool}.
// BENCH_OVERLAP=1 in the environment: CheckpointerOptions::overlap_copy;
// BENCH_COPY_THREADS=N: CheckpointerOptions::copy_threads; BENCH_KEEP_LAST=N:
// the run's retention keeps the N newest checkpoints.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_run.h"
#include "ckptd/arena.h"
#include "ckptd/checkpointer.h"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string JsonList(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

int ArenaSetup(size_t bytes) {
  std::vector<double> times;
  bool hugetlb = false;
  for (int i = 0; i < 3; ++i) {
    const double t0 = Now();
    auto arena = ckptd::Arena::Create(bytes);
    if (!arena.ok()) {
      std::fprintf(stderr, "arena: %s\n", std::string(arena.status().message()).c_str());
      return 1;
    }
    times.push_back(Now() - t0);
    hugetlb = (*arena)->hugetlb();
  }
  std::printf("{\"setup_s\": %.6f, \"hugetlb\": %s}\n", Median(times), hugetlb ? "true" : "false");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--arena-setup") return ArenaSetup(std::stoull(argv[2]));
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s SOCKET RUN BYTES SAVES\n", argv[0]);
    return 2;
  }
  const size_t bytes = std::stoull(argv[3]);
  const int saves = std::stoi(argv[4]);
  auto client = ckptd::Client::Connect(argv[1]);
  if (!client.ok()) return 1;
  const char* keep_last = std::getenv("BENCH_KEEP_LAST");
  auto run = ckptd::bench::OpenBenchRun(
      **client, argv[2], keep_last != nullptr ? static_cast<uint32_t>(std::atoi(keep_last)) : 0);
  if (run == nullptr) return 1;
  std::vector<char> data(bytes);
  const std::vector<ckptd::TensorView> views = ckptd::bench::BenchTensors(data);

  // The floor: one warm memcpy of the same bytes into a pre-faulted arena.
  double memcpy_s = 1e9;
  {
    auto arena = ckptd::Arena::Create(bytes);
    if (!arena.ok()) return 1;
    for (int i = 0; i < 3; ++i) {
      double t0 = Now();
      std::memcpy((*arena)->data(), data.data(), bytes);
      memcpy_s = std::min(memcpy_s, Now() - t0);
    }
  }

  std::string notice;
  auto cp = ckptd::Checkpointer::Create(
      run.get(),
      {.copy_threads =
           std::getenv("BENCH_COPY_THREADS") ? std::atoi(std::getenv("BENCH_COPY_THREADS")) : 0,
       .overlap_copy = std::getenv("BENCH_OVERLAP") != nullptr,
       .log = [&](const std::string& l) { notice = l; }});
  if (!cp.ok() || !(*cp)->stats().shared_memory) {
    std::fprintf(stderr, "no shared-memory path: %s\n", notice.c_str());
    return 1;
  }
  double t_reserve = Now();
  if (absl::Status st = (*cp)->Reserve(bytes); !st.ok()) {
    std::fprintf(stderr, "reserve: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  const double reserve_s = Now() - t_reserve;
  std::vector<double> stalls, durables, calls;  // calls: the stall minus the copy
  const bool interactive = saves == 0;
  if (interactive) {
    std::printf("ready\n");
    std::fflush(stdout);
  }
  uint64_t step = 0;
  auto save = [&]() -> double {  // the stall, or < 0 after printing the error
    const double t0 = Now();
    auto r = (*cp)->Save(++step, views);
    if (!r.ok() || !*r) {
      std::fprintf(stderr, "save: %s\n",
                   r.ok() ? "skipped" : std::string(r.status().message()).c_str());
      return -1;
    }
    return Now() - t0;
  };
  auto wait = [&]() {
    absl::Status st = (*cp)->Wait();
    if (!st.ok()) std::fprintf(stderr, "wait: %s\n", std::string(st.message()).c_str());
    return st.ok();
  };
  char line[64];
  for (int k = 1; interactive ? std::fgets(line, sizeof line, stdin) != nullptr : k <= saves; ++k) {
    std::istringstream command(interactive ? line : "save");
    std::string verb;
    command >> verb;
    if (verb == "spaced" || verb == "burst") {
      int n = 0;
      double gap = 0;
      command >> n >> gap;
      std::vector<double> run_stalls, copies, waits;
      const double first = Now();
      double last_call = first;
      for (int i = 0; i < n; ++i) {
        last_call = Now();
        const double waited_before = (*cp)->stats().buffer_wait_s;
        const double stall = save();
        if (stall < 0) return 1;
        run_stalls.push_back(stall);
        copies.push_back((*cp)->stats().last_copy_s);
        waits.push_back((*cp)->stats().buffer_wait_s - waited_before);
        if (std::getenv("BENCH_VERBOSE")) {
          std::fprintf(stderr, "stall %.2f ms copy %.2f ms\n", stall * 1000,
                       (*cp)->stats().last_copy_s * 1000);
        }
        if (verb == "spaced" && i + 1 < n) {
          std::this_thread::sleep_for(std::chrono::duration<double>(gap));
        }
      }
      if (!wait()) return 1;
      std::printf(
          "{\"stalls\": %s, \"copies\": %s, \"waits\": %s, \"durable_s\": %.6f, "
          "\"seconds\": %.6f}\n",
          JsonList(run_stalls).c_str(), JsonList(copies).c_str(), JsonList(waits).c_str(),
          Now() - last_call, Now() - first);
      std::fflush(stdout);
      continue;
    }
    const double t0 = Now();
    const double stall = save();
    if (stall < 0 || !wait()) return 1;
    const double durable = Now() - t0;
    stalls.push_back(stall);
    durables.push_back(durable);
    calls.push_back(stall - (*cp)->stats().last_copy_s);
    if (std::getenv("BENCH_VERBOSE"))
      std::fprintf(stderr, "save %d call %.3f ms\n", k, calls.back() * 1000);
    if (interactive) {
      std::printf("{\"stall_s\": %.6f, \"durable_s\": %.6f}\n", stall, durable);
      std::fflush(stdout);
    }
  }
  if (stalls.empty()) {  // only spaced/burst commands: no summary
    std::printf("{}\n");
    return interactive ? 0 : 1;
  }
  std::printf(
      "{\"memcpy_s\": %.6f, \"stall_s\": %.6f, \"max_stall_s\": %.6f, \"durable_s\": %.6f, "
      "\"copy_s\": %.6f, \"call_s\": %.6f, \"reserve_s\": %.6f, \"saves\": %d}\n",
      memcpy_s, Median(stalls), *std::max_element(stalls.begin(), stalls.end()), Median(durables),
      (*cp)->stats().last_copy_s, Median(calls), reserve_s, static_cast<int>(stalls.size()));
  return 0;
}
