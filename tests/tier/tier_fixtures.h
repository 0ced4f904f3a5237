// What the tier's unit tests share: committed checkpoints on disk (real
// files, written by the checkpoint writer and committed by RunDir) and
// small stores that follow S3's rules with parts small enough to test fast.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/storage/run_dir.h"
#include "daemon/tier/memory_store.h"

namespace ckptd::tier::testing {

// Parts of this size in tests (S3's 5 MiB minimum scaled down: MemoryStore
// enforces whatever minimum it is given).
inline constexpr uint64_t kTestPartSize = 64 << 10;

inline MemoryStore::Options SmallParts() {
  return {.bucket = "test", .min_part_size = kTestPartSize};
}

// A run directory with committed checkpoints: `model_bytes` of model tensor
// (filled with `fill`) and a small training-state file; `description_bytes`
// of general.description make the model file's header that long.
class RunFiles {
 public:
  explicit RunFiles(std::string run_dir);
  absl::StatusOr<storage::CheckpointRecord> Commit(uint64_t step, uint64_t model_bytes, char fill,
                                                   size_t description_bytes = 0);
  const std::string& run_dir() const { return run_dir_; }
  storage::RunDir& dir() { return *dir_; }

 private:
  std::string run_dir_;
  std::unique_ptr<storage::RunDir> dir_;
};

}  // namespace ckptd::tier::testing
