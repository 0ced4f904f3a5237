// SplitPartMetadata: the bounds gguf-split's key types impose, then the keys.
#include "daemon/storage/split_part.h"

#include <limits>

#include "daemon/base/strings.h"
#include "daemon/storage/file_names.h"

namespace ckptd::storage {

absl::StatusOr<gguf::Metadata> SplitPartMetadata(const gguf::Metadata& model, uint32_t rank,
                                                 uint32_t world_size, uint64_t total_tensors) {
  if (world_size == 0 || world_size > kMaxWorldSize) {
    return absl::InvalidArgumentError(StrCat("world size ", world_size, " is not 1 to ",
                                             kMaxWorldSize, " (split.count is a u16)"));
  }
  if (rank >= world_size) {
    return absl::InvalidArgumentError(StrCat("rank ", rank, " is outside a world of ", world_size,
                                             " (ranks 0 to ", world_size - 1, ")"));
  }
  if (total_tensors > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(StrCat(total_tensors, " tensors in all parts is more than ",
                                             "split.tensors.count (an i32) can hold"));
  }
  gguf::Metadata out;
  if (rank == 0) out = model;
  out.Set(kSplitNo, gguf::Value(static_cast<uint16_t>(rank)));
  out.Set(kSplitCount, gguf::Value(static_cast<uint16_t>(world_size)));
  out.Set(kSplitTensorsCount, gguf::Value(static_cast<int32_t>(total_tensors)));
  return out;
}

}  // namespace ckptd::storage
