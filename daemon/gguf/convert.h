// dtype conversions bit-exact with ggml's reference code (see
// shared/GGUF-NOTES.md): fp32 <-> fp16, fp32 <-> bf16, fp32 -> Q8_0 and back.
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace ckptd::gguf {

uint16_t Fp32ToFp16(float f);  // round to nearest even; NaN -> 0x7e00 | sign
float Fp16ToFp32(uint16_t h);
uint16_t Fp32ToBf16(float f);  // round to nearest even; NaN -> quiet, payload kept
float Bf16ToFp32(uint16_t b);

inline constexpr size_t kQ8_0BlockElems = 32;
inline constexpr size_t kQ8_0BlockBytes = 34;  // fp16 scale, then 32 x int8

// Quantizes src (a multiple of 32 values) into src.size() / 32 blocks.
absl::Status QuantizeQ8_0(std::span<const float> src, std::span<uint8_t> dst);
absl::Status DequantizeQ8_0(std::span<const uint8_t> src, std::span<float> dst);

}  // namespace ckptd::gguf
