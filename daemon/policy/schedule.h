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
  // The memory tier: steps divisible by it that the rules above do not make
  // disk steps are kept in memory (0 = off). Not a rule for IsDue.
  uint64_t memory_every_steps = 0;
  uint32_t memory_keep_last = 0;  // memory steps kept per run; 0 = the daemon's default
  // The daemon picks the memory interval: the most frequent that keeps the
  // trainer's save stall within memory_overhead_budget of its step time
  // (AutoMemoryInterval); memory_every_steps is the interval until both are
  // measured (0 = 10).
  bool memory_auto = false;
  double memory_overhead_budget = 0;  // 0 = 0.01
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

// Is step N a memory step? Asked only when IsDue said no: due when the
// memory tier is on, N is a positive multiple of memory_every_steps and N
// is above `last`, the highest step saved in any tier.
Decision IsMemoryDue(const Schedule& schedule, std::optional<uint64_t> last, uint64_t step);

// `auto`: the smallest interval N (most frequent memory steps) with
// stall_s / N <= budget * step_s, i.e. ceil(stall / (budget x step)), at
// least 1; nullopt until both are measured (> 0). budget 0 = 0.01.
std::optional<uint64_t> AutoMemoryInterval(double stall_s, double step_s, double budget);

// How often the disk schedule is expected to commit, in seconds: the
// smaller of every_seconds and every_steps x the measured time per step,
// of those set (and measured: step_s > 0); nullopt when neither applies
// (at_steps only, forced saves only, or steps not measured yet). What the
// checkpoint-overdue alert compares the time since the last commit with.
std::optional<double> ExpectedCommitInterval(const Schedule& schedule, double step_s);

// Which memory steps to evict after `step` was kept in memory (`held`: the
// run's memory steps, ascending, `step` among them): the oldest beyond
// `keep_last` (at least 1), then the oldest while the bytes held exceed
// `max_bytes` (0 = no cap), never `step` itself.
struct MemoryStep {
  uint64_t step = 0;
  uint64_t bytes = 0;
};
std::vector<uint64_t> MemoryEvictions(const std::vector<MemoryStep>& held, uint64_t step,
                                      uint32_t keep_last, uint64_t max_bytes);

// "every_steps=100, every_seconds=600, at_steps=[5, 10]" or "never (forced saves only)".
std::string Describe(const Schedule& schedule);

}  // namespace ckptd::policy
