// Content identity of a checkpoint: an XXH3-128 digest of each tensor's
// bytes, a content digest over the canonical tensor stream, and a uuid
// derived from it (so equal tensors give equal uuids, whatever the metadata).
//
// Canonical stream, per tensor in file order (all integers little-endian):
//   u64 name length, name bytes, u32 ggml type, u32 n_dims, u64 ne[n_dims],
//   u64 data bytes, then the tensor's XXH3-128 digest (u64 low, u64 high).
// content digest = XXH3-128(stream). Hashing each tensor's bytes separately
// lets `verify` name the first damaged tensor and lets writers hash tensors
// in parallel; the stream binds names, types and shapes to those bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/gguf/types.h"

struct XXH3_state_s;

namespace ckptd::gguf {

struct Digest128 {
  uint64_t low = 0;
  uint64_t high = 0;
  friend bool operator==(const Digest128&, const Digest128&) = default;
};

// 32 lowercase hex digits, most significant first (XXH128's canonical form).
// Parsing accepts only that form, so each digest has one spelling.
std::string DigestHex(const Digest128& d);
absl::StatusOr<Digest128> ParseDigestHex(std::string_view hex);

// The digests of one file.
struct ContentDigest {
  Digest128 content;
  std::vector<Digest128> tensors;  // in file order
  std::string uuid;                // UuidFromDigest(content)
};

// "xxh3-128:" + DigestHex; the value of the ckpt.content_digest key.
inline constexpr std::string_view kContentDigestPrefix = "xxh3-128:";
std::string ContentDigestString(const Digest128& d);
absl::StatusOr<Digest128> ParseContentDigestString(std::string_view s);

// RFC 9562 version 8 (custom) uuid from the first 16 digest bytes, in the
// 8-4-4-4-12 form. Same content digest => same uuid.
std::string UuidFromDigest(const Digest128& d);

// Streaming XXH3-128 over one tensor's bytes. Not thread-safe; movable.
class TensorHasher {
 public:
  TensorHasher();
  ~TensorHasher();
  TensorHasher(TensorHasher&& other) noexcept;
  TensorHasher& operator=(TensorHasher&& other) noexcept;
  TensorHasher(const TensorHasher&) = delete;
  TensorHasher& operator=(const TensorHasher&) = delete;

  void Reset();
  void Update(const void* data, size_t n);
  Digest128 Finish() const;

 private:
  XXH3_state_s* state_;
};

// Builds the content digest from per-tensor digests, in file order.
class ContentDigestBuilder {
 public:
  void AddTensor(std::string_view name, TensorType type, std::span<const uint64_t> ne,
                 uint64_t nbytes, const Digest128& tensor_digest);
  Digest128 Finish() const;

 private:
  std::string stream_;
};

}  // namespace ckptd::gguf
