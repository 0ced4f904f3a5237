// stream_save_bench SOCKET RUN STEP BYTES: one save of BYTES of f32 tensors
// (64 MiB each) through the real client's stream path; prints JSON with the
// trainer-visible time of the call and the daemon's own timings.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "client/cpp/ckptd/client.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s SOCKET RUN STEP BYTES\n", argv[0]);
    return 2;
  }
  const uint64_t step = std::stoull(argv[3]);
  const size_t bytes = std::stoull(argv[4]);
  auto client = ckptd::Client::Connect(argv[1]);
  if (!client.ok()) return 1;
  ckptd::v1::OpenRunRequest open;
  open.set_run_id(argv[2]);
  auto* arch = open.add_model_metadata();
  arch->set_key("general.architecture");
  arch->mutable_value()->set_string_value("llama");
  auto run = (*client)->OpenRun(open);
  if (!run.ok()) {
    std::fprintf(stderr, "OpenRun: %s\n", std::string(run.status().message()).c_str());
    return 1;
  }
  constexpr size_t kTensor = 64 << 20;
  std::vector<char> data(bytes);
  for (size_t i = 0; i < bytes; i += 4096) data[i] = static_cast<char>(i >> 12);  // pre-faulted
  std::vector<ckptd::TensorView> views;
  for (size_t at = 0, i = 0; at < bytes; at += kTensor, ++i) {
    size_t n = std::min(kTensor, bytes - at);
    views.push_back({"blk." + std::to_string(i) + ".weight",
                     ckptd::v1::TENSOR_TYPE_F32,
                     {n / 4},
                     data.data() + at,
                     n});
  }
  auto t0 = std::chrono::steady_clock::now();
  auto r = (*run)->save(step, views, {}, {.force = true});
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
