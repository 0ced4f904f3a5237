// Joining a multi-rank step's parts into one checkpoint, as `ckptctl merge`
// does: every part's model tensors, whole tensors as they are and the
// slices of a row-sharded tensor (ckpt.shard.<name>.* keys) reassembled
// into the whole tensor, in one step_N.gguf-style file with ckptd's digests
// and uuid; the first part's metadata without the split.* and ckpt.shard.*
// keys. Each part's tensors are checked against its recorded digests as
// they are read. Training-state files are not merged (each rank resumes
// from its own).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/gguf/layout.h"

namespace ckptd::storage {

struct MergeResult {
  uint64_t step = 0;
  uint32_t world_size = 0;
  size_t tensors = 0;         // in the merged file
  size_t sliced_tensors = 0;  // reassembled from slices
  uint64_t bytes = 0;         // the merged file's size
  std::string uuid;
};

// `first_part`: step_N-00001-of-WWWWW.gguf (the others are found beside
// it); `out`: the merged file (written under a temp name, renamed when
// complete). INVALID_ARGUMENT / NOT_FOUND / DATA_LOSS name the part and
// what is wrong; nothing is left behind on failure.
absl::StatusOr<MergeResult> MergeParts(env::Env* env, const std::string& first_part,
                                       const std::string& out);

}  // namespace ckptd::storage
