// Which peers a node replicates its memory steps to: the next k nodes after
// it in the ring of every node's [peers] address (wrapping around, never
// itself). Pure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ckptd::policy {

// INVALID_ARGUMENT when `self` is not in `nodes`, a node is listed twice,
// or k is not 1 or 2. Fewer than k peers when the ring is that small.
absl::StatusOr<std::vector<std::string>> RingPeers(const std::vector<std::string>& nodes,
                                                   const std::string& self, uint32_t k);

}  // namespace ckptd::policy
