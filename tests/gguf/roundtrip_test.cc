// Round trip: random metadata of every type and tensors of every writer type
// -> write -> read back identical, for several alignments and chunkings.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/gguf/reader.h"
#include "tests/testing/gguf_fixtures.h"

namespace ckptd::gguf {
namespace {

class RoundTripTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(RoundTripTest, RandomFilesReadBackIdentical) {
  const uint32_t alignment = GetParam();
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937_64 rng(seed);
    Metadata md = testing::RandomMetadata(rng);
    std::vector<TensorSpec> specs = testing::RandomTensors(rng);
    std::vector<std::string> data;
    for (const auto& t : specs)
      data.push_back(testing::RandomBytes(*TensorBytes(t.type, t.ne), rng));
    size_t chunk = seed % 3 == 0 ? 0 : 1 + rng() % 97;  // chunks that split and span tensors
    auto built = testing::BuildFile(md, specs, data, {.alignment = alignment}, chunk);
    ASSERT_EQ(built.bytes.size(), built.layout.file_size);

    MemorySource src(built.bytes);
    auto f = ReadHeader(src);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->version, 3u);
    EXPECT_EQ(f->alignment, alignment);
    EXPECT_EQ(f->data_offset, built.layout.data_offset);

    // Every key the caller gave comes back with its type and value, in order.
    ASSERT_GE(f->metadata.size(), md.size());
    size_t i = 0;
    for (const auto& [key, value] : md.entries()) {
      EXPECT_EQ(f->metadata.entries()[i].first, key);
      EXPECT_EQ(f->metadata.entries()[i].second, value) << key;
      ++i;
    }
    ASSERT_EQ(f->tensors.size(), specs.size());
    for (size_t t = 0; t < specs.size(); ++t) {
      EXPECT_EQ(f->tensors[t], built.layout.tensors[t]);
      EXPECT_EQ(f->tensors[t].name, specs[t].name);
      EXPECT_EQ(f->tensors[t].ne, specs[t].ne);
      EXPECT_EQ(f->tensors[t].offset % alignment, 0u);
      EXPECT_EQ(built.bytes.substr(f->data_offset + f->tensors[t].offset, f->tensors[t].nbytes),
                data[t]);
    }
    auto report = Verify(src, *f);
    EXPECT_TRUE(report.ok()) << report.status();
  }
}

INSTANTIATE_TEST_SUITE_P(Alignments, RoundTripTest, ::testing::Values(32u, 1u, 64u, 4096u));

TEST(ContentIdentityTest, SameTensorsSameUuidWhateverTheMetadata) {
  std::mt19937_64 rng(7);
  std::vector<TensorSpec> specs = testing::RandomTensors(rng);
  std::vector<std::string> data;
  for (const auto& t : specs) data.push_back(testing::RandomBytes(*TensorBytes(t.type, t.ne), rng));
  auto a = testing::BuildFile(testing::RandomMetadata(rng), specs, data);
  auto b = testing::BuildFile(testing::RandomMetadata(rng), specs, data, {.alignment = 64}, 13);
  EXPECT_NE(a.bytes, b.bytes);
  EXPECT_EQ(a.digest.uuid, b.digest.uuid);
  EXPECT_EQ(a.digest.content, b.digest.content);

  data[3][0] ^= 1;  // one bit of one tensor
  auto c = testing::BuildFile(Metadata(), specs, data);
  EXPECT_NE(c.digest.uuid, a.digest.uuid);
  EXPECT_EQ(c.digest.tensors[0], a.digest.tensors[0]);
  EXPECT_NE(c.digest.tensors[3], a.digest.tensors[3]);

  data[3][0] ^= 1;
  specs[0].name += "x";  // same bytes, another name
  auto d = testing::BuildFile(Metadata(), specs, data);
  EXPECT_NE(d.digest.uuid, a.digest.uuid);
}

TEST(ContentIdentityTest, UuidIsRfc9562Version8) {
  std::mt19937_64 rng(3);
  auto f = testing::BuildRandomFile(rng);
  const std::string& u = f.digest.uuid;
  ASSERT_EQ(u.size(), 36u);
  EXPECT_EQ(u[8], '-');
  EXPECT_EQ(u[14], '8');                                          // version nibble
  EXPECT_NE(std::string("89ab").find(u[19]), std::string::npos);  // variant 10xx
}

}  // namespace
}  // namespace ckptd::gguf
