// The S3 store's pure parts: AWS URI encoding (curl signs the query as
// given, so it must already be canonical) and the ETags S3 computes.
#include "daemon/tier/s3_store.h"

#include <gtest/gtest.h>

namespace ckptd::tier {
namespace {

TEST(S3StoreTest, UriEncodingKeepsOnlyUnreservedCharacters) {
  EXPECT_EQ(UriEncode("run-1_a.b~c", false), "run-1_a.b~c");
  EXPECT_EQ(UriEncode("ckpt/run 1/", false), "ckpt%2Frun%201%2F");
  EXPECT_EQ(UriEncode("ckpt/run 1/step_1.gguf", true), "ckpt/run%201/step_1.gguf");
  EXPECT_EQ(UriEncode("a+b=c&d", false), "a%2Bb%3Dc%26d");
  EXPECT_EQ(UriEncode("\xc3\xa9", false), "%C3%A9");  // UTF-8 bytes, upper-case hex
}

TEST(S3StoreTest, DigestsAreThoseS3Computes) {
  EXPECT_EQ(Md5Hex("hello"), "5d41402abc4b2a76b9719d911017c592");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // The multipart ETag: MD5 of the parts' binary MD5s, then "-<parts>"
  // (python: hashlib.md5(md5(b"hello").digest() + md5(b"world").digest())).
  EXPECT_EQ(MultipartEtag({Md5Hex("hello"), Md5Hex("world")}),
            "065947336a2f2a95ba8899f3675c3be6-2");
}

TEST(S3StoreTest, OnlyTheStoresOwnTroublesAreWorthARetry) {
  EXPECT_TRUE(IsTransient(absl::UnavailableError("HTTP 503 SlowDown")));
  EXPECT_TRUE(IsTransient(absl::DeadlineExceededError("timeout")));
  EXPECT_FALSE(IsTransient(absl::PermissionDeniedError("HTTP 403")));
  EXPECT_FALSE(IsTransient(absl::NotFoundError("HTTP 404 NoSuchBucket")));
  EXPECT_FALSE(IsTransient(absl::DataLossError("etag")));
}

}  // namespace
}  // namespace ckptd::tier
