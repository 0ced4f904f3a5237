// A rank's part carries the split keys with the types llama.cpp reads them
// as, and the model's metadata only in the first part.
#include "daemon/storage/split_part.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::storage {
namespace {

using ::testing::HasSubstr;

gguf::Metadata Model() {
  gguf::Metadata md;
  md.Set("general.architecture", gguf::Value::String("llama"));
  md.Set("llama.block_count", gguf::Value(uint32_t{2}));
  return md;
}

TEST(SplitPartTest, TheFirstPartCarriesTheModelAndEveryPartTheSplitKeys) {
  auto first = SplitPartMetadata(Model(), 0, 3, 29);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_NE(first->Find("general.architecture"), nullptr);
  EXPECT_EQ(*first->Find(kSplitNo), gguf::Value(uint16_t{0}));
  EXPECT_EQ(*first->Find(kSplitCount), gguf::Value(uint16_t{3}));
  EXPECT_EQ(*first->Find(kSplitTensorsCount), gguf::Value(int32_t{29}));
  auto last = SplitPartMetadata(Model(), 2, 3, 29);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->Find("general.architecture"), nullptr);
  EXPECT_EQ(last->size(), 3u);
  EXPECT_EQ(*last->Find(kSplitNo), gguf::Value(uint16_t{2}));
  EXPECT_EQ(*last->Find(kSplitCount), gguf::Value(uint16_t{3}));
}

TEST(SplitPartTest, BoundsOfTheKeyTypesAreRefusedWithTheirReason) {
  EXPECT_TRUE(SplitPartMetadata(Model(), 65534, 65535, 2147483647).ok());
  EXPECT_THAT(SplitPartMetadata(Model(), 3, 3, 1).status().message(),
              HasSubstr("rank 3 is outside a world of 3 (ranks 0 to 2)"));
  EXPECT_THAT(SplitPartMetadata(Model(), 0, 0, 1).status().message(),
              HasSubstr("world size 0 is not 1 to 65535"));
  EXPECT_THAT(SplitPartMetadata(Model(), 0, 65536, 1).status().message(),
              HasSubstr("split.count is a u16"));
  EXPECT_THAT(SplitPartMetadata(Model(), 0, 1, 2147483648ull).status().message(),
              HasSubstr("split.tensors.count (an i32)"));
}

TEST(SplitPartTest, ShardKeysRoundTripAndBadOnesAreNamed) {
  gguf::Metadata md;
  SetShardKeys("w", {.full_ne = {4, 6}, .dim = 1, .offset = 2}, &md);
  gguf::TensorInfo t{.name = "w", .ne = {4, 3}};
  auto slice = ShardSliceOf(md, t);
  ASSERT_TRUE(slice.ok()) << slice.status();
  ASSERT_TRUE(slice->has_value());
  EXPECT_EQ((*slice)->full_ne, (std::vector<uint64_t>{4, 6}));
  EXPECT_EQ((*slice)->dim, 1u);
  EXPECT_EQ((*slice)->offset, 2u);
  EXPECT_EQ((*slice)->length, 3u);
  EXPECT_FALSE(ShardSliceOf(md, {.name = "other", .ne = {4}})->has_value());  // whole
  // Past the end along the sliced dim, another rank of dims, a key missing.
  EXPECT_EQ(ShardSliceOf(md, {.name = "w", .ne = {4, 5}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShardSliceOf(md, {.name = "w", .ne = {24}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  md.Remove("ckpt.shard.w.offset");
  auto partial = ShardSliceOf(md, t);
  EXPECT_EQ(partial.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(partial.status().message().find("ckpt.shard.w"), std::string_view::npos);
}

}  // namespace
}  // namespace ckptd::storage
