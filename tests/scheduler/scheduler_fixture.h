// A run registry under a temporary root with runs opened and checkpoints
// saved through the real save path (SavePipeline, SaveSession, RunDir), for
// the tests of the layers that read and change runs.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_pipeline.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::scheduler::testing {

// A stream save's bytes, all in memory.
class BytesSource final : public ingest::TensorSource {
 public:
  explicit BytesSource(std::string bytes) : bytes_(std::move(bytes)) {}
  std::string_view transport() const override { return "test"; }
  absl::Status CopyTo(const ingest::ByteWriter& write) override { return write(bytes_); }

 private:
  std::string bytes_;
};

class SchedulerFixture {
 public:
  SchedulerFixture()
      : root_(std::filesystem::canonical(tmp_.path()).string()),
        registry_(env::Env::Default(), {root_}, policy::Schedule{.every_steps = 10},
                  DaemonFacts{.version = "test", .host = "h", .alignment = 32}) {}

  std::shared_ptr<Run> Open(const std::string& id, RunSettings settings = {}) {
    bool resumed = false;
    auto run = registry_.Open(id, "", std::move(settings), &resumed);
    EXPECT_OK(run.status());
    return run.ok() ? *run : nullptr;
  }
  // A forced save of one 64-float model tensor.
  absl::StatusOr<SaveOutcome> Save(const std::string& id, uint64_t step,
                                   std::map<std::string, double> metrics = {}) {
    SaveParams p{.run_id = id, .step = step, .metrics = std::move(metrics), .force = true};
    p.tensors.push_back({{"w", gguf::TensorType::kF32, {64}}, storage::TensorGroup::kModel});
    BytesSource source(std::string(256, static_cast<char>(step)));
    return SavePipeline(&registry_, nullptr).SaveNow(std::move(p), source);
  }
  RunRegistry& registry() { return registry_; }
  const std::string& root() const { return root_; }

 private:
  ckptd::testing::TempDir tmp_;
  std::string root_;
  RunRegistry registry_;
};

}  // namespace ckptd::scheduler::testing
