// gguf_bench [--quick]: the GGUF layer's own cost, against the memory limit
// measured in the same run. Writes a checkpoint-shaped file (many tensors)
// into a memory sink, hashing as it goes, and compares with a plain memcpy
// of the same bytes and with XXH3-128 alone. Numbers are noisy on shared
// machines: read the ratios, not the absolute figures.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "daemon/gguf/writer.h"

namespace {

using Clock = std::chrono::steady_clock;
using ckptd::gguf::TensorType;

// Discards appended bytes after copying them into a reused buffer, so the
// measurement includes one copy (as a file write would) but no allocation.
class CopySink : public ckptd::gguf::Sink {
 public:
  explicit CopySink(size_t cap) : buf_(new char[cap]), cap_(cap) {
    std::memset(buf_.get(), 1, cap_);  // pre-fault
  }
  absl::Status Append(std::string_view b) override {
    size_t n = std::min(b.size(), cap_);
    std::memcpy(buf_.get(), b.data(), n);
    return absl::OkStatus();
  }
  absl::Status WriteAt(uint64_t, std::string_view) override { return absl::OkStatus(); }

 private:
  std::unique_ptr<char[]> buf_;
  size_t cap_;
};

template <typename F>
double BestSeconds(int reps, F&& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  const size_t total = quick ? (64u << 20) : (512u << 20);
  const size_t tensor_bytes = 4u << 20;  // 1M f32 per tensor
  const size_t n_tensors = total / tensor_bytes;
  const size_t chunk = 1u << 20;  // the stream path's chunk size

  std::unique_ptr<char[]> src(new char[total]);
  for (size_t i = 0; i < total; ++i) src[i] = static_cast<char>(i * 131);
  std::unique_ptr<char[]> dst(new char[total]);
  std::memset(dst.get(), 0, total);

  std::vector<ckptd::gguf::TensorSpec> specs;
  for (size_t i = 0; i < n_tensors; ++i) {
    specs.push_back({"blk." + std::to_string(i) + ".weight",
                     TensorType::kF32,
                     {1024, tensor_bytes / 4 / 1024}});
  }
  auto layout = ckptd::gguf::PlanLayout({}, specs);
  if (!layout.ok()) return 1;

  const int reps = quick ? 3 : 5;
  double memcpy_s = BestSeconds(reps, [&] { std::memcpy(dst.get(), src.get(), total); });
  double hash_s = BestSeconds(reps, [&] {
    ckptd::gguf::TensorHasher h;
    h.Update(src.get(), total);
    (void)h.Finish();
  });
  double write_s = BestSeconds(reps, [&] {
    CopySink sink(chunk + 4096);
    ckptd::gguf::Writer w(*layout, &sink);
    (void)w.WriteHeader();
    for (size_t at = 0; at < total; at += chunk) {
      (void)w.WriteData(std::string_view(src.get() + at, std::min(chunk, total - at)));
    }
    (void)w.Finish();
  });

  auto gbps = [&](double s) { return static_cast<double>(total) / s / 1e9; };
  std::printf("gguf_bench: %zu MiB in %zu f32 tensors, best of %d\n\n", total >> 20, n_tensors,
              reps);
  std::printf("%-34s %10s %10s %12s\n", "what", "seconds", "GB/s", "vs memcpy");
  std::printf("%-34s %10.4f %10.2f %12s\n", "memcpy (memory limit)", memcpy_s, gbps(memcpy_s),
              "1.00x");
  std::printf("%-34s %10.4f %10.2f %11.2fx\n", "XXH3-128 over the bytes", hash_s, gbps(hash_s),
              hash_s / memcpy_s);
  std::printf("%-34s %10.4f %10.2f %11.2fx\n", "GGUF writer (copy + hash + pad)", write_s,
              gbps(write_s), write_s / memcpy_s);
  return 0;
}
