// The step every rank restores.
#include "daemon/policy/restore_agreement.h"

#include <map>

#include "daemon/base/strings.h"

namespace ckptd::policy {

Agreement AgreeOnStep(uint32_t world_size, const std::vector<AvailabilityReport>& reports) {
  Agreement out;
  std::map<uint32_t, const AvailabilityReport*> by_rank;
  for (const AvailabilityReport& r : reports) {
    if (r.world_size != world_size) {
      out.state = AgreementState::kConflict;
      out.reason = StrCat("rank ", r.rank, " reported a world of ", r.world_size,
                          " ranks, this run has ", world_size);
      return out;
    }
    if (r.rank >= world_size) {
      out.state = AgreementState::kConflict;
      out.reason = StrCat("a report names rank ", r.rank, " of a world of ", world_size);
      return out;
    }
    if (!by_rank.emplace(r.rank, &r).second) {
      out.state = AgreementState::kConflict;
      out.reason = StrCat("rank ", r.rank, " reported twice");
      return out;
    }
  }
  for (uint32_t rank = 0; rank < world_size; ++rank) {
    if (!by_rank.contains(rank)) out.missing.push_back(rank);
  }
  if (!out.missing.empty() || world_size == 0) return out;
  // The newest step of rank 0's that every other rank holds too.
  const std::set<uint64_t>& first = by_rank.begin()->second->steps;
  for (auto it = first.rbegin(); it != first.rend(); ++it) {
    bool everywhere = true;
    for (const auto& [rank, r] : by_rank) everywhere = everywhere && r->steps.contains(*it);
    if (everywhere) {
      out.state = AgreementState::kAgreed;
      out.step = *it;
      return out;
    }
  }
  bool any = false;
  for (const auto& [rank, r] : by_rank) any = any || !r->steps.empty();
  if (!any) {
    out.state = AgreementState::kEmpty;
    return out;
  }
  out.state = AgreementState::kNone;
  out.reason = "no step is held by every rank:";
  for (const auto& [rank, r] : by_rank) {
    StrAppend(&out.reason, " rank ", rank, " ",
              r->steps.empty() ? std::string("has none")
                               : StrCat("has ", r->steps.size(), " (newest ", *r->steps.rbegin(),
                                        ", oldest ", *r->steps.begin(), ")"));
    if (rank + 1 < world_size) out.reason += ";";
  }
  return out;
}

}  // namespace ckptd::policy
