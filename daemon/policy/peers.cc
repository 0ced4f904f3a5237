// Ring-style peer choice.
#include "daemon/policy/peers.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace ckptd::policy {

absl::StatusOr<std::vector<std::string>> RingPeers(const std::vector<std::string>& nodes,
                                                   const std::string& self, uint32_t k) {
  if (k < 1 || k > 2) {
    return absl::InvalidArgumentError(fmt::format("replicas = {}: 1 or 2 peers per step", k));
  }
  std::set<std::string> seen;
  for (const std::string& n : nodes) {
    if (!seen.insert(n).second) {
      return absl::InvalidArgumentError(fmt::format("node '{}' is listed twice", n));
    }
  }
  auto it = std::find(nodes.begin(), nodes.end(), self);
  if (it == nodes.end()) {
    return absl::InvalidArgumentError(
        fmt::format("this node ('{}') is not in the list of nodes", self));
  }
  const size_t i = static_cast<size_t>(it - nodes.begin());
  std::vector<std::string> out;
  for (size_t j = 1; j < nodes.size() && out.size() < k; ++j) {
    out.push_back(nodes[(i + j) % nodes.size()]);
  }
  return out;
}

}  // namespace ckptd::policy
