// SigV4 against AWS's own worked example (the S3 documentation's "GET
// Object" with a Range header), and the header order curl 7.88 gets wrong.
#include "daemon/tier/sigv4.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::tier {
namespace {

using ::testing::HasSubstr;

const std::string kEmptySha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

TEST(SigV4Test, AwsWorkedExampleGetObject) {
  const std::string auth = SignV4({.method = "GET",
                                   .canonical_uri = "/test.txt",
                                   .canonical_query = "",
                                   .headers = {{"host", "examplebucket.s3.amazonaws.com"},
                                               {"range", "bytes=0-9"},
                                               {"x-amz-content-sha256", kEmptySha},
                                               {"x-amz-date", "20130524T000000Z"}},
                                   .payload_sha256_hex = kEmptySha,
                                   .amz_date = "20130524T000000Z"},
                                  {.access_key = "AKIAIOSFODNN7EXAMPLE",
                                   .secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                                   .region = "us-east-1"});
  EXPECT_EQ(auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(SigV4Test, HeadersAreOrderedByNameNotByNameAndValue) {
  const std::string auth = SignV4({.method = "PUT",
                                   .canonical_uri = "/b/k",
                                   .headers = {{"x-amz-copy-source", "/b/src"},
                                               {"x-amz-copy-source-range", "bytes=0-9"},
                                               {"host", "h"}},
                                   .payload_sha256_hex = kEmptySha,
                                   .amz_date = "20261206T000000Z"},
                                  {.access_key = "a", .secret_key = "s", .region = "us-east-1"});
  EXPECT_THAT(auth, HasSubstr("SignedHeaders=host;x-amz-copy-source;x-amz-copy-source-range,"));
}

TEST(SigV4Test, AmzDateIsUtc) { EXPECT_EQ(AmzDate(1369353600), "20130524T000000Z"); }

}  // namespace
}  // namespace ckptd::tier
