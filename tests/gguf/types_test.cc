// Type tables and tensor size arithmetic.
#include "daemon/gguf/types.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/base/strings.h"
#include "daemon/gguf/layout.h"

namespace ckptd::gguf {
namespace {

TEST(TypesTest, WriterTypesHaveGgmlGeometry) {
  struct Want {
    TensorType type;
    uint32_t elems, bytes;
  };
  // From ggml-common.h: fp types are 1 element per block; Q8_0 is fp16 + 32 x int8.
  for (auto [type, elems, bytes] : std::initializer_list<Want>{{TensorType::kF32, 1, 4},
                                                               {TensorType::kF16, 1, 2},
                                                               {TensorType::kBF16, 1, 2},
                                                               {TensorType::kF64, 1, 8},
                                                               {TensorType::kI8, 1, 1},
                                                               {TensorType::kI16, 1, 2},
                                                               {TensorType::kI32, 1, 4},
                                                               {TensorType::kI64, 1, 8},
                                                               {TensorType::kQ8_0, 32, 34},
                                                               {TensorType::kQ4_K, 256, 144},
                                                               {TensorType::kMXFP4, 32, 17}}) {
    auto info = LookupTensorType(static_cast<uint32_t>(type));
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->block_elems, elems) << info->name;
    EXPECT_EQ(info->block_bytes, bytes) << info->name;
  }
}

TEST(TypesTest, RetiredAndUnknownIdsAreRejected) {
  for (uint32_t id : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 43u, 1000u, 0xffffffffu}) {
    EXPECT_FALSE(LookupTensorType(id).has_value()) << id;
  }
  EXPECT_EQ(AllTensorTypes().size(), 35u);
  EXPECT_EQ(LookupTensorType("bf16")->type, TensorType::kBF16);
}

TEST(TypesTest, TensorBytes) {
  const uint64_t a[] = {4096, 4096};
  EXPECT_EQ(*TensorBytes(TensorType::kF32, a), 4096ull * 4096 * 4);
  EXPECT_EQ(*TensorBytes(TensorType::kQ8_0, a), 4096ull * 4096 / 32 * 34);
  const uint64_t zero[] = {4, 0};
  EXPECT_FALSE(TensorBytes(TensorType::kF32, zero).ok());
  const uint64_t huge[] = {1ull << 62, 4};
  EXPECT_FALSE(TensorBytes(TensorType::kI8, huge).ok());
  const uint64_t big_bytes[] = {1ull << 62};
  EXPECT_FALSE(TensorBytes(TensorType::kF32, big_bytes).ok());  // bytes overflow int64
  const uint64_t negative[] = {1ull << 63};
  EXPECT_FALSE(TensorBytes(TensorType::kI8, negative).ok());
}

TEST(TypesTest, ValueTypeNamesRoundTrip) {
  for (uint32_t i = 0; i < kValueTypeCount; ++i) {
    auto t = static_cast<ValueType>(i);
    EXPECT_EQ(ParseValueTypeName(ValueTypeName(t)), t);
  }
  EXPECT_FALSE(ParseValueTypeName("u128").has_value());
}

TEST(TypesTest, AlignUp) {
  uint64_t out = 0;
  EXPECT_TRUE(AlignUp(33, 32, &out));
  EXPECT_EQ(out, 64u);
  EXPECT_TRUE(AlignUp(64, 32, &out));
  EXPECT_EQ(out, 64u);
  EXPECT_FALSE(AlignUp(~uint64_t{0} - 3, 32, &out));
}

// Names from clients (tensor names, metadata keys, metric names): UTF-8
// without NUL or control characters, since ggml and llama.cpp compare them
// as C strings ("x\0a" and "x\0b" are the same name to them).
TEST(NameTest, NamesAreUtf8WithoutNulOrControlCharacters) {
  using std::string_literals::operator""s;
  EXPECT_EQ(NameProblem("blk.0.attn_q.weight"), "");
  EXPECT_EQ(NameProblem("общий.вес✓"), "");        // UTF-8 is fine
  EXPECT_EQ(NameProblem("\xF0\x9F\x98\x80"), "");  // U+1F600, four bytes
  EXPECT_EQ(NameProblem(""), "is empty");
  EXPECT_EQ(NameProblem("x\0a"s), "has a control character (byte 0x00 at offset 1)");
  EXPECT_EQ(NameProblem("a\nb"), "has a control character (byte 0x0a at offset 1)");
  EXPECT_EQ(NameProblem("a\x7f"), "has a control character (byte 0x7f at offset 1)");
  EXPECT_EQ(NameProblem("ab\xff"), "is not valid UTF-8 (byte 0xff at offset 2)");
  EXPECT_EQ(NameProblem("\xC0\xAF"), "is not valid UTF-8 (byte 0xc0 at offset 0)");  // overlong
  EXPECT_EQ(NameProblem("\xED\xA0\x80"),
            "is not valid UTF-8 (byte 0xed at offset 0)");                           // surrogate
  EXPECT_EQ(NameProblem("\xE2\x82"), "is not valid UTF-8 (byte 0xe2 at offset 0)");  // cut short
  EXPECT_EQ(NameProblem("\xF4\x90\x80\x80"), "is not valid UTF-8 (byte 0xf4 at offset 0)");
  EXPECT_EQ(Printable("x\0a\xff\n✓"s), "x\\x00a\\xff\\x0a✓");
}

TEST(NameTest, PlannedTensorNamesAreChecked) {
  using std::string_literals::operator""s;
  for (const std::string& bad : {"x\0a"s, "a\tb"s, "\xff"s, ""s}) {
    auto layout = PlanLayout({}, {{bad, TensorType::kF32, {4}}}, {});
    ASSERT_FALSE(layout.ok()) << Printable(bad);
    EXPECT_THAT(std::string(layout.status().message()),
                ::testing::HasSubstr("names are UTF-8 without NUL or control characters"));
  }
  EXPECT_TRUE(PlanLayout({}, {{"ok", TensorType::kF32, {4}}}, {}).ok());
}

}  // namespace
}  // namespace ckptd::gguf
