// Save schedule decisions.
#include "daemon/policy/schedule.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

namespace ckptd::policy {

Decision IsDue(const Schedule& s, const ScheduleState& state, uint64_t step, double now_s) {
  if (state.last_step && step <= *state.last_step) {
    return {false, fmt::format("not due: step {} is not after the last committed step {}", step,
                               *state.last_step)};
  }
  if (std::find(s.at_steps.begin(), s.at_steps.end(), step) != s.at_steps.end()) {
    return {true, fmt::format("at_steps includes {}", step)};
  }
  if (s.every_steps > 0 && step > 0 && step % s.every_steps == 0) {
    return {true, fmt::format("every_steps={}", s.every_steps)};
  }
  const double elapsed = now_s - state.reference_time_s;
  if (s.every_seconds > 0 && elapsed >= s.every_seconds) {
    return {true, fmt::format("every_seconds={:g} ({:.0f}s since the last checkpoint)",
                              s.every_seconds, elapsed)};
  }
  std::string next;
  if (s.every_steps > 0) {
    next = fmt::format("; next by every_steps at {}", (step / s.every_steps + 1) * s.every_steps);
  }
  if (s.every_seconds > 0) {
    next +=
        fmt::format("; every_seconds={:g} in {:.0f}s", s.every_seconds, s.every_seconds - elapsed);
  }
  return {false, fmt::format("not due under {}{}", Describe(s), next)};
}

Decision IsMemoryDue(const Schedule& s, std::optional<uint64_t> last, uint64_t step) {
  if (s.memory_every_steps == 0) return {false, "not due: the memory tier is off for this run"};
  if (last && step <= *last) {
    return {false,
            fmt::format("not due: step {} is not after the last saved step {}", step, *last)};
  }
  if (step == 0 || step % s.memory_every_steps != 0) {
    return {false, fmt::format("not due under {}; next memory step at {}", Describe(s),
                               (step / s.memory_every_steps + 1) * s.memory_every_steps)};
  }
  return {true, fmt::format("memory_every_steps={}", s.memory_every_steps)};
}

std::optional<uint64_t> AutoMemoryInterval(double stall_s, double step_s, double budget) {
  if (!(stall_s > 0) || !(step_s > 0)) return std::nullopt;
  if (!(budget > 0)) budget = 0.01;
  const double n = std::ceil(stall_s / (budget * step_s) - 1e-9);
  if (n >= 1e12) return uint64_t{1000000000000};
  return std::max<uint64_t>(1, static_cast<uint64_t>(n));
}

std::optional<double> ExpectedCommitInterval(const Schedule& schedule, double step_s) {
  std::optional<double> out;
  if (schedule.every_seconds > 0) out = schedule.every_seconds;
  if (schedule.every_steps > 0 && step_s > 0) {
    const double by_steps = static_cast<double>(schedule.every_steps) * step_s;
    out = out ? std::min(*out, by_steps) : by_steps;
  }
  return out;
}

std::vector<uint64_t> MemoryEvictions(const std::vector<MemoryStep>& held, uint64_t step,
                                      uint32_t keep_last, uint64_t max_bytes) {
  std::vector<uint64_t> out;
  const size_t keep = std::max<uint32_t>(keep_last, 1);
  uint64_t bytes = 0;
  for (const MemoryStep& m : held) bytes += m.bytes;
  size_t left = held.size();
  for (const MemoryStep& m : held) {  // oldest first
    if (m.step == step) continue;
    const bool over_count = left > keep;
    const bool over_bytes = max_bytes > 0 && bytes > max_bytes;
    if (!over_count && !over_bytes) break;
    out.push_back(m.step);
    bytes -= m.bytes;
    --left;
  }
  return out;
}

std::string Describe(const Schedule& s) {
  std::vector<std::string> parts;
  if (s.every_steps > 0) parts.push_back(fmt::format("every_steps={}", s.every_steps));
  if (s.every_seconds > 0) parts.push_back(fmt::format("every_seconds={:g}", s.every_seconds));
  if (!s.at_steps.empty())
    parts.push_back(fmt::format("at_steps=[{}]", fmt::join(s.at_steps, ", ")));
  if (s.memory_auto) {
    parts.push_back(fmt::format("memory_auto (budget {:g})",
                                s.memory_overhead_budget > 0 ? s.memory_overhead_budget : 0.01));
  } else if (s.memory_every_steps > 0) {
    parts.push_back(fmt::format("memory_every_steps={}", s.memory_every_steps));
  }
  if (parts.empty()) return "never (forced saves only)";
  return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace ckptd::policy
