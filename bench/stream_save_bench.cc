// stream_save_bench TARGET RUN STEP BYTES [CA_FILE] [ROUNDS]: saves of BYTES
// of f32 tensors (64 MiB each) through the real client's stream path, to a
// Unix socket or, with CA_FILE, to HOST:PORT over TLS; steps STEP, STEP+1,
// ... (ROUNDS saves, 1 by default, each started by a line on stdin when
// ROUNDS > 1). Prints a JSON line per save with the trainer-visible time of
// the call, its CPU seconds in this process, and the daemon's own timings.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "bench/bench_run.h"
#include "ckptd/client.h"

int main(int argc, char** argv) {
  if (argc < 5 || argc > 7) {
    std::fprintf(stderr, "usage: %s TARGET RUN STEP BYTES [CA_FILE] [ROUNDS]\n", argv[0]);
    return 2;
  }
  const uint64_t step = std::stoull(argv[3]);
  const size_t bytes = std::stoull(argv[4]);
  ckptd::ClientOptions options;
  if (argc >= 6 && argv[5][0] != '\0') {
    options.tls = true;
    options.tls_ca_file = argv[5];
  }
  const int rounds = argc >= 7 ? std::stoi(argv[6]) : 1;
  auto client = ckptd::Client::Connect(argv[1], options);
  if (!client.ok()) {
    std::fprintf(stderr, "Connect: %s\n", std::string(client.status().message()).c_str());
    return 1;
  }
  // BENCH_KEEP_LAST: the run's retention, so many rounds fit the disk.
  const char* keep = std::getenv("BENCH_KEEP_LAST");
  auto run = ckptd::bench::OpenBenchRun(**client, argv[2], keep ? std::stoul(keep) : 0);
  if (run == nullptr) return 1;
  std::vector<char> data(bytes);
  const std::vector<ckptd::TensorView> views = ckptd::bench::BenchTensors(data);
  auto cpu_s = [] {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  };
  for (int i = 0; i < rounds; ++i) {
    if (rounds > 1) {
      std::printf("ready\n");
      std::fflush(stdout);
      std::string line;
      if (!std::getline(std::cin, line)) return 0;
    }
    const double cpu0 = cpu_s();
    auto t0 = std::chrono::steady_clock::now();
    auto r = run->Save(step + i, views, {}, {.force = true});
    double call_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!r.ok()) {
      std::fprintf(stderr, "Save: %s\n", std::string(r.status().message()).c_str());
      return 1;
    }
    std::printf(
        "{\"call_s\": %.6f, \"cpu_s\": %.6f, \"received_s\": %.6f, \"durable_s\": %.6f, "
        "\"committed_s\": %.6f, \"file_bytes\": %llu}\n",
        call_s, cpu_s() - cpu0, r->timings().received_s(), r->timings().durable_s(),
        r->timings().committed_s(), static_cast<unsigned long long>(r->checkpoint().size_bytes()));
    std::fflush(stdout);
  }
  return 0;
}
