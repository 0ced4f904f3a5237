// Injected store failures.
#include "daemon/tier/fault_store.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::tier {

std::string_view StoreOpName(StoreOp op) {
  switch (op) {
    case StoreOp::kAny:
      return "any";
    case StoreOp::kPut:
      return "put";
    case StoreOp::kGet:
      return "get";
    case StoreOp::kHead:
      return "head";
    case StoreOp::kList:
      return "list";
    case StoreOp::kDelete:
      return "delete";
    case StoreOp::kCreateMultipart:
      return "create_multipart";
    case StoreOp::kUploadPart:
      return "upload_part";
    case StoreOp::kUploadPartCopy:
      return "upload_part_copy";
    case StoreOp::kComplete:
      return "complete";
    case StoreOp::kAbort:
      return "abort";
    case StoreOp::kListUploads:
      return "list_uploads";
  }
  return "?";
}

FaultStore::~FaultStore() { Clear(); }

void FaultStore::Add(StoreFault fault) {
  absl::MutexLock lock(&mu_);
  rules_.push_back({.fault = std::move(fault)});
}

void FaultStore::LagListings(int writes) {
  absl::MutexLock lock(&mu_);
  lag_ = std::max(0, writes);
  while (recent_.size() > static_cast<size_t>(lag_)) recent_.pop_front();
}

void FaultStore::Clear() {
  absl::MutexLock lock(&mu_);
  rules_.clear();
  lag_ = 0;
  recent_.clear();
  ++generation_;
  released_.SignalAll();
}

int FaultStore::LandLate() {
  std::vector<std::pair<std::string, std::string>> late;
  {
    absl::MutexLock lock(&mu_);
    late.swap(late_);
  }
  for (const auto& [key, body] : late) (void)base_->Put(key, body, Precondition::kNone, {});
  return static_cast<int>(late.size());
}

int FaultStore::calls(StoreOp op) const {
  absl::MutexLock lock(&mu_);
  if (op != StoreOp::kAny) {
    auto it = calls_.find(op);
    return it == calls_.end() ? 0 : it->second;
  }
  int n = 0;
  for (const auto& [o, c] : calls_) n += c;
  return n;
}

int FaultStore::injected() const {
  absl::MutexLock lock(&mu_);
  return injected_;
}

std::optional<StoreFault> FaultStore::Match(StoreOp op, const std::string& key) {
  absl::MutexLock lock(&mu_);
  ++calls_[op];
  for (Rule& r : rules_) {
    const StoreFault& f = r.fault;
    if (f.op != StoreOp::kAny && f.op != op) continue;
    if (!f.key_contains.empty() && key.find(f.key_contains) == std::string::npos) continue;
    const int n = ++r.seen;
    const bool acts = n == f.nth || (f.every > 0 && n > f.nth && (n - f.nth) % f.every == 0);
    if (!acts) continue;
    ++injected_;
    return f;
  }
  return std::nullopt;
}

