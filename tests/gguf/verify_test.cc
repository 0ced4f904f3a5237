// Verify: an intact file passes; each kind of damage is caught and named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/gguf/encode.h"
#include "daemon/gguf/reader.h"
#include "tests/testing/gguf_fixtures.h"

namespace ckptd::gguf {
namespace {

using ::testing::HasSubstr;

absl::Status VerifyBytes(const std::string& bytes) {
  MemorySource src(bytes);
  auto f = ReadHeader(src);
  if (!f.ok()) return f.status();
  return Verify(src, *f).status();
}

class VerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(11);
    file_ = testing::BuildRandomFile(rng);
  }
  uint64_t DataAt(size_t tensor) const {
    return file_.layout.data_offset + file_.layout.tensors[tensor].offset;
  }
  testing::BuiltFile file_;
};

TEST_F(VerifyTest, IntactFilePasses) { EXPECT_TRUE(VerifyBytes(file_.bytes).ok()); }

TEST_F(VerifyTest, FlippedBitNamesTheTensor) {
  std::string bytes = file_.bytes;
  bytes[DataAt(4) + 1] ^= 0x10;
  absl::Status st = VerifyBytes(bytes);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("tensor '" + file_.layout.tensors[4].name + "' (index 4)"));
}

TEST_F(VerifyTest, LastByteOfLastTensorIsCovered) {
  std::string bytes = file_.bytes;
  const auto& last = file_.layout.tensors.back();
  bytes[file_.layout.data_offset + last.offset + last.nbytes - 1] ^= 1;
  EXPECT_THAT(std::string(VerifyBytes(bytes).message()), HasSubstr(last.name));
}

TEST_F(VerifyTest, PaddingIsNotContent) {
  std::string bytes = file_.bytes;
  bytes.back() ^= 1;  // padding after the last tensor (BuildRandomFile never fills it exactly)
  ASSERT_NE(file_.layout.tensors.back().nbytes % 32, 0u);
  EXPECT_TRUE(VerifyBytes(bytes).ok());
}

TEST_F(VerifyTest, ChangedShapeFailsTheContentDigest) {
  // Rewrite the header with a tensor renamed to another name of the same
  // length: per-tensor digests still match, the content digest does not.
  Layout layout = file_.layout;
  FillDigestSlots(file_.digest, &layout);
  layout.tensors[0].name.back() = layout.tensors[0].name.back() == 't' ? 'u' : 't';
  std::string bytes = EncodeHeader(layout) + file_.bytes.substr(layout.data_offset);
  absl::Status st = VerifyBytes(bytes);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("content digest mismatch"));
}

TEST_F(VerifyTest, ForgedUuidIsCaught) {
  Layout layout = file_.layout;
  ContentDigest forged = file_.digest;
  forged.uuid[0] = forged.uuid[0] == 'a' ? 'b' : 'a';
  FillDigestSlots(forged, &layout);
  std::string bytes = EncodeHeader(layout) + file_.bytes.substr(layout.data_offset);
  EXPECT_THAT(std::string(VerifyBytes(bytes).message()), HasSubstr("general.uuid"));
}

TEST(VerifyNoDigestTest, FileWithoutDigestSaysSo) {
  auto built = testing::BuildFile({}, {{"a", TensorType::kI8, {1}}}, {"x"},
                                  {.digest_slots = DigestSlots::kNone});
  absl::Status st = VerifyBytes(built.bytes);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()), HasSubstr("no stored digest"));
}

TEST(DigestTest, HexRoundTripsAndRejectsJunk) {
  Digest128 d{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(DigestHex(d), "fedcba98765432100123456789abcdef");
  EXPECT_EQ(*ParseDigestHex(DigestHex(d)), d);
  EXPECT_EQ(*ParseContentDigestString(ContentDigestString(d)), d);
  EXPECT_FALSE(ParseDigestHex("xyz").ok());
  EXPECT_FALSE(ParseDigestHex(std::string(32, 'g')).ok());
  EXPECT_FALSE(ParseContentDigestString("sha1:00").ok());
}

}  // namespace
}  // namespace ckptd::gguf
