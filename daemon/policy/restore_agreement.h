// Which step every rank of a multi-rank run restores after a restart: the
// newest step that every rank can get its own part of from some tier (its
// node's memory or disk, a peer's memory, the object store). Pure: each
// rank reports the steps it can get, once per restart (an "attempt"), and
// every rank computes the answer from the same reports, so all ranks take
// the same step without a leader. The I/O is tier/restore_agreement.h.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace ckptd::policy {

// One rank's answer to "which steps can you restore your part of?".
struct AvailabilityReport {
  uint32_t rank = 0;
  uint32_t world_size = 0;
  std::set<uint64_t> steps;
};

enum class AgreementState {
  kWait,      // a rank has not reported yet (`missing`)
  kAgreed,    // `step`: the newest step in every rank's report
  kNone,      // every rank reported and no step is in all reports (`reason`)
  kEmpty,     // every rank reported and none holds any step (a new run)
  kConflict,  // the reports cannot be from one run's ranks (`reason`)
};

// What the daemon says (NOT_FOUND) when every rank reported and none holds
// a step: a new run. Clients tell "nothing to restore" from "no common
// step" by this phrase.
inline constexpr std::string_view kNoStepAnywhere = "no rank holds a step of the run";

struct Agreement {
  AgreementState state = AgreementState::kWait;
  uint64_t step = 0;
  std::string reason;
  std::vector<uint32_t> missing;  // kWait: the ranks not reported yet
};

// `world_size`: the caller's (its run's); `reports` in any order.
Agreement AgreeOnStep(uint32_t world_size, const std::vector<AvailabilityReport>& reports);

}  // namespace ckptd::policy