absl::Status FaultStore::Act(const StoreFault& f, StoreOp op, const std::string& key) {
  const std::string what = StrCat(StoreOpName(op), " ", key);
  switch (f.action) {
    case StoreFault::Action::kFail:
      return absl::Status(f.error.code(), StrCat(what, ": ", f.error.message()));
    case StoreFault::Action::kHang:
    case StoreFault::Action::kLandLate: {
      absl::MutexLock lock(&mu_);
      const uint64_t gen = generation_;
      const absl::Time until = absl::Now() + absl::Seconds(f.hang_s);
      while (generation_ == gen && !released_.WaitWithDeadline(&mu_, until)) {
      }
      return absl::UnavailableError(
          StrCat(what, ": the store moved no byte for ", f.hang_s, " s (stalled)"));
    }
    case StoreFault::Action::kTruncate:
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

void FaultStore::Wrote(const std::string& key, std::optional<ObjectInfo> before) {
  absl::MutexLock lock(&mu_);
  if (lag_ == 0) return;
  recent_.push_back({.key = key, .before = std::move(before)});
  while (recent_.size() > static_cast<size_t>(lag_)) recent_.pop_front();
}

absl::StatusOr<std::string> FaultStore::Put(const std::string& key, std::string_view body,
                                            Precondition pre, std::string_view md5_hex) {
  std::optional<StoreFault> f = Match(StoreOp::kPut, key);
  if (f && f->action == StoreFault::Action::kLandLate) {
    absl::MutexLock lock(&mu_);
    late_.emplace_back(key, std::string(body));
  }
  if (f && f->action != StoreFault::Action::kTruncate) return Act(*f, StoreOp::kPut, key);
  std::optional<ObjectInfo> before;
  if (auto h = base_->Head(key); h.ok()) before = *h;
  absl::StatusOr<std::string> etag =
      f ? base_->Put(key, body.substr(0, std::min<uint64_t>(f->keep_bytes, body.size())), pre, {})
        : base_->Put(key, body, pre, md5_hex);
  if (etag.ok()) Wrote(key, std::move(before));
  return etag;
}

absl::StatusOr<std::string> FaultStore::Get(const std::string& key,
                                            std::optional<ByteRange> range) {
  std::optional<StoreFault> f = Match(StoreOp::kGet, key);
  if (f && f->action != StoreFault::Action::kTruncate) return Act(*f, StoreOp::kGet, key);
  absl::StatusOr<std::string> body = base_->Get(key, range);
  if (f && body.ok() && body->size() > f->keep_bytes) body->resize(f->keep_bytes);
  return body;
}

absl::StatusOr<std::optional<ObjectInfo>> FaultStore::Head(const std::string& key) {
  if (auto f = Match(StoreOp::kHead, key)) CKPTD_TRY(Act(*f, StoreOp::kHead, key));
  return base_->Head(key);
}

absl::StatusOr<ListPage> FaultStore::ListPageOf(const std::string& prefix, const std::string& token,
                                                int max_keys) {
  if (auto f = Match(StoreOp::kList, prefix)) CKPTD_TRY(Act(*f, StoreOp::kList, prefix));
  std::deque<Write> recent;
  {
    absl::MutexLock lock(&mu_);
    recent = recent_;
  }
  if (recent.empty()) return base_->ListPageOf(prefix, token, max_keys);
  // A lagging index: the whole listing as it was before the recent writes,
  // then paged here.
  CKPTD_ASSIGN_OR_RETURN(std::vector<ObjectInfo> now, base_->List(prefix));
  std::map<std::string, ObjectInfo> view;
  for (ObjectInfo& o : now) view[o.key] = std::move(o);
  for (auto it = recent.rbegin(); it != recent.rend(); ++it) {
    if (!it->key.starts_with(prefix)) continue;
    if (it->before) {
      view[it->key] = *it->before;
    } else {
      view.erase(it->key);
    }
  }
  ListPage page;
  for (auto it = token.empty() ? view.begin() : view.upper_bound(token); it != view.end(); ++it) {
    if (page.objects.size() == static_cast<size_t>(max_keys)) {
      page.next_token = page.objects.back().key;
      break;
    }
    page.objects.push_back(it->second);
  }
  return page;
}

absl::Status FaultStore::Delete(const std::vector<std::string>& keys) {
  if (auto f = Match(StoreOp::kDelete, keys.empty() ? "" : keys.front())) {
    CKPTD_TRY(Act(*f, StoreOp::kDelete, keys.empty() ? "" : keys.front()));
  }
  std::vector<std::optional<ObjectInfo>> before;
  for (const std::string& k : keys) {
    absl::StatusOr<std::optional<ObjectInfo>> h = base_->Head(k);
    before.push_back(h.ok() ? *h : std::nullopt);
  }
  CKPTD_TRY(base_->Delete(keys));
  for (size_t i = 0; i < keys.size(); ++i) {
    if (before[i]) Wrote(keys[i], before[i]);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FaultStore::CreateMultipartUpload(const std::string& key) {
  if (auto f = Match(StoreOp::kCreateMultipart, key)) {
    CKPTD_TRY(Act(*f, StoreOp::kCreateMultipart, key));
  }
  return base_->CreateMultipartUpload(key);
}

absl::StatusOr<std::string> FaultStore::UploadPart(const std::string& key,
                                                   const std::string& upload_id, int part_number,
                                                   std::string_view body,
                                                   std::string_view md5_hex) {
  std::optional<StoreFault> f = Match(StoreOp::kUploadPart, key);
  if (f && f->action != StoreFault::Action::kTruncate) return Act(*f, StoreOp::kUploadPart, key);
  if (f) {
    return base_->UploadPart(key, upload_id, part_number,
                             body.substr(0, std::min<uint64_t>(f->keep_bytes, body.size())), {});
  }
  return base_->UploadPart(key, upload_id, part_number, body, md5_hex);
}

absl::StatusOr<std::string> FaultStore::UploadPartCopy(const std::string& key,
                                                       const std::string& upload_id,
                                                       int part_number,
                                                       const std::string& source_key,
                                                       ByteRange range) {
  if (auto f = Match(StoreOp::kUploadPartCopy, key)) {
    CKPTD_TRY(Act(*f, StoreOp::kUploadPartCopy, key));
  }
  return base_->UploadPartCopy(key, upload_id, part_number, source_key, range);
}

absl::StatusOr<std::string> FaultStore::CompleteMultipartUpload(
    const std::string& key, const std::string& upload_id, const std::vector<std::string>& etags) {
  if (auto f = Match(StoreOp::kComplete, key)) CKPTD_TRY(Act(*f, StoreOp::kComplete, key));
  std::optional<ObjectInfo> before;
  if (auto h = base_->Head(key); h.ok()) before = *h;
  absl::StatusOr<std::string> etag = base_->CompleteMultipartUpload(key, upload_id, etags);
  if (etag.ok()) Wrote(key, std::move(before));
  return etag;
}

absl::Status FaultStore::AbortMultipartUpload(const std::string& key,
                                              const std::string& upload_id) {
  if (auto f = Match(StoreOp::kAbort, key)) CKPTD_TRY(Act(*f, StoreOp::kAbort, key));
  return base_->AbortMultipartUpload(key, upload_id);
}

absl::StatusOr<std::vector<MultipartUpload>> FaultStore::ListMultipartUploads(
    const std::string& prefix) {
  if (auto f = Match(StoreOp::kListUploads, prefix)) {
    CKPTD_TRY(Act(*f, StoreOp::kListUploads, prefix));
  }
  return base_->ListMultipartUploads(prefix);
}

}  // namespace ckptd::tier
