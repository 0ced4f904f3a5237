// Retention: which checkpoints to keep and why. A pure function of the
// catalog, the policy, pins, what is in flight and the clock; the executor
// (scheduler/) only deletes what this returns as deletable.
//
// Rules combine as "keep if any rule keeps it". Never deleted, whatever the
// rules: the target of `latest`, a pinned checkpoint, one being written.
// max_bytes then deletes the oldest remaining unprotected checkpoints (even
// ones a rule kept) until the run fits its budget. A policy with no rule set
// keeps everything.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace ckptd::policy {

enum class MetricMode { kMin, kMax };
// What keep_best does with a checkpoint that lacks the metric.
enum class MissingMetric { kIgnore, kKeep };

struct RetentionPolicy {
  uint32_t keep_last = 0;         // the N newest steps
  uint64_t keep_every_steps = 0;  // permanent keepers: steps divisible by K
  uint32_t keep_best = 0;         // the N best by `metric`
  std::string metric = "loss";
  MetricMode mode = MetricMode::kMin;
  MissingMetric missing_metric = MissingMetric::kIgnore;
  double keep_time_interval_seconds = 0;  // at most one (the newest) per interval...
  double keep_time_window_seconds = 0;    // ...among checkpoints this young; 0 = all ages
  uint64_t max_bytes = 0;                 // per-run budget; 0 = none
  friend bool operator==(const RetentionPolicy&, const RetentionPolicy&) = default;
};

bool HasAnyRule(const RetentionPolicy& p);
std::string Describe(const RetentionPolicy& p);

struct CheckpointFacts {
  uint64_t step = 0;
  uint64_t bytes = 0;              // model + train files
  double time_s = 0;               // commit time, seconds since the epoch
  std::optional<double> metric;    // the policy's metric, when the checkpoint has it
  std::optional<std::string> pin;  // pin reason, when pinned
};

struct RetentionInputs {
  std::vector<CheckpointFacts> checkpoints;  // any order
  std::optional<uint64_t> latest_step;
  std::set<uint64_t> in_flight;
  double now_s = 0;
};

struct RetentionDecision {
  uint64_t step = 0;
  bool keep = true;
  std::string reason;  // "latest", "pinned: eval-2026-11", "keep_last=3", "beyond keep_last=3"...
  uint64_t bytes = 0;
  friend bool operator==(const RetentionDecision&, const RetentionDecision&) = default;
};

// One decision per checkpoint, ascending by step.
std::vector<RetentionDecision> PlanRetention(const RetentionPolicy& policy,
                                             const RetentionInputs& in);

// Disk guard: the filesystem should keep min_free_bytes and min_free_percent
// free after a save. Returns how many bytes must be freed first (0: none).
// What a save does when the guard needs room: kRefuse frees only what the
// retention policy drops anyway and otherwise refuses the save (a checkpoint
// the policy keeps is never deleted for space); kPruneOldest (an explicit
// opt-in) also deletes the oldest unprotected checkpoints.
enum class OnFull { kRefuse, kPruneOldest };
struct DiskGuard {
  uint64_t min_free_bytes = 0;
  double min_free_percent = 0;
  OnFull on_full = OnFull::kRefuse;
  friend bool operator==(const DiskGuard&, const DiskGuard&) = default;
};
uint64_t BytesToFree(const DiskGuard& guard, uint64_t free_bytes, uint64_t total_bytes,
                     uint64_t incoming_bytes);
// What the guard keeps free on a filesystem of `total_bytes`: the larger of
// min_free_bytes and min_free_percent of it (rounded up).
uint64_t GuardKeepsFree(const DiskGuard& g, uint64_t total_bytes);

}  // namespace ckptd::policy
