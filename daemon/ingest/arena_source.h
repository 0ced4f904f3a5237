// The shm path's source: each tensor's bytes lie in a registered arena (a
// sealed memfd, mapped read-only once for its registration) at an offset,
// handed to the writer window by window straight from that mapping: the
// bytes are stable() until the save ends, since the trainer may not touch
// an arena between SaveShared and the save's outcome. With progressive
// staging, a u64 counter in an arena says how many bytes the trainer has
// copied in so far; each window is read only once the counter covers it.
// Holds its own references to the arenas, so a save outlives the trainer's
// connection. Thread-compatible.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/ingest/arena_registry.h"
#include "daemon/ingest/tensor_source.h"

namespace ckptd::ingest {

// Where one tensor's bytes lie.
struct ArenaRegion {
  std::shared_ptr<const Arena> arena;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

class ArenaSource final : public TensorSource {
 public:
  static constexpr size_t kWindowBytes = 16 << 20;  // arena bytes handed to the writer at a time

  // INVALID_ARGUMENT naming the tensor when a region is not inside its arena
  // (overflow-safe), or the counter is not an 8-byte aligned u64 inside its arena.
  // `names` label the regions in messages.
  static absl::StatusOr<std::unique_ptr<ArenaSource>> Create(
      std::vector<ArenaRegion> regions, const std::vector<std::string>& names,
      std::optional<ArenaRegion> progress, std::chrono::milliseconds staging_timeout);

  std::string_view transport() const override { return "shm"; }
  bool stable() const override { return true; }
  // DEADLINE_EXCEEDED when a progress counter stops advancing for the timeout.
  absl::Status CopyTo(const ByteWriter& write) override;
  // Regions of immutable arenas whose digests an earlier save computed.
  std::vector<std::optional<gguf::Digest128>> KnownDigests() const override;
  void Learn(std::span<const gguf::Digest128> digests) override;
  bool progressive() const { return progress_.has_value(); }
  const std::vector<ArenaRegion>& regions() const { return regions_; }

 private:
  ArenaSource(std::vector<ArenaRegion> regions, std::optional<ArenaRegion> progress,
              std::chrono::milliseconds timeout)
      : regions_(std::move(regions)), progress_(std::move(progress)), timeout_(timeout) {}
  absl::Status WaitStaged(const std::string_view& counter, uint64_t needed, uint64_t total) const;

  std::vector<ArenaRegion> regions_;
  std::optional<ArenaRegion> progress_;
  std::chrono::milliseconds timeout_;
};

}  // namespace ckptd::ingest
