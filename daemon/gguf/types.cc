// Type tables for GGUF metadata values and ggml tensor types.
#include "daemon/gguf/types.h"

#include <array>
#include <limits>

#include "daemon/base/strings.h"

namespace ckptd::gguf {
namespace {

constexpr std::array<std::string_view, kValueTypeCount> kValueTypeNames = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};

constexpr uint32_t kQK = 256;  // ggml's QK_K super-block

// Block geometry from ggml's type_traits (ggml-common.h block structs).
constexpr std::array<TensorTypeInfo, 35> kTensorTypes = {{
    {TensorType::kF32, "f32", 1, 4},
    {TensorType::kF16, "f16", 1, 2},
    {TensorType::kQ4_0, "q4_0", 32, 18},
    {TensorType::kQ4_1, "q4_1", 32, 20},
    {TensorType::kQ5_0, "q5_0", 32, 22},
    {TensorType::kQ5_1, "q5_1", 32, 24},
    {TensorType::kQ8_0, "q8_0", 32, 34},
    {TensorType::kQ8_1, "q8_1", 32, 36},
    {TensorType::kQ2_K, "q2_K", kQK, 84},
    {TensorType::kQ3_K, "q3_K", kQK, 110},
    {TensorType::kQ4_K, "q4_K", kQK, 144},
    {TensorType::kQ5_K, "q5_K", kQK, 176},
    {TensorType::kQ6_K, "q6_K", kQK, 210},
    {TensorType::kQ8_K, "q8_K", kQK, 292},
    {TensorType::kIQ2_XXS, "iq2_xxs", kQK, 66},
    {TensorType::kIQ2_XS, "iq2_xs", kQK, 74},
    {TensorType::kIQ3_XXS, "iq3_xxs", kQK, 98},
    {TensorType::kIQ1_S, "iq1_s", kQK, 50},
    {TensorType::kIQ4_NL, "iq4_nl", 32, 18},
    {TensorType::kIQ3_S, "iq3_s", kQK, 110},
    {TensorType::kIQ2_S, "iq2_s", kQK, 82},
    {TensorType::kIQ4_XS, "iq4_xs", kQK, 136},
    {TensorType::kI8, "i8", 1, 1},
    {TensorType::kI16, "i16", 1, 2},
    {TensorType::kI32, "i32", 1, 4},
    {TensorType::kI64, "i64", 1, 8},
    {TensorType::kF64, "f64", 1, 8},
    {TensorType::kIQ1_M, "iq1_m", kQK, 56},
    {TensorType::kBF16, "bf16", 1, 2},
    {TensorType::kTQ1_0, "tq1_0", kQK, 54},
    {TensorType::kTQ2_0, "tq2_0", kQK, 66},
    {TensorType::kMXFP4, "mxfp4", 32, 17},
    {TensorType::kNVFP4, "nvfp4", 64, 36},
    {TensorType::kQ1_0, "q1_0", 128, 18},
    {TensorType::kQ2_0, "q2_0", 64, 18},
}};

constexpr uint64_t kInt64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

}  // namespace

std::string_view ValueTypeName(ValueType t) {
  auto i = static_cast<uint32_t>(t);
  return i < kValueTypeCount ? kValueTypeNames[i] : "unknown";
}

std::optional<ValueType> ParseValueTypeName(std::string_view name) {
  for (uint32_t i = 0; i < kValueTypeCount; ++i) {
    if (kValueTypeNames[i] == name) return static_cast<ValueType>(i);
  }
  return std::nullopt;
}

std::optional<size_t> ScalarSize(ValueType t) {
  switch (t) {
    case ValueType::kU8:
    case ValueType::kI8:
    case ValueType::kBool:
      return 1;
    case ValueType::kU16:
    case ValueType::kI16:
      return 2;
    case ValueType::kU32:
    case ValueType::kI32:
    case ValueType::kF32:
      return 4;
    case ValueType::kU64:
    case ValueType::kI64:
    case ValueType::kF64:
      return 8;
    case ValueType::kString:
    case ValueType::kArray:
      return std::nullopt;
  }
  return std::nullopt;
}

std::optional<TensorTypeInfo> LookupTensorType(uint32_t id) {
  for (const auto& info : kTensorTypes) {
    if (static_cast<uint32_t>(info.type) == id) return info;
  }
  return std::nullopt;
}

std::optional<TensorTypeInfo> LookupTensorType(std::string_view name) {
  for (const auto& info : kTensorTypes) {
    if (info.name == name) return info;
  }
  return std::nullopt;
}

std::span<const TensorTypeInfo> AllTensorTypes() { return kTensorTypes; }

absl::StatusOr<uint64_t> TensorBytes(TensorType type, std::span<const uint64_t> ne) {
  auto info = LookupTensorType(static_cast<uint32_t>(type));
  if (!info) {
    return absl::InvalidArgumentError(
        StrCat("unknown tensor type id ", static_cast<uint32_t>(type)));
  }
  if (ne.empty() || ne.size() > static_cast<size_t>(kMaxDims)) {
    return absl::InvalidArgumentError(
        StrCat("tensor has ", ne.size(), " dims; GGUF allows 1 to ", kMaxDims));
  }
  uint64_t elems = 1;
  for (size_t i = 0; i < ne.size(); ++i) {
    if (ne[i] == 0 || ne[i] > kInt64Max) {
      return absl::InvalidArgumentError(
          StrCat("dim ", i, " is ", ne[i], "; each dim must be in 1..2^63-1"));
    }
    if (__builtin_mul_overflow(elems, ne[i], &elems) || elems > kInt64Max) {
      return absl::InvalidArgumentError("element count overflows int64");
    }
  }
  if (ne[0] % info->block_elems != 0) {
    return absl::InvalidArgumentError(StrCat("dim 0 is ", ne[0], ", not a multiple of ", info->name,
                                             "'s block of ", info->block_elems, " elements"));
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(elems / info->block_elems, uint64_t{info->block_bytes}, &bytes) ||
      bytes > kInt64Max) {
    return absl::InvalidArgumentError("tensor byte size overflows int64");
  }
  return bytes;
}

bool AlignUp(uint64_t x, uint64_t alignment, uint64_t* out) {
  uint64_t bumped = 0;
  if (__builtin_add_overflow(x, alignment - 1, &bumped)) return false;
  *out = bumped & ~(alignment - 1);
  return true;
}

}  // namespace ckptd::gguf
