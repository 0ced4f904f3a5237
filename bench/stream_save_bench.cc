// stream_save_bench SOCKET RUN STEP BYTES: one save of BYTES of f32 tensors
// (64 MiB each) through the real client's stream path; prints JSON with the
// trainer-visible time of the call and the daemon's own timings.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_run.h"
#include "ckptd/client.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s SOCKET RUN STEP BYTES\n", argv[0]);
    return 2;
  }
  const uint64_t step = std::stoull(argv[3]);
  const size_t bytes = std::stoull(argv[4]);
  auto client = ckptd::Client::Connect(argv[1]);
  if (!client.ok()) return 1;
  auto run = ckptd::bench::OpenBenchRun(**client, argv[2]);
  if (run == nullptr) return 1;
  std::vector<char> data(bytes);
  const std::vector<ckptd::TensorView> views = ckptd::bench::BenchTensors(data);
  auto t0 = std::chrono::steady_clock::now();
  auto r = run->Save(step, views, {}, {.force = true});
  double call_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r.ok()) {
    std::fprintf(stderr, "Save: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  std::printf(
      "{\"call_s\": %.6f, \"received_s\": %.6f, \"durable_s\": %.6f, \"committed_s\": %.6f, "
      "\"file_bytes\": %llu}\n",
      call_s, r->timings().received_s(), r->timings().durable_s(), r->timings().committed_s(),
      static_cast<unsigned long long>(r->checkpoint().size_bytes()));
  return 0;
}
