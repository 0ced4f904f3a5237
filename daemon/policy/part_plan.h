// How a file goes up as a multipart upload when parts of it are already in
// the store: the byte ranges equal to ranges of an object there (the run's
// previous step) are copied inside the store (UploadPartCopy), the rest is
// sent. Pure: the uploader finds the equal ranges (tensors whose digests
// match) and checks every copied part's ETag against its own bytes.
//
// S3's rules shape the plan: every part but the last is at least
// `min_part` (5 MiB), and at most 10,000 parts. An equal range shorter than
// `min_part` is sent; a short stretch to send between two copies takes
// bytes from the copy after it (sent too) until it is long enough. Sent
// stretches go in parts of `part_size`, a short remainder joined to the
// part before it; copies in parts of at most `max_copy`.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace ckptd::policy {

// [offset, offset + length) of the file equals [src_offset, src_offset +
// length) of the source object.
struct SameRange {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t src_offset = 0;
};

struct PlannedPart {
  uint64_t offset = 0;
  uint64_t length = 0;
  std::optional<uint64_t> copy_from;  // the source object's offset: copied, not sent
  friend bool operator==(const PlannedPart&, const PlannedPart&) = default;
};

// The parts of a `size`-byte file, in order, covering it exactly. With no
// usable range it is today's plan: parts of `part_size`, the last shorter.
// `same` may be unsorted and overlap nothing outside [0, size).
std::vector<PlannedPart> PlanParts(uint64_t size, uint64_t part_size, uint64_t min_part,
                                   uint64_t max_copy, std::vector<SameRange> same);

}  // namespace ckptd::policy
