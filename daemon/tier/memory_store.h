// An object store in this process's memory, for unit tests of everything
// above the ObjectStore interface. It enforces the contract's rules as S3
// does (key length, listing order and page size, part numbers and sizes,
// ETag forms, Content-MD5, completion naming the parts it holds), so logic
// that passes here does not lean on a laxer store than RGW. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/tier/object_store.h"

namespace ckptd::tier {

class MemoryStore final : public ObjectStore {
 public:
  struct Options {
    std::string bucket = "memory";
    uint64_t min_part_size = kMinPartSize;  // tests may lower it; S3's is 5 MiB
    bool checks_if_absent = true;           // false: as Ceph RGW 16, kIfAbsent ignored
    bool transport_protects_bytes = false;  // true: as S3 over https
  };
  MemoryStore() : MemoryStore(Options{}) {}
  explicit MemoryStore(Options options) : options_(std::move(options)) {}

  std::string UrlOf(const std::string& key) const override;
  StoreCapabilities capabilities() const override {
    return {.checks_if_absent = options_.checks_if_absent,
            .transport_protects_bytes = options_.transport_protects_bytes};
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

  // Test access: every key, and a stored object's bytes replaced behind
  // the ETag's back (bit rot in the store).
  std::vector<std::string> Keys() const;
  void Corrupt(const std::string& key, std::string bytes);
  // Bodies (PUT, part) sent with and without the caller's MD5.
  std::pair<int, int> BodiesWithAndWithoutMd5() const;

 private:
  struct Object {
    std::string bytes;
    std::string etag;
  };
  struct Part {
    std::string bytes;
    std::string etag;
  };
  struct Upload {
    std::string key;
    uint64_t seq = 0;  // initiation order
    std::map<int, Part> parts;
  };
  // The upload `id` of `key`, or NOT_FOUND "NoSuchUpload".
  absl::StatusOr<Upload*> FindUpload(const std::string& what, const std::string& key,
                                     const std::string& upload_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Object> objects_ ABSL_GUARDED_BY(mu_);  // byte order, as S3 lists
  std::map<std::string, Upload> uploads_ ABSL_GUARDED_BY(mu_);  // by upload id
  int with_md5_ ABSL_GUARDED_BY(mu_) = 0;
  int without_md5_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_upload_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace ckptd::tier
