// An S3 client for the object-storage tier: libcurl signs every request
// (CURLOPT_AWS_SIGV4), libxml2 reads the answers, OpenSSL hashes bodies.
// Path-style addressing (endpoint/bucket/key), as Ceph RGW and MinIO serve
// it without DNS. Every body is sent with its SHA-256 as
// x-amz-content-sha256 and its MD5 as Content-MD5, so the store checks what
// it received, and a part's or object's ETag must come back as that MD5.
//
// Thread-safe: each calling thread reuses its own curl handle (and so its
// connections). Errors are absl::Status: UNAVAILABLE for what a retry may
// cure (connection errors, 5xx, SlowDown, timeouts), PERMISSION_DENIED
// (403), NOT_FOUND (404: NoSuchBucket, NoSuchKey, NoSuchUpload),
// DATA_LOSS (an ETag that is not the MD5 sent), FAILED_PRECONDITION for the
// rest; each message names the request, the HTTP status and S3's code.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ckptd::tier {

struct S3Config {
  std::string endpoint;  // http(s)://host:port
  std::string bucket;
  std::string region = "us-east-1";
  std::string access_key;
  std::string secret_key;
  double connect_timeout_s = 10;
  double request_timeout_s = 300;
  // A request that moves no byte either way for this long fails (as a
  // transient error): a store whose disks died holds requests open.
  double stall_timeout_s = 30;
};

struct S3Object {
  std::string key;
  uint64_t size = 0;
  std::string etag;  // without quotes
};

struct S3Upload {
  std::string key;
  std::string upload_id;
};

// Whether a failure is worth retrying (the store or the network, not us).
bool IsTransient(const absl::Status& st);

// Hex digests, as S3 writes ETags and x-amz-content-sha256.
std::string Md5Hex(std::string_view data);
std::string Sha256Hex(std::string_view data);
// The ETag S3 gives a multipart object: MD5 of the parts' binary MD5s, "-N".
std::string MultipartEtag(const std::vector<std::string>& part_md5_hex);

class S3Client {
 public:
  explicit S3Client(S3Config config);

  const S3Config& config() const { return config_; }

  absl::Status CreateBucket();
  // A whole object in one PUT; returns its ETag (checked against the MD5).
  absl::StatusOr<std::string> Put(const std::string& key, std::string_view body);
  absl::StatusOr<std::string> CreateMultipartUpload(const std::string& key);
  absl::StatusOr<std::string> UploadPart(const std::string& key, const std::string& upload_id,
                                         int part_number, std::string_view body);
  // `etags`: part 1..N in order. Returns the object's ETag.
  absl::StatusOr<std::string> CompleteMultipartUpload(const std::string& key,
                                                      const std::string& upload_id,
                                                      const std::vector<std::string>& etags);
  absl::Status AbortMultipartUpload(const std::string& key, const std::string& upload_id);
  // Every object under `prefix` (ListObjectsV2, paged).
  absl::StatusOr<std::vector<S3Object>> List(const std::string& prefix);
  absl::StatusOr<std::vector<S3Upload>> ListMultipartUploads(const std::string& prefix);
  // DeleteObjects in batches of 1000; a key that is already gone is fine.
  absl::Status Delete(const std::vector<std::string>& keys);
  // The object, or the bytes [offset, offset + length) of it.
  absl::StatusOr<std::string> Get(const std::string& key,
                                  std::optional<std::pair<uint64_t, uint64_t>> range = {});
  // nullopt when there is no such object.
  absl::StatusOr<std::optional<S3Object>> Head(const std::string& key);

 private:
  struct Response {
    long status = 0;
    std::string body;
    std::string etag;
    uint64_t content_length = 0;
  };
  // `query`: already canonical (sorted keys, encoded values, "uploads=").
  // `md5`: the body's raw MD5 when the caller has it (it is the costliest
  // part of a request: computed once per body, here or by the caller).
  absl::StatusOr<Response> Request(const char* method, const std::string& key,
                                   const std::string& query, std::string_view body,
                                   const std::vector<std::string>& headers = {},
                                   std::string_view md5 = {});
  // A PUT of `body` whose answer must carry its MD5 as ETag.
  absl::StatusOr<std::string> PutChecked(const std::string& what, const std::string& key,
                                         const std::string& query, std::string_view body);
  std::string Url(const std::string& key, const std::string& query) const;

  S3Config config_;
};

// AWS's URI encoding: unreserved characters kept, the rest %XX; '/' kept
// when `keep_slash` (object keys in paths).
std::string UriEncode(std::string_view s, bool keep_slash);

}  // namespace ckptd::tier
