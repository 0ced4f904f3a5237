// Arena source: bounds checks, windows of the mapped arena, progressive staging.
#include "daemon/ingest/arena_source.h"

#include <thread>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::ingest {

absl::StatusOr<std::unique_ptr<ArenaSource>> ArenaSource::Create(
    std::vector<ArenaRegion> regions, const std::vector<std::string>& names,
    std::optional<ArenaRegion> progress, std::chrono::milliseconds staging_timeout) {
  for (size_t i = 0; i < regions.size(); ++i) {
    const ArenaRegion& r = regions[i];
    const uint64_t size = r.arena->memory->size();
    if (r.offset > size || r.bytes > size - r.offset) {
      return absl::InvalidArgumentError(
          StrCat("locations[", i, "]: tensor '", i < names.size() ? names[i] : "", "' needs ",
                 r.bytes, " bytes at offset ", r.offset, " but arena ", r.arena->id, " holds ",
                 size, " bytes; every tensor must lie inside its arena"));
    }
  }
  if (progress) {
    const uint64_t size = progress->arena->memory->size();
    if (progress->offset % 8 != 0 || size < 8 || progress->offset > size - 8) {
      return absl::InvalidArgumentError(StrCat("progress: offset ", progress->offset,
                                               " is not an 8-byte aligned u64 inside arena ",
                                               progress->arena->id, " (", size, " bytes)"));
    }
    progress->bytes = 8;
  }
  return std::unique_ptr<ArenaSource>(
      new ArenaSource(std::move(regions), std::move(progress), staging_timeout));
}

absl::Status ArenaSource::CopyTo(const ByteWriter& write) {
  std::string_view counter;
  if (progress_) {
    CKPTD_ASSIGN_OR_RETURN(counter, progress_->arena->memory->Slice(progress_->offset, 8));
  }
  uint64_t total = 0;
  for (const ArenaRegion& r : regions_) total += r.bytes;
  uint64_t done = 0;  // tensor bytes written so far
  for (const ArenaRegion& r : regions_) {
    for (uint64_t at = 0; at < r.bytes; at += kWindowBytes) {
      const uint64_t len = std::min<uint64_t>(kWindowBytes, r.bytes - at);
      // An immutable arena's bytes are in place by construction.
      if (!counter.empty() && !r.arena->digests) CKPTD_TRY(WaitStaged(counter, done + len, total));
      CKPTD_ASSIGN_OR_RETURN(std::string_view window, r.arena->memory->Slice(r.offset + at, len));
      CKPTD_TRY(write(window));
      done += len;
    }
  }
  return absl::OkStatus();
}

std::vector<std::optional<gguf::Digest128>> ArenaSource::KnownDigests() const {
  std::vector<std::optional<gguf::Digest128>> known(regions_.size());
  for (size_t i = 0; i < regions_.size(); ++i) {
    const ArenaRegion& r = regions_[i];
    if (r.arena->digests) known[i] = r.arena->digests->Find(r.offset, r.bytes);
  }
  return known;
}

void ArenaSource::Learn(std::span<const gguf::Digest128> digests) {
  for (size_t i = 0; i < regions_.size() && i < digests.size(); ++i) {
    const ArenaRegion& r = regions_[i];
    if (r.arena->digests) r.arena->digests->Put(r.offset, r.bytes, digests[i]);
  }
}

absl::Status ArenaSource::WaitStaged(const std::string_view& counter, uint64_t needed,
                                     uint64_t total) const {
  const auto* word = reinterpret_cast<const uint64_t*>(counter.data());
  uint64_t seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
  auto last_progress = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(20);
  while (seen < needed) {
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
    const uint64_t now_seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    if (now_seen != seen) {
      seen = now_seen;
      last_progress = std::chrono::steady_clock::now();
      pause = std::chrono::microseconds(20);
    } else if (std::chrono::steady_clock::now() - last_progress > timeout_) {
      return absl::DeadlineExceededError(
          StrCat("the trainer stopped staging: ", seen, " of ", total,
                 " tensor bytes in place and no progress for ",
                 std::chrono::duration<double>(timeout_).count(),
                 " s (it exited or hung mid-copy); nothing was committed"));
    }
  }
  return absl::OkStatus();
}

}  // namespace ckptd::ingest
