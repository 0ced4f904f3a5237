// Verify: an intact file passes; each kind of damage is caught and named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/base/strings.h"
#include "daemon/gguf/encode.h"
#include "daemon/gguf/reader.h"
#include "tests/testing/gguf_fixtures.h"
#include "tests/testing/status_matchers.h"

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

TEST_F(VerifyTest, PaddingMustBeZero) {
  std::string bytes = file_.bytes;
  bytes.back() ^= 1;  // padding after the last tensor (BuildRandomFile never fills it exactly)
  ASSERT_NE(file_.layout.tensors.back().nbytes % 32, 0u);
  absl::Status st = VerifyBytes(bytes);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr(StrCat("byte at offset ", bytes.size() - 1, " lies between tensors")));
  bytes = file_.bytes;
  bytes[file_.layout.data_offset - 1] ^= 0x80;  // between the tensor table and the data
  ASSERT_GT(file_.layout.data_offset, file_.layout.header_bytes);
  EXPECT_THAT(std::string(VerifyBytes(bytes).message()), HasSubstr("(padding) and is not zero"));
}

TEST_F(VerifyTest, AChangedMetadataValueFailsTheMetadataDigest) {
  Layout layout = file_.layout;
  FillDigestSlots(file_.digest, &layout);
  std::string key;
  std::string changed;
  for (const auto& [k, v] : layout.metadata.entries()) {
    const std::string* str = v.get_if<std::string>();
    if (IsDigestSlot(k) || str == nullptr || str->empty()) continue;
    key = k;
    changed = *str;
    changed[0] ^= 0x20;  // same length: the layout stays as planned
    break;
  }
  ASSERT_FALSE(key.empty());
  layout.metadata.Set(key, Value::String(changed));
  std::string bytes = EncodeHeader(layout) + file_.bytes.substr(layout.data_offset);
  absl::Status st = VerifyBytes(bytes);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("metadata digest mismatch"));
}

// Every single-bit flip anywhere in the header or the padding, and in a
// sample of the data, is caught by ReadHeader or Verify.
TEST_F(VerifyTest, EverySingleBitFlipIsCaught) {
  const std::string& good = file_.bytes;
  ASSERT_OK(VerifyBytes(good));
  std::vector<uint64_t> bits;
  for (uint64_t bit = 0; bit < 8 * file_.layout.data_offset; ++bit) bits.push_back(bit);
  std::mt19937_64 rng(5);
  for (int i = 0; i < 2000; ++i) bits.push_back(rng() % (8 * good.size()));
  for (const TensorInfo& t : file_.layout.tensors) {  // the padding after each tensor
    const uint64_t end = file_.layout.data_offset + t.offset + t.nbytes;
    if (end < good.size() && end % file_.layout.alignment != 0) bits.push_back(8 * end + 3);
  }
  size_t caught = 0;
  for (uint64_t bit : bits) {
    std::string bytes = good;
    bytes[bit / 8] ^= static_cast<char>(1 << (bit % 8));
    if (!VerifyBytes(bytes).ok()) {
      ++caught;
    } else {
      ADD_FAILURE() << "a flip of bit " << bit % 8 << " of byte " << bit / 8 << " passed";
    }
  }
  EXPECT_EQ(caught, bits.size());
}

TEST_F(VerifyTest, ADamagedMetadataDigestKeyIsNotAnOldFile) {
  std::string bytes = file_.bytes;
  const size_t at = bytes.find(kKeyMetadataDigest);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 5] ^= 0x01;  // "ckpt.metadata_digest" -> "ckpt.letadata_digest"
  absl::Status st = VerifyBytes(bytes);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("is one bit away from ckpt.metadata_digest"));
}

TEST_F(VerifyTest, ChangedShapeFailsTheContentDigest) {
  // Rewrite the header with a tensor renamed to another name of the same
  // length, the metadata digest recomputed as a forger would: per-tensor
  // digests still match, the content digest does not.
  Layout layout = file_.layout;
  layout.tensors[0].name.back() = layout.tensors[0].name.back() == 't' ? 'u' : 't';
  FillDigestSlots(file_.digest, &layout);
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
  EXPECT_FALSE(ParseDigestHex("FEDCBA98765432100123456789ABCDEF").ok());  // one spelling only
  EXPECT_FALSE(ParseContentDigestString("sha1:00").ok());
}

}  // namespace
}  // namespace ckptd::gguf
