// An ObjectStore wrapper that misbehaves on request, as env/fault_env does
// for files: it fails the Nth call (of one operation or of any), hangs a
// call as a store whose disks died holds a request open, truncates a body
// (a GET cut short that the transport did not notice; a PUT of which the
// store kept a prefix, as a store that ignores Content-MD5 would), or lags
// listings behind writes. Rules apply in the order added; the first that
// matches a call acts on it. Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/tier/object_store.h"

namespace ckptd::tier {

enum class StoreOp {
  kAny,
  kPut,
  kGet,
  kHead,
  kList,
  kDelete,
  kCreateMultipart,
  kUploadPart,
  kUploadPartCopy,
  kComplete,
  kAbort,
  kListUploads,
};
std::string_view StoreOpName(StoreOp op);

struct StoreFault {
  // kLandLate (PUTs): the call hangs as kHang and fails, as a request the
  // client gave up on, but the store keeps its body when LandLate() is
  // called, as a store that finished the request after the client left.
  enum class Action { kFail, kHang, kTruncate, kLandLate };
  StoreOp op = StoreOp::kAny;
  // Only calls whose key (or prefix) contains this; "" = every key.
  std::string key_contains;
  // Acts on the nth matching call counted from when the rule is added
  // (1 = the next one), then on every `every`th after it (0 = once).
  int nth = 1;
  int every = 0;
  Action action = Action::kFail;
  absl::Status error = absl::UnavailableError("injected: HTTP 503 SlowDown");  // kFail
  double hang_s = 0;        // kHang: then fails UNAVAILABLE, as a stalled request does
  uint64_t keep_bytes = 0;  // kTruncate: the body's first keep_bytes survive
};

class FaultStore final : public ObjectStore {
 public:
  explicit FaultStore(ObjectStore* base) : base_(base) {}
  ~FaultStore() override;

  void Add(StoreFault fault) ABSL_LOCKS_EXCLUDED(mu_);
  // Listings leave out the effect of the last `writes` writes (PUTs,
  // completions, deletes), as an eventually consistent index does.
  void LagListings(int writes) ABSL_LOCKS_EXCLUDED(mu_);
  void Clear() ABSL_LOCKS_EXCLUDED(mu_);  // no rules, no lag; hung calls return now
  // The bodies of PUTs failed by kLandLate reach the store now; how many.
  int LandLate() ABSL_LOCKS_EXCLUDED(mu_);
  // Calls seen, of `op` (kAny: all), and the faults that acted.
  int calls(StoreOp op = StoreOp::kAny) const ABSL_LOCKS_EXCLUDED(mu_);
  int injected() const ABSL_LOCKS_EXCLUDED(mu_);

  std::string UrlOf(const std::string& key) const override { return base_->UrlOf(key); }
  StoreCapabilities capabilities() const override { return base_->capabilities(); }
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
  struct Rule {
    StoreFault fault;
    int seen = 0;
  };
  // What a call must do: nothing (nullopt), or the fault that matched.
  std::optional<StoreFault> Match(StoreOp op, const std::string& key) ABSL_LOCKS_EXCLUDED(mu_);
  // kFail and kHang end the call with their status; kTruncate is the caller's.
  absl::Status Act(const StoreFault& f, StoreOp op, const std::string& key)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A write passed through: remembered for lagging listings.
  void Wrote(const std::string& key, std::optional<ObjectInfo> before) ABSL_LOCKS_EXCLUDED(mu_);

  ObjectStore* base_;
  mutable absl::Mutex mu_;
  absl::CondVar released_;
  std::vector<Rule> rules_ ABSL_GUARDED_BY(mu_);
  std::map<StoreOp, int> calls_ ABSL_GUARDED_BY(mu_);
  int injected_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // Clear() wakes hung calls
  int lag_ ABSL_GUARDED_BY(mu_) = 0;
  struct Write {
    std::string key;
    std::optional<ObjectInfo> before;  // what a lagging listing still shows
  };
  std::deque<Write> recent_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, std::string>> late_ ABSL_GUARDED_BY(mu_);  // key, body
};

}  // namespace ckptd::tier
