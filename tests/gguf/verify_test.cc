// Verify: an intact file passes; each kind of damage is caught and named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/gguf/encode.h"
#include "daemon/gguf/reader.h"
#include "daemon/gguf/sha1.h"
#include "daemon/gguf/writer.h"
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

// The same checks on the bytes streamed through a DataVerifier from offset
// 0: the first piece `piece` bytes, each next one a different size, so the
// boundaries fall at every kind of place.
absl::StatusOr<VerifyReport> StreamBytes(const std::string& bytes, size_t piece) {
  MemorySource src(bytes);
  CKPTD_ASSIGN_OR_RETURN(GgufFile f, ReadHeader(src));
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<DataVerifier> v, DataVerifier::Start(f));
  for (size_t at = 0, n = piece; at < bytes.size(); at += n, n = n % 8191 + 1) {
    n = std::min(n, bytes.size() - at);
    CKPTD_TRY(v->Update(std::string_view(bytes).substr(at, n)));
  }
  return v->Finish();
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
  size_t caught = 0, streamed_caught = 0;
  for (uint64_t bit : bits) {
    std::string bytes = good;
    bytes[bit / 8] ^= static_cast<char>(1 << (bit % 8));
    const absl::Status read = VerifyBytes(bytes);
    if (!read.ok()) {
      ++caught;
    } else {
      ADD_FAILURE() << "a flip of bit " << bit % 8 << " of byte " << bit / 8 << " passed";
    }
    // Streamed, the verdict is the same, whatever the pieces.
    const absl::Status streamed = StreamBytes(bytes, 1 + bit % 5000).status();
    if (!streamed.ok()) ++streamed_caught;
    EXPECT_EQ(streamed.message(), read.message()) << "bit " << bit;
  }
  EXPECT_EQ(caught, bits.size());
  EXPECT_EQ(streamed_caught, bits.size());
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

TEST_F(VerifyTest, StreamedInAnyPiecesTheReportIsVerifys) {
  MemorySource src(file_.bytes);
  auto f = ReadHeader(src);
  ASSERT_OK(f);
  auto read = Verify(src, *f);
  ASSERT_OK(read);
  for (size_t piece : {size_t{1}, size_t{7}, size_t{4096}, file_.bytes.size()}) {
    auto streamed = StreamBytes(file_.bytes, piece);
    ASSERT_OK(streamed);
    EXPECT_EQ(streamed->computed.tensors, read->computed.tensors);
    EXPECT_EQ(streamed->computed.content, read->computed.content);
    EXPECT_EQ(streamed->computed.uuid, read->computed.uuid);
    EXPECT_EQ(streamed->stored_content_digest, read->stored_content_digest);
    EXPECT_TRUE(streamed->metadata_covered);
  }
}

TEST_F(VerifyTest, AStreamShortOrLongIsRefused) {
  MemorySource src(file_.bytes);
  auto f = ReadHeader(src);
  ASSERT_OK(f);
  auto v = DataVerifier::Start(*f);
  ASSERT_OK(v);
  ASSERT_OK((*v)->Update(std::string_view(file_.bytes).substr(0, file_.bytes.size() - 1)));
  absl::StatusOr<VerifyReport> short_one = (*v)->Finish();
  EXPECT_EQ(short_one.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(short_one.status().message()),
              HasSubstr(StrCat("ends at byte ", file_.bytes.size() - 1)));

  v = DataVerifier::Start(*f);
  ASSERT_OK(v);
  absl::Status long_one = (*v)->Update(file_.bytes + "x");
  EXPECT_EQ(long_one.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(long_one.message()), HasSubstr("1 bytes more than the file's"));
}

// A gguf-hash uuid hashes the tensors in table order. ckptd writes tables in
// file order, another tool may not: a stream in file order cannot compute
// that uuid, so Finish reads the tensors in table order, or says it must.
TEST(DataVerifierTest, AGgufHashTableOutOfFileOrderIsHashedInTableOrder) {
  const std::string a(100, 'a'), b(100, 'b');
  auto built =
      testing::BuildFile({}, {{"ta", TensorType::kI8, {100}}, {"tb", TensorType::kI8, {100}}},
                         {a, b}, {.uuid_scheme = UuidScheme::kGgufHash});
  Layout layout = built.layout;
  std::swap(layout.tensors[0], layout.tensors[1]);  // table: tb, ta; data: a, b
  auto with_uuid_over = [&](const std::string& first, const std::string& second) {
    ContentDigest d;
    d.tensors = {built.digest.tensors[1], built.digest.tensors[0]};
    ContentDigestBuilder builder;
    for (size_t i = 0; i < 2; ++i) {
      const TensorInfo& t = layout.tensors[i];
      builder.AddTensor(t.name, t.type, t.ne, t.nbytes, d.tensors[i]);
    }
    d.content = builder.Finish();
    Sha1 sha;
    sha.Update(kGgufHashNamespace.data(), kGgufHashNamespace.size());
    sha.Update(first.data(), first.size());
    sha.Update(second.data(), second.size());
    d.uuid = UuidV5FromSha1(sha.Finish());
    Layout l = layout;
    FillDigestSlots(d, &l);
    return EncodeHeader(l) + built.bytes.substr(l.data_offset);
  };
  const std::string table_order = with_uuid_over(b, a);
  ASSERT_OK(VerifyBytes(table_order));
  absl::Status streamed = StreamBytes(table_order, 64).status();
  EXPECT_EQ(streamed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(streamed.message()), HasSubstr("verify the file by reading it"));
  // The uuid a file-order hash would give is not this file's.
  EXPECT_THAT(std::string(VerifyBytes(with_uuid_over(a, b)).message()), HasSubstr("general.uuid"));
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
