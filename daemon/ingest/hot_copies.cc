// Hot restore's in-memory copies, with an LRU byte bound.
#include "daemon/ingest/hot_copies.h"

#include <spdlog/spdlog.h>

#include "daemon/base/strings.h"
#include "daemon/ingest/arena_registry.h"

namespace ckptd::ingest {

bool HotCopies::Keep(HotCopyInfo info, std::shared_ptr<const Arena> arena) {
  const std::string run_id = info.run_id;
  const uint64_t step = info.step;
  const uint64_t bytes = arena->memory->size();
  info.bytes = bytes;
  info.key = NewToken();
  absl::MutexLock lock(&mu_);
  if (auto it = copies_.find(run_id); it != copies_.end()) EraseLocked(it);
  if (bytes > max_bytes_) {
    spdlog::info("hot copy not kept run={} step={} bytes={}: above shm.keep_in_memory_max_bytes={}",
                 run_id, step, bytes, max_bytes_);
    return false;
  }
  while (bytes_ + bytes > max_bytes_ && !copies_.empty()) {
    auto lru = copies_.begin();
    for (auto it = copies_.begin(); it != copies_.end(); ++it) {
      if (it->second.last_use < lru->second.last_use) lru = it;
    }
    spdlog::info(
        "hot copy dropped run={} step={} bytes={} reason=\"least recently used; "
        "shm.keep_in_memory_max_bytes={}\"",
        lru->first, lru->second.info.step, lru->second.info.bytes, max_bytes_);
    EraseLocked(lru);
  }
  bytes_ += bytes;
  copies_[run_id] = Copy{std::move(info), std::move(arena), ++clock_};
  spdlog::debug("hot copy kept run={} step={} bytes={} total={}", run_id, step, bytes, bytes_);
  return true;
}

void HotCopies::EraseLocked(std::map<std::string, Copy>::iterator it) {
  bytes_ -= it->second.info.bytes;
  copies_.erase(it);
}

void HotCopies::Drop(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  if (auto it = copies_.find(run_id); it != copies_.end()) EraseLocked(it);
}

std::optional<HotCopyInfo> HotCopies::Find(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  auto it = copies_.find(run_id);
  if (it == copies_.end()) return std::nullopt;
  it->second.last_use = ++clock_;
  return it->second.info;
}

absl::StatusOr<std::pair<int, uint64_t>> HotCopies::OpenReadOnly(const std::string& run_id,
                                                                 uint64_t step,
                                                                 std::string_view key) {
  absl::MutexLock lock(&mu_);
  auto it = copies_.find(run_id);
  if (it == copies_.end() || it->second.info.step != step) {
    return absl::NotFoundError(
        StrCat("no in-memory copy of step ", step, " of run '", run_id, "'; restore from disk"));
  }
  const std::string& want = it->second.info.key;
  unsigned diff = key.size() ^ want.size();
  for (size_t i = 0; i < std::min(key.size(), want.size()); ++i) diff |= key[i] ^ want[i];
  if (diff != 0) {
    return absl::PermissionDeniedError(
        StrCat("HOT: the key does not open run '", run_id, "' step ", step,
               "'s in-memory copy; pass the key GetRun or OpenRun returned (in_memory.key)"));
  }
  it->second.last_use = ++clock_;
  auto fd = it->second.arena->memory->OpenReadOnly();
  if (!fd.ok()) return fd.status();
  return std::pair(*fd, it->second.arena->memory->size());
}

uint64_t HotCopies::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

size_t HotCopies::size() const {
  absl::MutexLock lock(&mu_);
  return copies_.size();
}

}  // namespace ckptd::ingest
