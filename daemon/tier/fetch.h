// Restoring a step from the object store: the step's manifest (or the one
// `latest` names), then every file it lists, downloaded with ranged GETs
// several at a time (memory: parallel x part size), each checked against
// its manifest ETag (the MD5s of its parts) and size, the model file's
// tensor digests and content digest verified, and placed atomically: temp
// files in the destination directory, the training state and exports
// renamed first and the model file last (the commit point), then the
// directory fsynced. Nothing of a step that fails a check is left behind.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/tier/object_store.h"

namespace ckptd::tier {

struct FetchOptions {
  std::string prefix;  // as tier.s3.prefix
  int parallel = 4;
  uint64_t max_memory_bytes = 64ull << 20;
  // A multi-rank step: only this rank's files (its part and training
  // state); nullopt = every file of the step (ckptctl fetch, merge).
  std::optional<uint32_t> rank;
};

struct FetchResult {
  uint64_t step = 0;
  std::string uuid;
  std::vector<std::string> files;  // placed, model file last
  uint32_t world_size = 0;         // a multi-rank step's world size, 0 for a whole step
  uint64_t bytes = 0;
  double seconds = 0;
};

// `step`: nullopt = the step `latest` names. NOT_FOUND names what is missing;
// DATA_LOSS names the file and the check it failed.
absl::StatusOr<FetchResult> FetchStep(env::Env* env, ObjectStore& store,
                                      const FetchOptions& options, const std::string& run_id,
                                      std::optional<uint64_t> step, const std::string& dest_dir);

}  // namespace ckptd::tier
