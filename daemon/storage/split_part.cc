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

void SetShardKeys(const std::string& name, const policy::TensorSlice& slice, gguf::Metadata* md) {
  std::vector<gguf::Value> full;
  for (uint64_t d : slice.full_ne) full.emplace_back(d);
  const std::string key = StrCat(kShardPrefix, name);
  md->Set(StrCat(key, ".full_ne"), gguf::Value::MakeArray(gguf::ValueType::kU64, std::move(full)));
  md->Set(StrCat(key, ".dim"), gguf::Value(slice.dim));
  md->Set(StrCat(key, ".offset"), gguf::Value(slice.offset));
}

absl::StatusOr<std::optional<policy::TensorSlice>> ShardSliceOf(const gguf::Metadata& md,
                                                                const gguf::TensorInfo& t) {
  const std::string key = StrCat(kShardPrefix, t.name);
  const gguf::Value* full = md.Find(StrCat(key, ".full_ne"));
  const gguf::Value* dim = md.Find(StrCat(key, ".dim"));
  const gguf::Value* offset = md.Find(StrCat(key, ".offset"));
  if (!full && !dim && !offset) return std::nullopt;
  const gguf::Array* a = full ? full->get_if<gguf::Array>() : nullptr;
  const uint32_t* d = dim ? dim->get_if<uint32_t>() : nullptr;
  const uint64_t* o = offset ? offset->get_if<uint64_t>() : nullptr;
  policy::TensorSlice slice;
  if (a) {
    for (const gguf::Value& v : a->items) {
      if (const uint64_t* n = v.get_if<uint64_t>()) slice.full_ne.push_back(*n);
    }
  }
  if (!a || !d || !o || slice.full_ne.size() != t.ne.size() || *d >= t.ne.size() ||
      *o + t.ne[*d] > slice.full_ne[*d]) {
    return absl::InvalidArgumentError(
        StrCat("tensor '", t.name, "' has incomplete or inconsistent ", key, ".* keys"));
  }
  slice.dim = *d;
  slice.offset = *o;
  slice.length = t.ne[*d];
  return slice;
}

}  // namespace ckptd::storage
