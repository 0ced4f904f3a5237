// The ObjectStore of an S3-compatible service over libcurl: every request
// signed with SigV4 (sigv4.h), libxml2 reads the answers, OpenSSL hashes bodies.
// Path-style addressing (endpoint/bucket/key), as Ceph RGW and MinIO serve
// it without DNS. Every body is sent with its SHA-256 as
// x-amz-content-sha256 and its MD5 as Content-MD5, so the store checks what
// it received. Ceph RGW 16 answers CompleteMultipartUpload with an empty
// <ETag>: the object's is then read with a HEAD.
//
// Thread-safe: each calling thread reuses its own curl handle (and so its
// connections). Errors follow ObjectStore's contract; each message names
// the request, the HTTP status and S3's code.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/tier/object_store.h"

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
  // PEM CAs for an https endpoint ("" = the system's roots).
  std::string ca_file;
  // Over https, bodies go as UNSIGNED-PAYLOAD with no Content-MD5 unless
  // this is set (tier.s3.sign_payload = "always"); over http they are
  // always signed and MD5-checked.
  bool sign_payload_always = false;
};

class S3Store final : public ObjectStore {
 public:
  explicit S3Store(S3Config config);

  const S3Config& config() const { return config_; }
  // Tests and `make run`'s dev store: makes the bucket (owning it already is fine).
  absl::Status CreateBucket();

  std::string UrlOf(const std::string& key) const override;
  StoreCapabilities capabilities() const override {
    return {.transport_protects_bytes = unsigned_payload_};
  }
  absl::StatusOr<std::string> Put(const std::string& key, std::string_view body, Precondition pre,
                                  std::string_view md5_hex) override;
  absl::StatusOr<std::string> Get(const std::string& key, std::optional<ByteRange> range) override;
  absl::StatusOr<std::optional<ObjectInfo>> Head(const std::string& key) override;
  absl::StatusOr<ListPage> ListPageOf(const std::string& prefix, const std::string& token,
                                      int max_keys) override;
  absl::Status Delete(const std::vector<std::string>& keys) override;
  absl::StatusOr<std::string> CreateMultipartUpload(const std::string& key) override;
  absl::StatusOr<std::string> UploadPart(const std::string& key, const std::string& upload_id,
                                         int part_number, std::string_view body,
                                         std::string_view md5_hex) override;
  absl::StatusOr<std::string> UploadPartCopy(const std::string& key, const std::string& upload_id,
                                             int part_number, const std::string& source_key,
                                             ByteRange range) override;
  absl::StatusOr<std::string> CompleteMultipartUpload(
      const std::string& key, const std::string& upload_id,
      const std::vector<std::string>& etags) override;
  absl::Status AbortMultipartUpload(const std::string& key, const std::string& upload_id) override;
  absl::StatusOr<std::vector<MultipartUpload>> ListMultipartUploads(
      const std::string& prefix) override;

 private:
  struct Response {
    long status = 0;
    std::string body;
    std::string etag;
    uint64_t content_length = 0;
  };
  // `query`: already canonical (sorted keys, encoded values, "uploads=").
  // `md5_raw`: the body's binary MD5 when known (it is the costliest part
  // of a request: computed once per body, here or by the caller).
  absl::StatusOr<Response> Request(const char* method, const std::string& key,
                                   const std::string& query, std::string_view body,
                                   const std::vector<std::string>& headers = {},
                                   std::string_view md5_raw = {}, size_t expect_body = 0);
  // The request's path, as sent and signed: /bucket[/key], URI-encoded.
  std::string Path(const std::string& key) const;
  std::string Url(const std::string& key, const std::string& query) const;

  S3Config config_;
  std::string host_;  // as curl sends it in Host: (signed)
  // https without sign_payload_always: bodies are neither hashed for the
  // signature nor MD5-summed for Content-MD5.
  bool unsigned_payload_ = false;
};

// AWS's URI encoding: unreserved characters kept, the rest %XX; '/' kept
// when `keep_slash` (object keys in paths).
std::string UriEncode(std::string_view s, bool keep_slash);

}  // namespace ckptd::tier
