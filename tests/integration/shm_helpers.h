// Helpers the shm_tests sources share: tensors and their arenas, a run's
// OpenRun request, a parsed checkpoint, a process's memory and descriptors.
#pragma once

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

inline v1::OpenRunRequest Open(const std::string& run_id, uint64_t every_steps = 100) {
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

inline ParsedFile Parse(const std::string& path) {
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
inline int MemfdFds(pid_t pid) {
  int n = 0;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec).string().starts_with("/memfd:")) ++n;
  }
  return n;
}
inline int MemfdMappings(pid_t pid) {
  std::istringstream maps(Slurp("/proc/" + std::to_string(pid) + "/maps"));
  int n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find("/memfd:") != std::string::npos;
  return n;
}
inline uint64_t RssBytes(pid_t pid) {
  std::istringstream in(Slurp("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("VmRSS:")) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// The daemon's own memory: RssAnon + RssFile, without RssShmem (the
// trainers' arenas it maps, which are theirs).
inline uint64_t PrivateRssBytes(pid_t pid) {
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
using PointerTest = DaemonFixture;

// A Checkpointer on a run the shm path cannot serve: one notice containing
// `notice`, then stream saves.
inline std::unique_ptr<Checkpointer> ExpectStreamFallback(ckptd::Run* run,
                                                          const std::string& notice) {
  EXPECT_TRUE(run->opened().arena_socket().empty());
  std::vector<std::string> notices;
  auto cp = Checkpointer::Create(run, {.log = [&](const std::string& l) { notices.push_back(l); }});
  EXPECT_TRUE(cp.ok());
  if (!cp.ok()) return nullptr;
  EXPECT_FALSE((*cp)->stats().shared_memory);
  EXPECT_EQ(notices.size(), 1u);
  if (!notices.empty()) {
    EXPECT_THAT(notices[0], ::testing::HasSubstr(notice));
  }
  return std::move(*cp);
}

inline uint64_t PeakRssBytes(pid_t pid) {
  std::istringstream in(Slurp("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("VmHWM:")) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// The committed steps in a weights/ directory (step_N.gguf only: not
// train files, exports or parts), ascending.
inline std::vector<uint64_t> StepsOnDisk(const std::string& weights) {
  std::vector<uint64_t> steps;
  for (const auto& e : std::filesystem::directory_iterator(weights)) {
    const std::string name = e.path().filename();
    const std::string digits = name.size() > 10 ? name.substr(5, name.size() - 10) : std::string();
    if (name.starts_with("step_") && name.ends_with(".gguf") && !digits.empty() &&
        digits.find_first_not_of("0123456789") == std::string::npos) {
      steps.push_back(std::stoull(digits));
    }
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

}  // namespace ckptd::testing
