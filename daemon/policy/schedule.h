// Is step N due? A pure function of the run's schedule, what has been
// committed and the clock; the answer carries its reason for logs and RPCs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ckptd::policy {

struct Schedule {
  uint64_t every_steps = 0;        // CHECKPOINT_EVERY: steps > 0 divisible by it
  double every_seconds = 0;        // due once this long has passed since the last commit
  std::vector<uint64_t> at_steps;  // exact steps
  bool final_on_close = true;      // CloseRun's tensors are written
  friend bool operator==(const Schedule&, const Schedule&) = default;
};

struct ScheduleState {
  std::optional<uint64_t> last_step;  // highest committed step
  double reference_time_s = 0;        // last commit, or when the run was opened
};

struct Decision {
  bool due = false;
  std::string reason;
};

Decision IsDue(const Schedule& schedule, const ScheduleState& state, uint64_t step, double now_s);

// "every_steps=100, every_seconds=600, at_steps=[5, 10]" or "never (forced saves only)".
std::string Describe(const Schedule& schedule);

}  // namespace ckptd::policy
