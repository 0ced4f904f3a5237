// Byte encoding of a planned GGUF header (little-endian, v3). Pure.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "daemon/gguf/digest.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/value.h"

namespace ckptd::gguf {

// The whole header: magic, version, counts, key/values, tensor infos and the
// zero padding up to layout.data_offset. Its size is exactly data_offset.
std::string EncodeHeader(const Layout& layout);

// Appends one value's bytes (without its type id) to out.
void AppendValue(std::string* out, const Value& v);

// The keys whose values are patched after the data is hashed: general.uuid,
// ckpt.content_digest, ckpt.tensor_digests, ckpt.metadata_digest.
bool IsDigestSlot(std::string_view key);

// The metadata digest: XXH3-128 over the header as encoded, in file order,
// except the digest slots' values (their keys and type ids are included):
//   magic, version, tensor count, key/value count;
//   per key/value: u64 key length, key, u32 type, and, unless the key is a
//     digest slot, the value;
//   per tensor: u64 name length, name, u32 n_dims, u64 ne[n_dims], u32 type,
//     u64 offset.
// Every header byte a reader depends on is under it or under the content
// digest; general.uuid keeps its tensor-only definition.
Digest128 MetadataDigest(uint32_t version, const Metadata& metadata,
                         const std::vector<TensorInfo>& tensors);

}  // namespace ckptd::gguf
