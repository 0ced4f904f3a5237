// Conversions must match ggml's reference code bit for bit (GGUF-NOTES.md).
#include "daemon/gguf/convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>

namespace ckptd::gguf {
namespace {

float F(uint32_t bits) { return std::bit_cast<float>(bits); }

TEST(Fp16Test, KnownValues) {
  EXPECT_EQ(Fp32ToFp16(1.0f), 0x3c00);
  EXPECT_EQ(Fp32ToFp16(-2.0f), 0xc000);
  EXPECT_EQ(Fp32ToFp16(65504.0f), 0x7bff);               // largest finite
  EXPECT_EQ(Fp32ToFp16(65520.0f), 0x7c00);               // rounds to +inf
  EXPECT_EQ(Fp32ToFp16(-1e10f), 0xfc00);                 // overflow to -inf
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -26)), 0x0000);  // underflow
  EXPECT_EQ(Fp32ToFp16(F(0x7fc00001)), 0x7e00);          // NaN payload dropped
  EXPECT_EQ(Fp32ToFp16(F(0xffc00001)), 0xfe00);          // sign kept
  EXPECT_EQ(Fp32ToFp16(F(0x7f800000)), 0x7c00);          // inf
}

TEST(Fp16Test, RoundsToNearestEven) {
  EXPECT_EQ(Fp32ToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(Fp32ToFp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(Fp32ToFp16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
}

TEST(Fp16Test, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = Fp16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(Fp32ToFp16(f), h) << std::hex << h;
  }
  EXPECT_EQ(Fp16ToFp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFp32(0x3555), 0.333251953125f);
}

TEST(Bf16Test, KnownValues) {
  EXPECT_EQ(Fp32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Fp32ToBf16(F(0x3f808000)), 0x3f80);  // tie -> even (down)
  EXPECT_EQ(Fp32ToBf16(F(0x3f818000)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(Fp32ToBf16(F(0x3f808001)), 0x3f81);
  EXPECT_EQ(Fp32ToBf16(F(0x7f800001)), 0x7fc0);  // signalling NaN becomes quiet
  EXPECT_EQ(Fp32ToBf16(F(0xff810000)), 0xffc1);  // payload kept, sign kept
  EXPECT_EQ(Fp32ToBf16(F(0x00000001)), 0x0000);  // subnormal rounds
  EXPECT_EQ(Fp32ToBf16(F(0x00010000)), 0x0001);  // subnormal kept
  EXPECT_EQ(Fp32ToBf16(F(0x7f7fffff)), 0x7f80);  // max float rounds to inf
  EXPECT_EQ(Bf16ToFp32(0x3f80), 1.0f);
}

TEST(Q8_0Test, ScaleAndRoundHalfAwayFromZero) {
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;  // amax = 127 -> d = 1, id = 1
  x[1] = 2.5f;    // roundf: 3 (numpy would give 2)
  x[2] = -2.5f;   // -3
  x[3] = 0.49f;
  std::vector<uint8_t> q(34);
  ASSERT_TRUE(QuantizeQ8_0(x, q).ok());
  EXPECT_EQ(q[0], 0x00);  // fp16(1.0) = 0x3c00, little-endian
  EXPECT_EQ(q[1], 0x3c);
  EXPECT_EQ(static_cast<int8_t>(q[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(q[3]), 3);
  EXPECT_EQ(static_cast<int8_t>(q[4]), -3);
  EXPECT_EQ(static_cast<int8_t>(q[5]), 0);
}

TEST(Q8_0Test, QuantsUseFloat32InverseNotTheRoundedScale) {
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = 0.1f * static_cast<float>(i - 13);
  std::vector<uint8_t> q(34);
  ASSERT_TRUE(QuantizeQ8_0(x, q).ok());
  float amax = 0.0f;
  for (float v : x) amax = std::fmax(amax, std::fabs(v));
  const float d = amax / 127.0f;
  const float id = 1.0f / d;
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(static_cast<int8_t>(q[2 + i]), static_cast<int8_t>(std::roundf(x[i] * id))) << i;
  }
  std::vector<float> back(32);
  ASSERT_TRUE(DequantizeQ8_0(q, back).ok());
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(back[i], x[i], d);
}

TEST(Q8_0Test, ZeroBlockAndBadSizes) {
  std::vector<float> x(32, 0.0f);
  std::vector<uint8_t> q(34, 0xff);
  ASSERT_TRUE(QuantizeQ8_0(x, q).ok());
  for (uint8_t b : q) EXPECT_EQ(b, 0);
  EXPECT_FALSE(QuantizeQ8_0(std::vector<float>(31), q).ok());
  std::vector<uint8_t> short_out(33);
  EXPECT_FALSE(QuantizeQ8_0(x, short_out).ok());
}

// ggml's MAX macro, not fmax: a NaN last in the block leaves amax NaN
// (scale 0x7e00, every quant 0); a NaN earlier is replaced by the next value.
TEST(Q8_0Test, NanAndInfFollowGgmlsMaxMacro) {
  std::vector<float> x(32, 1.0f);
  x[31] = std::nanf("");
  std::vector<uint8_t> q(34);
  ASSERT_TRUE(QuantizeQ8_0(x, q).ok());
  EXPECT_EQ(q[0] | (q[1] << 8), 0x7e00);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q[2 + j], 0) << j;
  x[31] = 1.0f;
  x[3] = std::nanf("");
  ASSERT_TRUE(QuantizeQ8_0(x, q).ok());
  EXPECT_EQ(q[0] | (q[1] << 8), Fp32ToFp16(1.0f / 127.0f));
  EXPECT_EQ(static_cast<int8_t>(q[2]), 127);
  EXPECT_EQ(q[2 + 3], 0);  // the NaN itself
  x[3] = -INFINITY;        // amax inf: d inf, id 0, inf * 0 = NaN -> 0
  ASSERT_TRUE(QuantizeQ8_0(x, q).ok());
  EXPECT_EQ(q[0] | (q[1] << 8), 0x7c00);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q[2 + j], 0) << j;
}

// The vectorized path against ggml's reference written out with libm's
// roundf, on blocks of every magnitude (including infinities and scales
// that underflow to subnormals).
TEST(Q8_0Test, MatchesTheReferenceOnRandomBlocks) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> exp(-140, 120);
  std::vector<float> x(32 * 4096);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = std::ldexp(normal(rng), exp(rng) / (i % 7 == 0 ? 1 : 8));
    if (i % 9973 == 0) x[i] = (i % 2 ? 1 : -1) * INFINITY;
  }
  std::vector<uint8_t> q(x.size() / 32 * 34);
  ASSERT_TRUE(QuantizeQ8_0(x, q).ok());
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j)
      amax = amax > std::fabs(x[b * 32 + j]) ? amax : std::fabs(x[b * 32 + j]);
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    ASSERT_EQ(q[b * 34] | (q[b * 34 + 1] << 8), Fp32ToFp16(d)) << b;
    for (int j = 0; j < 32; ++j) {
      const float r = std::roundf(x[b * 32 + j] * id);
      const auto want = std::isfinite(r) ? static_cast<uint8_t>(static_cast<int32_t>(r)) : 0;
      ASSERT_EQ(q[b * 34 + 2 + j], want) << "block " << b << " element " << j;
    }
  }
}

}  // namespace
}  // namespace ckptd::gguf
