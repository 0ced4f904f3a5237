// The GGUF keys of one rank's part of a multi-rank step, as llama.cpp's
// gguf-split writes shards (llama.cpp checks them when it loads a split
// model): split.no (u16, 0-based), split.count (u16) and
// split.tensors.count (i32, the tensors of all parts together) in every
// part; the model's own metadata (architecture, hyperparameters,
// tokenizer) in the first part only, as gguf-split leaves it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/value.h"
#include "daemon/policy/step_commit.h"

namespace ckptd::storage {

inline constexpr const char* kSplitNo = "split.no";
inline constexpr const char* kSplitCount = "split.count";
inline constexpr const char* kSplitTensorsCount = "split.tensors.count";
// A rank's slice of a row-sharded tensor T: ckpt.shard.T.full_ne (u64
// array, the whole tensor's dims in GGUF order), ckpt.shard.T.dim (u32),
// ckpt.shard.T.offset (u64); the slice's length is the saved tensor's
// ne[dim].
inline constexpr std::string_view kShardPrefix = "ckpt.shard.";

// INVALID_ARGUMENT, naming the bound, for a rank outside the world, a
// world over 65535 or a tensor count over INT32_MAX.
// Writes the ckpt.shard.<name>.* keys of `slice` (its length is the saved
// tensor's, not written).
void SetShardKeys(const std::string& name, const policy::TensorSlice& slice, gguf::Metadata* md);
// The slice a part's tensor holds, from its ckpt.shard keys (length: the
// tensor's ne[dim]); nullopt for a whole tensor. INVALID_ARGUMENT for keys
// that are partial, mistyped or do not fit the tensor.
absl::StatusOr<std::optional<policy::TensorSlice>> ShardSliceOf(const gguf::Metadata& md,
                                                                const gguf::TensorInfo& t);

absl::StatusOr<gguf::Metadata> SplitPartMetadata(const gguf::Metadata& model, uint32_t rank,
                                                 uint32_t world_size, uint64_t total_tensors);

}  // namespace ckptd::storage
