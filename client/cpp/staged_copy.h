// The trainer's one copy of a shared-memory save: where each tensor goes in
// an arena, and the copy itself, on several threads, publishing in a u64
// counter how many of the save's bytes are in place (in order) so the
// daemon can write while the trainer copies. No daemon involved.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ckptd/client.h"

namespace ckptd {

// Each tensor's offset in an arena: a page boundary for tensors of 64 KiB
// and more (the daemon, whose files put tensors at 4 KiB boundaries, then
// writes them to disk straight from the arena), 64 bytes for smaller ones.
inline constexpr size_t kArenaTensorAlign = 64;
inline constexpr size_t kArenaPageAlign = 4096;
inline constexpr size_t kArenaPageAlignMin = 64 << 10;
inline constexpr size_t kCopyPiece = 8 << 20;  // unit of work for the copy threads

struct ArenaLayout {
  std::vector<uint64_t> offsets;  // one per tensor (aligned as above), after the counter
  uint64_t bytes = 0;             // arena bytes needed (counter, padding included)
  uint64_t data_bytes = 0;        // the tensors' own bytes
};
// The arena's first 64 bytes hold the progress counter; tensors follow.
ArenaLayout PlanArenaLayout(const std::vector<TensorView>& tensors);

// Copies every tensor to dst + offsets[i] with up to `threads` threads, in
// pieces; `*progress` (release-stored) always counts a prefix of the save's
// bytes that is fully in place, and ends at the total.
void CopyInOrder(char* dst, uint64_t* progress, const std::vector<TensorView>& tensors,
                 const std::vector<uint64_t>& offsets, int threads);

}  // namespace ckptd
