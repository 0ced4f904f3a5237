// AWS Signature Version 4 for S3 requests, computed here rather than by
// libcurl: curl 7.88 (Debian 12) orders the signed headers by "name:value"
// instead of by name, so a request carrying both x-amz-copy-source and
// x-amz-copy-source-range (UploadPartCopy) is refused as
// SignatureDoesNotMatch. Pure: no clock, no I/O.
#pragma once

#include <map>
#include <string>
#include <string_view>

namespace ckptd::tier {

// Owns its strings: a request is signed once, and views into temporaries
// are how a signature silently goes wrong.
struct SigV4Request {
  std::string method;           // "GET", "PUT", ...
  std::string canonical_uri;    // the path as sent, already URI-encoded
  std::string canonical_query;  // sorted, encoded, "k=v&k2=" ("" for none)
  // Headers to sign, by lower-case name (host and x-amz-content-sha256 at
  // least); values as sent.
  std::map<std::string, std::string> headers;
  std::string payload_sha256_hex;
  std::string amz_date;  // YYYYMMDDTHHMMSSZ, also sent as x-amz-date
};

struct SigV4Key {
  std::string_view access_key;
  std::string_view secret_key;
  std::string_view region;
  std::string_view service = "s3";
};

// The Authorization header's value.
std::string SignV4(const SigV4Request& request, const SigV4Key& key);
// The time as x-amz-date writes it.
std::string AmzDate(double unix_seconds);

}  // namespace ckptd::tier
