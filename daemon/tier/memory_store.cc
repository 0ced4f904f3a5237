// The in-memory store: S3's rules, kept in maps.
#include "daemon/tier/memory_store.h"

#include <algorithm>

#include "daemon/base/strings.h"

namespace ckptd::tier {
namespace {

absl::Status CheckKey(const std::string& what, const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(
        StrCat(what, ": KeyTooLongError or empty key (", key.size(), " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status CheckDigest(const std::string& what, std::string_view body, std::string_view md5_hex) {
  if (!md5_hex.empty() && md5_hex != Md5Hex(body)) {
    return absl::FailedPreconditionError(
        StrCat(what,
               ": HTTP 400 BadDigest: the Content-MD5 you specified did not match what we "
               "received"));
  }
  return absl::OkStatus();
}

absl::Status CheckPartNumber(const std::string& what, int part_number) {
  if (part_number < 1 || part_number > kMaxParts) {
    return absl::InvalidArgumentError(
        StrCat(what, ": HTTP 400 InvalidArgument: part number must be within 1..", kMaxParts));
  }
  return absl::OkStatus();
}

}  // namespace

std::string MemoryStore::UrlOf(const std::string& key) const {
  return StrCat("s3://", options_.bucket, "/", key);
}

absl::StatusOr<std::string> MemoryStore::Put(const std::string& key, std::string_view body,
                                             Precondition pre, std::string_view md5_hex) {
  const std::string what = StrCat("PUT ", key);
  if (absl::Status st = CheckKey(what, key); !st.ok()) return st;
  if (absl::Status st = CheckDigest(what, body, md5_hex); !st.ok()) return st;
  std::string etag = Md5Hex(body);
  absl::MutexLock lock(&mu_);
  ++(md5_hex.empty() ? without_md5_ : with_md5_);
  if (pre == Precondition::kIfAbsent && options_.checks_if_absent && objects_.contains(key)) {
    return absl::AlreadyExistsError(StrCat(what, ": HTTP 412 PreconditionFailed"));
  }
  objects_[key] = {.bytes = std::string(body), .etag = etag};
  return etag;
}

absl::StatusOr<std::string> MemoryStore::Get(const std::string& key,
                                             std::optional<ByteRange> range) {
  absl::MutexLock lock(&mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return absl::NotFoundError(StrCat("GET ", key, ": HTTP 404 NoSuchKey"));
  const std::string& bytes = it->second.bytes;
  if (!range) return bytes;
  if (range->length == 0) return std::string();
  if (range->offset >= bytes.size()) {
    return absl::FailedPreconditionError(StrCat("GET ", key, " bytes ", range->offset, "+",
                                                range->length, ": HTTP 416 InvalidRange"));
  }
  const uint64_t n = std::min<uint64_t>(range->length, bytes.size() - range->offset);
  if (n != range->length) {
    return absl::DataLossError(
        StrCat("GET ", key, " bytes ", range->offset, "+", range->length, ": got ", n, " bytes"));
  }
  return bytes.substr(range->offset, n);
}

absl::StatusOr<std::optional<ObjectInfo>> MemoryStore::Head(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return std::optional<ObjectInfo>();
  return std::optional<ObjectInfo>(
      ObjectInfo{.key = key, .size = it->second.bytes.size(), .etag = it->second.etag});
}

absl::StatusOr<ListPage> MemoryStore::ListPageOf(const std::string& prefix,
                                                 const std::string& token, int max_keys) {
  if (max_keys < 1 || max_keys > kMaxListKeys) {
    return absl::InvalidArgumentError(
        StrCat("list ", prefix, ": max-keys ", max_keys, " is not within 1..", kMaxListKeys));
  }
  absl::MutexLock lock(&mu_);
  ListPage page;
  // The token is the last key of the previous page: the next page starts after it.
  auto it = token.empty() ? objects_.lower_bound(prefix) : objects_.upper_bound(token);
  for (; it != objects_.end() && it->first.starts_with(prefix); ++it) {
    if (page.objects.size() == static_cast<size_t>(max_keys)) {
      page.next_token = page.objects.back().key;
      break;
    }
    page.objects.push_back(
        {.key = it->first, .size = it->second.bytes.size(), .etag = it->second.etag});
  }
  return page;
}

absl::Status MemoryStore::Delete(const std::vector<std::string>& keys) {
  absl::MutexLock lock(&mu_);
  for (const std::string& k : keys) objects_.erase(k);
  return absl::OkStatus();
}

absl::StatusOr<std::string> MemoryStore::CreateMultipartUpload(const std::string& key) {
  if (absl::Status st = CheckKey(StrCat("POST ", key, "?uploads"), key); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  const uint64_t seq = next_upload_++;
  std::string id = StrCat("mem-", seq);
  uploads_[id] = {.key = key, .seq = seq};
  return id;
}

absl::StatusOr<MemoryStore::Upload*> MemoryStore::FindUpload(const std::string& what,
                                                             const std::string& key,
                                                             const std::string& upload_id) {
  auto it = uploads_.find(upload_id);
  if (it == uploads_.end() || it->second.key != key) {
    return absl::NotFoundError(StrCat(what, ": HTTP 404 NoSuchUpload"));
  }
  return &it->second;
}

absl::StatusOr<std::string> MemoryStore::UploadPart(const std::string& key,
                                                    const std::string& upload_id, int part_number,
                                                    std::string_view body,
                                                    std::string_view md5_hex) {
  const std::string what = StrCat("upload part ", part_number, " of ", key);
  if (absl::Status st = CheckPartNumber(what, part_number); !st.ok()) return st;
  if (absl::Status st = CheckDigest(what, body, md5_hex); !st.ok()) return st;
  std::string etag = Md5Hex(body);
  absl::MutexLock lock(&mu_);
  ++(md5_hex.empty() ? without_md5_ : with_md5_);
  absl::StatusOr<Upload*> up = FindUpload(what, key, upload_id);
  if (!up.ok()) return up.status();
  (*up)->parts[part_number] = {.bytes = std::string(body), .etag = etag};
  return etag;
}

absl::StatusOr<std::string> MemoryStore::UploadPartCopy(const std::string& key,
                                                        const std::string& upload_id,
                                                        int part_number,
                                                        const std::string& source_key,
                                                        ByteRange range) {
  const std::string what = StrCat("copy part ", part_number, " of ", key, " from ", source_key);
  if (absl::Status st = CheckPartNumber(what, part_number); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  auto src = objects_.find(source_key);
  if (src == objects_.end()) return absl::NotFoundError(StrCat(what, ": HTTP 404 NoSuchKey"));
  const std::string& bytes = src->second.bytes;
  if (range.length == 0 || range.offset >= bytes.size() ||
      range.length > bytes.size() - range.offset) {
    return absl::FailedPreconditionError(StrCat(what, " bytes ", range.offset, "+", range.length,
                                                ": HTTP 416 InvalidRange (the source has ",
                                                bytes.size(), " bytes)"));
  }
  std::string copy = bytes.substr(range.offset, range.length);
  absl::StatusOr<Upload*> up = FindUpload(what, key, upload_id);
  if (!up.ok()) return up.status();
  std::string etag = Md5Hex(copy);
  (*up)->parts[part_number] = {.bytes = std::move(copy), .etag = etag};
  return etag;
}

absl::StatusOr<std::string> MemoryStore::CompleteMultipartUpload(
    const std::string& key, const std::string& upload_id, const std::vector<std::string>& etags) {
  const std::string what = StrCat("complete ", key);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Upload*> found = FindUpload(what, key, upload_id);
  if (!found.ok()) return found.status();
  Upload& up = **found;
  if (etags.empty() || etags.size() > static_cast<size_t>(kMaxParts)) {
    return absl::FailedPreconditionError(
        StrCat(what, ": HTTP 400 MalformedXML: ", etags.size(), " parts"));
  }
  std::string bytes;
  for (size_t i = 0; i < etags.size(); ++i) {
    const int number = static_cast<int>(i + 1);
    auto p = up.parts.find(number);
    if (p == up.parts.end() || p->second.etag != etags[i]) {
      return absl::FailedPreconditionError(
          StrCat(what, ": HTTP 400 InvalidPart: part ", number,
                 p == up.parts.end() ? " was never uploaded" : " has another ETag"));
    }
    if (i + 1 < etags.size() && p->second.bytes.size() < options_.min_part_size) {
      return absl::FailedPreconditionError(
          StrCat(what, ": HTTP 400 EntityTooSmall: part ", number, " has ", p->second.bytes.size(),
                 " bytes, under the minimum ", options_.min_part_size));
    }
    bytes += p->second.bytes;
  }
  std::string etag = MultipartEtag(etags);
  objects_[key] = {.bytes = std::move(bytes), .etag = etag};
  uploads_.erase(upload_id);
  return etag;
}

absl::Status MemoryStore::AbortMultipartUpload(const std::string& key,
                                               const std::string& upload_id) {
  absl::MutexLock lock(&mu_);
  auto it = uploads_.find(upload_id);
  if (it != uploads_.end() && it->second.key == key) uploads_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<MultipartUpload>> MemoryStore::ListMultipartUploads(
    const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<std::pair<std::string, uint64_t>, std::string>> found;
  for (const auto& [id, up] : uploads_) {
    if (up.key.starts_with(prefix)) found.push_back({{up.key, up.seq}, id});
  }
  std::sort(found.begin(), found.end());
  std::vector<MultipartUpload> out;
  out.reserve(found.size());
  for (auto& [order, id] : found) out.push_back({.key = order.first, .upload_id = id});
  return out;
}

std::vector<std::string> MemoryStore::Keys() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [key, o] : objects_) out.push_back(key);
  return out;
}

std::pair<int, int> MemoryStore::BodiesWithAndWithoutMd5() const {
  absl::MutexLock lock(&mu_);
  return {with_md5_, without_md5_};
}

void MemoryStore::Corrupt(const std::string& key, std::string bytes) {
  absl::MutexLock lock(&mu_);
  if (auto it = objects_.find(key); it != objects_.end()) it->second.bytes = std::move(bytes);
}

}  // namespace ckptd::tier
