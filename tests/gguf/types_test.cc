// Type tables and tensor size arithmetic.
#include "daemon/gguf/types.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace ckptd::gguf
