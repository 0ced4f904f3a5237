// What the object-storage tier asks of a store, and all it may rely on. Every
// object-store call in the daemon and ckptctl goes through this interface, so
// the upload, coordination and fetch logic runs against MemoryStore (and
// FaultStore around it) in unit tests and against S3Store in production.
//
// The contract, as S3 states it and every implementation keeps it:
//  - Keys are byte strings up to 1024 bytes; a listing returns them in
//    ascending byte order, at most `max_keys` (1..1000) a page.
//  - A whole object's ETag is the hex MD5 of its bytes; a multipart object's
//    is MultipartEtag of its parts' ETags ("<md5 of the md5s>-<parts>").
//    ETags never carry quotes here.
//  - Multipart: parts are numbered 1..10000; every part but the last is at
//    least 5 MiB (kMinPartSize) at completion; completion names the parts in
//    ascending order with the ETags the store gave them; an upload is
//    invisible until completed and gone once completed or aborted
//    (NOT_FOUND "NoSuchUpload" after that). A part may be copied from a byte
//    range of an existing object (UploadPartCopy) instead of sent.
//  - A PUT replaces the object atomically: a reader sees the old bytes or the
//    new ones. With Precondition::kIfAbsent it is refused (ALREADY_EXISTS)
//    when the key exists, on a store whose capabilities() say it checks;
//    Ceph RGW 16 does not, so callers use it as a defence, never as a lock.
//  - A read after a completed write sees that write; a listing may lag
//    (FaultStore's LagListings models it), so nothing decides on a listing
//    alone what a HEAD or GET can confirm.
//  - Deleting a key that does not exist succeeds.
//
// Errors: UNAVAILABLE or DEADLINE_EXCEEDED for what a retry may cure (the
// network, 5xx, SlowDown, a request that stalled); NOT_FOUND (no such key,
// bucket or upload, the message naming which); PERMISSION_DENIED (403);
// DATA_LOSS (the store holds or returned bytes other than those sent or
// asked for); FAILED_PRECONDITION and INVALID_ARGUMENT for the rest. Each
// message names the request. IsTransient() is the one test for "retry".
//
// Thread-safety: every implementation may be called from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/base/byte_source.h"

namespace ckptd::tier {

inline constexpr uint64_t kMinPartSize = 5ull << 20;
inline constexpr int kMaxParts = 10000;
inline constexpr int kMaxListKeys = 1000;
inline constexpr size_t kMaxKeyBytes = 1024;

struct ObjectInfo {
  std::string key;
  uint64_t size = 0;
  std::string etag;  // without quotes
};

struct MultipartUpload {
  std::string key;
  std::string upload_id;
};

// Bytes [offset, offset + length) of an object.
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct ListPage {
  std::vector<ObjectInfo> objects;  // ascending key order
  std::string next_token;           // "" on the last page
};

enum class Precondition { kNone, kIfAbsent };

struct StoreCapabilities {
  bool checks_if_absent = false;  // Precondition::kIfAbsent is enforced
  // The transport itself proves the store received the bytes sent (TLS):
  // callers need not compute an MD5 of bodies they send to check the ETag.
  bool transport_protects_bytes = false;
};

// Whether a failure is worth retrying (the store or the network, not us).
bool IsTransient(const absl::Status& st);

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // "s3://bucket" style name of an object, for listings and messages.
  virtual std::string UrlOf(const std::string& key) const = 0;
  virtual StoreCapabilities capabilities() const = 0;

