// Reference dtype conversions, matching ggml bit for bit.
#include "daemon/gguf/convert.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "daemon/base/strings.h"

namespace ckptd::gguf {

uint16_t Fp32ToFp16(float f) {
  // Round-to-nearest-even construction used by ggml (from FP16 by Maratyszcza).
  const float scale_to_inf = std::bit_cast<float>(uint32_t{0x77800000});
  const float scale_to_zero = std::bit_cast<float>(uint32_t{0x08800000});
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;

  const uint32_t w = std::bit_cast<uint32_t>(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xff000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;

  base = std::bit_cast<float>((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = std::bit_cast<uint32_t>(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007c00u;
  const uint32_t mantissa_bits = bits & 0x00000fffu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

float Fp16ToFp32(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;

  const uint32_t exp_offset = 0xe0u << 23;
  const float exp_scale = std::bit_cast<float>(uint32_t{0x07800000});
  const float normalized = std::bit_cast<float>((two_w >> 4) + exp_offset) * exp_scale;

  const uint32_t magic_mask = 126u << 23;
  const float magic_bias = 0.5f;
  const float denormalized = std::bit_cast<float>((two_w >> 17) | magic_mask) - magic_bias;

  const uint32_t denormalized_cutoff = 1u << 27;
  const uint32_t result =
      sign | (two_w < denormalized_cutoff ? std::bit_cast<uint32_t>(denormalized)
                                          : std::bit_cast<uint32_t>(normalized));
  return std::bit_cast<float>(result);
}

uint16_t Fp32ToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 64);  // quiet NaN
  return static_cast<uint16_t>((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

float Bf16ToFp32(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

namespace {

// ggml's quantize_row_q8_0_ref for one block, element by element.
void QuantizeBlock(const float* x, uint8_t* out) {
  // ggml's MAX(a, b) is ((a) > (b) ? (a) : (b)): a NaN replaces the running
  // maximum, and the next number replaces the NaN.
  float amax = 0.0f;
  for (size_t j = 0; j < kQ8_0BlockElems; ++j) {
    const float a = std::fabs(x[j]);
    amax = amax > a ? amax : a;
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const uint16_t scale = Fp32ToFp16(d);
  std::memcpy(out, &scale, 2);
  for (size_t j = 0; j < kQ8_0BlockElems; ++j) {
    const float v = x[j] * id;
    // roundf of a NaN or infinity has no int8 value (C leaves it undefined);
    // x86 builds of ggml convert with cvttss2si, whose 0x80000000 stores 0.
    int32_t q = 0;
    if (std::isfinite(v)) {
      // C roundf (half away from zero) without the libm call: truncate, then
      // round on the remainder, which is exact for |v| < 2^23 (here |v| <= 127
      // but for a scale that underflowed; out of int8's range the low byte is
      // kept, as the x86 conversion does).
      const auto t = static_cast<int32_t>(v);
      const float rem = v - static_cast<float>(t);
      q = t + static_cast<int32_t>(rem >= 0.5f) - static_cast<int32_t>(rem <= -0.5f);
    }
    out[2 + j] = static_cast<uint8_t>(q);
  }
}

#if defined(__SSE2__)
// The same block four lanes at a time, bit for bit: without a NaN the
// maximum does not depend on the order it is taken in, and every lane does
// QuantizeBlock's arithmetic (one multiply, truncate, exact remainder).
// Returns false, writing nothing, when the block holds a NaN.
bool QuantizeBlockSse2(const float* x, uint8_t* out) {
  const __m128 sign = _mm_set1_ps(-0.0f);
  __m128 v[8];
  __m128 amax = _mm_setzero_ps();
  __m128 nan = _mm_setzero_ps();
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm_loadu_ps(x + 4 * i);
    nan = _mm_or_ps(nan, _mm_cmpunord_ps(v[i], v[i]));
    amax = _mm_max_ps(amax, _mm_andnot_ps(sign, v[i]));
  }
  if (_mm_movemask_ps(nan) != 0) return false;
  amax = _mm_max_ps(amax, _mm_shuffle_ps(amax, amax, _MM_SHUFFLE(1, 0, 3, 2)));
  amax = _mm_max_ps(amax, _mm_shuffle_ps(amax, amax, _MM_SHUFFLE(2, 3, 0, 1)));
  const float d = _mm_cvtss_f32(amax) / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const uint16_t scale = Fp32ToFp16(d);
  std::memcpy(out, &scale, 2);
  const __m128 vid = _mm_set1_ps(id);
  const __m128 half = _mm_set1_ps(0.5f);
  const __m128 neg_half = _mm_set1_ps(-0.5f);
  const __m128 max_finite = _mm_set1_ps(std::numeric_limits<float>::max());
  const __m128i low_byte = _mm_set1_epi32(0xff);
  __m128i q[8];
  for (int i = 0; i < 8; ++i) {
    const __m128 p = _mm_mul_ps(v[i], vid);
    const __m128i t = _mm_cvttps_epi32(p);
    const __m128 rem = _mm_sub_ps(p, _mm_cvtepi32_ps(t));
    // Compare masks are -1 where true: t - (rem <= -0.5) + (rem >= 0.5).
    __m128i r = _mm_sub_epi32(t, _mm_castps_si128(_mm_cmpge_ps(rem, half)));
    r = _mm_add_epi32(r, _mm_castps_si128(_mm_cmple_ps(rem, neg_half)));
    const __m128 finite = _mm_cmple_ps(_mm_andnot_ps(sign, p), max_finite);
    q[i] = _mm_and_si128(_mm_and_si128(r, _mm_castps_si128(finite)), low_byte);
  }
  for (int i = 0; i < 8; i += 4) {
    const __m128i lo = _mm_packs_epi32(q[i], q[i + 1]);  // 0..255 fit: no saturation
    const __m128i hi = _mm_packs_epi32(q[i + 2], q[i + 3]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 + 4 * i), _mm_packus_epi16(lo, hi));
  }
  return true;
}
#endif

}  // namespace

absl::Status QuantizeQ8_0(std::span<const float> src, std::span<uint8_t> dst) {
  if (src.size() % kQ8_0BlockElems != 0) {
    return absl::InvalidArgumentError(
        StrCat("Q8_0 needs a multiple of 32 values, got ", src.size()));
  }
  const size_t blocks = src.size() / kQ8_0BlockElems;
  if (dst.size() != blocks * kQ8_0BlockBytes) {
    return absl::InvalidArgumentError(
        StrCat("Q8_0 output needs ", blocks * kQ8_0BlockBytes, " bytes, got ", dst.size()));
  }
  for (size_t b = 0; b < blocks; ++b) {
    const float* x = src.data() + b * kQ8_0BlockElems;
    uint8_t* out = dst.data() + b * kQ8_0BlockBytes;
#if defined(__SSE2__)
    if (QuantizeBlockSse2(x, out)) continue;  // else the block holds a NaN
#endif
    QuantizeBlock(x, out);
  }
  return absl::OkStatus();
}

absl::Status DequantizeQ8_0(std::span<const uint8_t> src, std::span<float> dst) {
  if (src.size() % kQ8_0BlockBytes != 0 ||
      dst.size() != src.size() / kQ8_0BlockBytes * kQ8_0BlockElems) {
    return absl::InvalidArgumentError("Q8_0 input is not whole blocks, or output size differs");
  }
  for (size_t b = 0; b < src.size() / kQ8_0BlockBytes; ++b) {
    const uint8_t* in = src.data() + b * kQ8_0BlockBytes;
    uint16_t scale;
    std::memcpy(&scale, in, 2);
    const float d = Fp16ToFp32(scale);
    for (size_t j = 0; j < kQ8_0BlockElems; ++j) {
      dst[b * kQ8_0BlockElems + j] = static_cast<int8_t>(in[2 + j]) * d;
    }
  }
  return absl::OkStatus();
}

}  // namespace ckptd::gguf
