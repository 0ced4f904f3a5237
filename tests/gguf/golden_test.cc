// Golden bytes: small files whose every byte was worked out by hand from the
// GGUF v3 spec (little-endian), so the encoder cannot drift silently.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/gguf/encode.h"
#include "daemon/gguf/reader.h"
#include "tests/testing/gguf_fixtures.h"

namespace ckptd::gguf {
namespace {

// "47 47 55 46" -> bytes; whitespace and '|' separators are ignored.
std::string Hex(std::string_view text) {
  std::string out;
  int nibble = -1;
  for (char c : text) {
    int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (v < 0) continue;
    if (nibble < 0) {
      nibble = v;
    } else {
      out.push_back(static_cast<char>(nibble * 16 + v));
      nibble = -1;
    }
  }
  return out;
}

std::string Zeros(size_t n) { return std::string(n, '\0'); }

TEST(GoldenTest, OneStringKeyOneF32Tensor) {
  Metadata md;
  ASSERT_TRUE(md.Add("general.architecture", Value("llama")).ok());
  float values[2] = {1.0f, 2.0f};
  auto built = testing::BuildFile(std::move(md), {{"w", TensorType::kF32, {2}}},
                                  {std::string(reinterpret_cast<char*>(values), 8)},
                                  {.digest_slots = DigestSlots::kNone});
  std::string expected = Hex("47 47 55 46 | 03 00 00 00"   // magic, version 3
                             "01 00 00 00 00 00 00 00"     // 1 tensor
                             "01 00 00 00 00 00 00 00") +  // 1 key/value
                         Hex("14 00 00 00 00 00 00 00") +
                         "general.architecture" +                                  // key (20 bytes)
                         Hex("08 00 00 00 | 05 00 00 00 00 00 00 00") + "llama" +  // string "llama"
                         Hex("01 00 00 00 00 00 00 00") + "w" +                    // tensor name
                         Hex("01 00 00 00 | 02 00 00 00 00 00 00 00"     // n_dims 1, ne [2]
                             "00 00 00 00 | 00 00 00 00 00 00 00 00") +  // F32, offset 0
                         Zeros(128 - 102) +                              // header 102 -> 128
                         Hex("00 00 80 3f | 00 00 00 40") +              // 1.0f, 2.0f
                         Zeros(32 - 8);                                  // tensor padded to 32
  EXPECT_EQ(built.layout.header_bytes, 102u);
  EXPECT_EQ(built.layout.data_offset, 128u);
  EXPECT_EQ(built.layout.file_size, 160u);
  EXPECT_EQ(built.bytes, expected);
}

TEST(GoldenTest, StringArrayU32AlignmentBoolAndI8) {
  Metadata md;
  ASSERT_TRUE(md.Add("a", Value::MakeArray(ValueType::kString, {Value("x"), Value("yz")})).ok());
  ASSERT_TRUE(md.Add("general.alignment", Value(uint32_t{64})).ok());
  ASSERT_TRUE(md.Add("b", Value(true)).ok());
  auto built = testing::BuildFile(std::move(md), {{"t", TensorType::kI8, {3, 1}}},
                                  {Hex("01 02 03")}, {.digest_slots = DigestSlots::kNone});
  std::string expected =
      Hex("47 47 55 46 | 03 00 00 00 | 01 00 00 00 00 00 00 00 | 03 00 00 00 00 00 00 00") +
      Hex("01 00 00 00 00 00 00 00") + "a" +
      Hex("09 00 00 00 | 08 00 00 00 | 02 00 00 00 00 00 00 00") +  // array of 2 strings
      Hex("01 00 00 00 00 00 00 00") + "x" + Hex("02 00 00 00 00 00 00 00") + "yz" +
      Hex("11 00 00 00 00 00 00 00") + "general.alignment" + Hex("04 00 00 00 | 40 00 00 00") +
      Hex("01 00 00 00 00 00 00 00") + "b" + Hex("07 00 00 00 | 01") +
      Hex("01 00 00 00 00 00 00 00") + "t" +
      Hex("02 00 00 00 | 03 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00"
          "18 00 00 00 | 00 00 00 00 00 00 00 00") +  // I8 (24), offset 0
      Zeros(192 - 156) +
      Hex("01 02 03") + Zeros(64 - 3);
  EXPECT_EQ(built.layout.alignment, 64u);
  EXPECT_EQ(built.bytes, expected);
}

TEST(GoldenTest, DigestSlotsArePatchedInPlaceWithoutMovingAnything) {
  Metadata md;
  ASSERT_TRUE(md.Add("general.architecture", Value("llama")).ok());
  auto built = testing::BuildFile(std::move(md), {{"w", TensorType::kI8, {4}}}, {Hex("01020304")});
  ASSERT_TRUE(built.layout.has_digest_slots);
  // The header with placeholders and the patched header have the same size,
  // and the tensor data sits where the plan said.
  EXPECT_EQ(EncodeHeader(built.layout).size(), built.layout.data_offset);
  EXPECT_EQ(built.bytes.substr(built.layout.data_offset, 4), Hex("01020304"));
  MemorySource src(built.bytes);
  auto f = ReadHeader(src);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*f->metadata.Find(kKeyUuid)->get_if<std::string>(), built.digest.uuid);
  EXPECT_EQ(*f->metadata.Find(kKeyContentDigest)->get_if<std::string>(),
            ContentDigestString(built.digest.content));
  // The placeholders are gone.
  EXPECT_NE(*f->metadata.Find(kKeyUuid), UuidPlaceholder());
}

}  // namespace
}  // namespace ckptd::gguf