  // A whole object in one request; returns the ETag the store gave it (the
  // MD5 of what it received). `md5_hex`: the caller's MD5 of `body`, when it
  // has it, sent for the store to check (S3's Content-MD5: a body that
  // arrives otherwise is refused, FAILED_PRECONDITION "BadDigest"); the
  // store computes it when it is "". Callers compare the ETag with their MD5.
  virtual absl::StatusOr<std::string> Put(const std::string& key, std::string_view body,
                                          Precondition pre = Precondition::kNone,
                                          std::string_view md5_hex = {}) = 0;
  // The object, or `range` of it (exactly range->length bytes, or an error).
  virtual absl::StatusOr<std::string> Get(const std::string& key,
                                          std::optional<ByteRange> range = std::nullopt) = 0;
  // nullopt when there is no such object.
  virtual absl::StatusOr<std::optional<ObjectInfo>> Head(const std::string& key) = 0;
  // One page of the objects under `prefix`, after `token` ("" = first page).
  virtual absl::StatusOr<ListPage> ListPageOf(const std::string& prefix, const std::string& token,
                                              int max_keys = kMaxListKeys) = 0;
  // Every key in one call per 1000; keys already gone are fine.
  virtual absl::Status Delete(const std::vector<std::string>& keys) = 0;

  virtual absl::StatusOr<std::string> CreateMultipartUpload(const std::string& key) = 0;
  // Returns the part's ETag; `md5_hex` as for Put.
  virtual absl::StatusOr<std::string> UploadPart(const std::string& key,
                                                 const std::string& upload_id, int part_number,
                                                 std::string_view body,
                                                 std::string_view md5_hex = {}) = 0;
  // The part is `range` of the existing object `source_key`, copied inside
  // the store; returns the part's ETag (the MD5 of those bytes).
  virtual absl::StatusOr<std::string> UploadPartCopy(const std::string& key,
                                                     const std::string& upload_id, int part_number,
                                                     const std::string& source_key,
                                                     ByteRange range) = 0;
  // `etags`: parts 1..N in order. Returns the object's ETag.
  virtual absl::StatusOr<std::string> CompleteMultipartUpload(
      const std::string& key, const std::string& upload_id,
      const std::vector<std::string>& etags) = 0;
  // An upload already gone is fine.
  virtual absl::Status AbortMultipartUpload(const std::string& key,
                                            const std::string& upload_id) = 0;
  virtual absl::StatusOr<std::vector<MultipartUpload>> ListMultipartUploads(
      const std::string& prefix) = 0;

  // Every object under `prefix`, all pages.
  absl::StatusOr<std::vector<ObjectInfo>> List(const std::string& prefix);
};

// Hex digests, as S3 writes ETags and x-amz-content-sha256.
std::string Md5Hex(std::string_view data);
// MD5 over bytes given in pieces (a copied part's bytes, read in windows).
// FinishHex starts it afresh for the next bytes.
class Md5Stream {
 public:
  Md5Stream();
  ~Md5Stream();
  Md5Stream(const Md5Stream&) = delete;
  Md5Stream& operator=(const Md5Stream&) = delete;
  void Update(std::string_view data);
  std::string FinishHex();

 private:
  void* ctx_;  // EVP_MD_CTX
};
std::string Sha256Hex(std::string_view data);
// The ETag S3 gives a multipart object: MD5 of the parts' binary MD5s, "-N".
std::string MultipartEtag(const std::vector<std::string>& part_md5_hex);
// Whether `st` is the store saying an upload id is unknown (aborted,
// completed or expired): the upload must start again.
bool IsNoSuchUpload(const absl::Status& st);

// An object read as a ByteSource through ranged GETs of `window` bytes (a
// read inside the last window costs nothing), so gguf::ReadHeader and
// gguf::Verify check a remote copy without holding it or writing it out.
// Not thread-safe; the store must outlive it.
class ObjectSource final : public ByteSource {
 public:
  ObjectSource(ObjectStore* store, std::string key, uint64_t size, size_t window = 8 << 20)
      : store_(store), key_(std::move(key)), size_(size), window_(window) {}
  uint64_t size() const override { return size_; }
  absl::Status ReadAt(uint64_t offset, size_t n, void* dst) const override;
  uint64_t bytes_fetched() const { return fetched_; }

 private:
  ObjectStore* store_;
  const std::string key_;
  const uint64_t size_;
  const size_t window_;
  mutable uint64_t at_ = 0;  // the cached window: [at_, at_ + cache_.size())
  mutable std::string cache_;
  mutable uint64_t fetched_ = 0;
};

}  // namespace ckptd::tier
