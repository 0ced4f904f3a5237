// Shared by the save benchmarks: a run opened for benchmarking and BYTES of
// pre-faulted host memory as f32 tensors of 64 MiB each (the last smaller).
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "ckptd/client.h"

namespace ckptd::bench {

// Opens `run_id` (model metadata: general.architecture = llama; retention
// keep_last when not 0, so long runs of saves fit the disk); nullptr after
// printing the error.
inline std::unique_ptr<Run> OpenBenchRun(Client& client, const std::string& run_id,
                                         uint32_t keep_last = 0) {
  v1::OpenRunRequest open;
  open.set_run_id(run_id);
  if (keep_last > 0) open.mutable_retention()->set_keep_last(keep_last);
  auto* arch = open.add_model_metadata();
  arch->set_key("general.architecture");
  arch->mutable_value()->set_string_value("llama");
  auto run = client.OpenRun(open);
  if (!run.ok()) {
    std::fprintf(stderr, "OpenRun: %s\n", std::string(run.status().message()).c_str());
    return nullptr;
  }
  return std::move(*run);
}

// Views of `data` (filled one byte per page, so it is pre-faulted).
inline std::vector<TensorView> BenchTensors(std::vector<char>& data) {
  constexpr size_t kTensor = 64 << 20;
  for (size_t i = 0; i < data.size(); i += 4096) data[i] = static_cast<char>(i >> 12);
  std::vector<TensorView> views;
  for (size_t at = 0, i = 0; at < data.size(); at += kTensor, ++i) {
    const size_t n = std::min(kTensor, data.size() - at);
    views.push_back({"blk." + std::to_string(i) + ".weight",
                     v1::TENSOR_TYPE_F32,
                     {n / 4},
                     data.data() + at,
                     n});
  }
  return views;
}

}  // namespace ckptd::bench
