// GGUF's two type spaces: metadata value types and ggml tensor types, with
// the block geometry a reader needs to bound-check any file, including
// types ckptd never writes. Pure data; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"

namespace ckptd::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
inline constexpr uint32_t kVersion = 3;
inline constexpr uint32_t kDefaultAlignment = 32;
inline constexpr size_t kMaxTensorNameBytes = 63;  // ggml: name must fit char[64]
inline constexpr int kMaxDims = 4;

// Metadata value type ids, exactly as stored in the file.
enum class ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
inline constexpr uint32_t kValueTypeCount = 13;

std::string_view ValueTypeName(ValueType t);  // "u32", "string", ...
std::optional<ValueType> ParseValueTypeName(std::string_view name);
// Bytes of one scalar value; nullopt for string and array (variable size).
std::optional<size_t> ScalarSize(ValueType t);

// ggml tensor type ids. Only ids with a TensorTypeInfo entry are valid;
// retired ids (4, 5, 31-33, 36-38) are rejected like unknown ones.
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
  kNVFP4 = 40,
  kQ1_0 = 41,
  kQ2_0 = 42,
};

struct TensorTypeInfo {
  TensorType type;
  std::string_view name;  // ggml's spelling: "f32", "q8_0", "bf16", ...
  uint32_t block_elems;   // elements per block
  uint32_t block_bytes;   // bytes per block
};

// nullopt for unknown or retired ids.
std::optional<TensorTypeInfo> LookupTensorType(uint32_t id);
std::optional<TensorTypeInfo> LookupTensorType(std::string_view name);
std::span<const TensorTypeInfo> AllTensorTypes();

// Bytes of a tensor with GGUF dims `ne` (ne[0] fastest-varying). Fails when
// a dim is zero or negative as int64, ne[0] is not a whole number of blocks,
// or the element/byte count overflows int64 (ggml's own bound).
absl::StatusOr<uint64_t> TensorBytes(TensorType type, std::span<const uint64_t> ne);

// Rounds x up to a power-of-two alignment; false on overflow.
bool AlignUp(uint64_t x, uint64_t alignment, uint64_t* out);

}  // namespace ckptd::gguf
