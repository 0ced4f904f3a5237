// Plans a GGUF v3 file before a byte is written: the header's size, every
// tensor's offset and the total size. Writers and readers share TensorInfo.
//
// Dims are in GGUF order: ne[0] is the fastest-varying dimension. A
// row-major (PyTorch/numpy, C order) tensor of shape (d0, d1, ..., dk) is
// stored as ne = [dk, ..., d1, d0]; e.g. a Linear weight (out, in) has
// ne = [in, out]. The bytes are the same; only the order of dims flips.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/gguf/types.h"
#include "daemon/gguf/value.h"

namespace ckptd::gguf {

// Keys ckptd reserves with fixed-width placeholders, patched after the data
// has been hashed (see digest.h).
inline constexpr std::string_view kKeyAlignment = "general.alignment";
inline constexpr std::string_view kKeyUuid = "general.uuid";
inline constexpr std::string_view kKeyContentDigest = "ckpt.content_digest";
inline constexpr std::string_view kKeyTensorDigests = "ckpt.tensor_digests";
// XXH3-128 over the header with the slots' values left out (MetadataDigest
// in encode.h): every other key and value, the counts and the tensor table.
inline constexpr std::string_view kKeyMetadataDigest = "ckpt.metadata_digest";
// Present only when general.uuid is not UuidFromDigest(content digest):
// "gguf-hash" (see UuidScheme).
inline constexpr std::string_view kKeyUuidScheme = "ckpt.uuid_scheme";

struct TensorSpec {
  std::string name;
  TensorType type = TensorType::kF32;
  std::vector<uint64_t> ne;  // GGUF order, ne[0] fastest-varying
};

struct TensorInfo {
  std::string name;
  TensorType type = TensorType::kF32;
  std::vector<uint64_t> ne;
  uint64_t offset = 0;  // relative to the data section
  uint64_t nbytes = 0;  // without alignment padding
  friend bool operator==(const TensorInfo&, const TensorInfo&) = default;
};

enum class DigestSlots { kNone, kReserve };

// How general.uuid is made: from the XXH3-128 content digest (fast, the
// default), or exactly as llama.cpp's gguf_hash.py does (UUIDv5 over the
// tensor bytes, SHA-1; recorded as ckpt.uuid_scheme = "gguf-hash").
enum class UuidScheme { kContent, kGgufHash };
inline constexpr std::string_view kGgufHashScheme = "gguf-hash";

struct PlanOptions {
  uint32_t alignment = kDefaultAlignment;  // power of two
  DigestSlots digest_slots = DigestSlots::kReserve;
  UuidScheme uuid_scheme = UuidScheme::kContent;
};

struct Layout {
  Metadata metadata;  // exactly as encoded, slots included
  std::vector<TensorInfo> tensors;
  uint32_t alignment = kDefaultAlignment;
  bool has_digest_slots = false;
  UuidScheme uuid_scheme = UuidScheme::kContent;
  uint64_t header_bytes = 0;  // up to the end of the tensor infos
  uint64_t data_offset = 0;   // header_bytes rounded up to the alignment
  uint64_t file_size = 0;     // every tensor padded to the alignment, as ggml writes
};

// Validates everything a GGUF reader (and llama.cpp) will check and lays
// tensors out contiguously in the given order, each padded to the
// alignment. general.alignment in `metadata` wins over options.alignment if
// both are given and agree; disagreement is an error.
absl::StatusOr<Layout> PlanLayout(Metadata metadata, std::vector<TensorSpec> tensors,
                                  const PlanOptions& options = {});

// The placeholder values of the digest slots (fixed width).
Value UuidPlaceholder();
Value ContentDigestPlaceholder();
Value TensorDigestsPlaceholder(size_t n_tensors);

}  // namespace ckptd::gguf
