// Pins of a run: steps retention must never delete, each with a reason.
// Stored atomically in <run_dir>/pins.json (temp + fsync + rename), so they
// survive restarts. Not thread-safe: the run's lock guards it.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"

namespace ckptd::storage {

class PinStore {
 public:
  // Loads <run_dir>/pins.json (none yet: no pins). A damaged file is an error.
  static absl::StatusOr<PinStore> Load(env::Env* env, const std::string& run_dir);

  const std::map<uint64_t, std::string>& pins() const { return pins_; }
  const std::string* Find(uint64_t step) const;
  absl::Status Pin(uint64_t step, std::string reason);
  // NOT_FOUND when the step was not pinned.
  absl::Status Unpin(uint64_t step);
  // Drops pins of steps that no longer exist (after an overwrite or a manual delete).
  absl::Status Forget(uint64_t step);

 private:
  PinStore(env::Env* env, std::string path) : env_(env), path_(std::move(path)) {}
  absl::Status Save() const;

  env::Env* env_;
  std::string path_;
  std::map<uint64_t, std::string> pins_;
};

}  // namespace ckptd::storage
