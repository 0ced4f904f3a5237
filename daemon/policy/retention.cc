// The retention planner and the disk guard arithmetic.
#include "daemon/policy/retention.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace ckptd::policy {

bool HasAnyRule(const RetentionPolicy& p) {
  return p.keep_last > 0 || p.keep_every_steps > 0 || p.keep_best > 0 ||
         p.keep_time_interval_seconds > 0 || p.max_bytes > 0;
}

std::string Describe(const RetentionPolicy& p) {
  std::vector<std::string> parts;
  if (p.keep_last) parts.push_back(fmt::format("keep_last={}", p.keep_last));
  if (p.keep_every_steps) parts.push_back(fmt::format("keep_every_steps={}", p.keep_every_steps));
  if (p.keep_best) {
    parts.push_back(fmt::format("keep_best={} by {} ({})", p.keep_best, p.metric,
                                p.mode == MetricMode::kMin ? "min" : "max"));
  }
  if (p.keep_time_interval_seconds > 0) {
    parts.push_back(fmt::format("keep_time_interval={:g}s{}", p.keep_time_interval_seconds,
                                p.keep_time_window_seconds > 0
                                    ? fmt::format(" within {:g}s", p.keep_time_window_seconds)
                                    : ""));
  }
  if (p.max_bytes) parts.push_back(fmt::format("max_bytes={}", p.max_bytes));
  return parts.empty() ? "keep everything (no retention rule)"
                       : fmt::format("{}", fmt::join(parts, ", "));
}

std::vector<RetentionDecision> PlanRetention(const RetentionPolicy& p, const RetentionInputs& in) {
  std::vector<CheckpointFacts> cps = in.checkpoints;
  std::sort(cps.begin(), cps.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  const size_t n = cps.size();
  std::vector<RetentionDecision> out(n);
  std::vector<bool> is_protected(n, false), kept(n, false);
  for (size_t i = 0; i < n; ++i) out[i] = {cps[i].step, true, "", cps[i].bytes};
  auto keep = [&](size_t i, const std::string& why) {
    if (!kept[i]) out[i].reason = why;
    kept[i] = true;
  };
  // Protections first: their reason wins.
  for (size_t i = 0; i < n; ++i) {
    if (in.latest_step == cps[i].step) {
      keep(i, "latest");
    } else if (cps[i].pin) {
      keep(i, "pinned: " + *cps[i].pin);
    } else if (in.in_flight.count(cps[i].step)) {
      keep(i, "in flight");
    }
    is_protected[i] = kept[i];
  }
  if (!HasAnyRule(p)) {
    for (size_t i = 0; i < n; ++i) keep(i, "no retention rule");
    return out;
  }
  if (p.keep_last > 0) {
    for (size_t i = n > p.keep_last ? n - p.keep_last : 0; i < n; ++i) {
      keep(i, fmt::format("keep_last={}", p.keep_last));
    }
  }
  if (p.keep_every_steps > 0) {
    for (size_t i = 0; i < n; ++i) {
      if (cps[i].step % p.keep_every_steps == 0) {
        keep(i, fmt::format("keep_every_steps={}", p.keep_every_steps));
      }
    }
  }
  if (p.keep_best > 0) {
    std::vector<size_t> ranked;
    for (size_t i = 0; i < n; ++i) {
      if (cps[i].metric && !std::isnan(*cps[i].metric)) {
        ranked.push_back(i);
      } else if (p.missing_metric == MissingMetric::kKeep) {
        keep(i, fmt::format("no {} metric (keep_best keeps those)", p.metric));
      }
    }
    // Best first; on a tie the newer step ranks higher.
    std::sort(ranked.begin(), ranked.end(), [&](size_t a, size_t b) {
      double va = *cps[a].metric, vb = *cps[b].metric;
      if (va != vb) return p.mode == MetricMode::kMin ? va < vb : va > vb;
      return cps[a].step > cps[b].step;
    });
    for (size_t r = 0; r < ranked.size() && r < p.keep_best; ++r) {
      size_t i = ranked[r];
      keep(i, fmt::format("keep_best={} ({}={:g})", p.keep_best, p.metric, *cps[i].metric));
    }
  }
  if (p.keep_time_interval_seconds > 0) {
    std::map<int64_t, size_t> newest_in_bucket;
    for (size_t i = 0; i < n; ++i) {
      if (p.keep_time_window_seconds > 0 && in.now_s - cps[i].time_s > p.keep_time_window_seconds) {
        continue;
      }
      auto bucket = static_cast<int64_t>(std::floor(cps[i].time_s / p.keep_time_interval_seconds));
      auto [it, fresh] = newest_in_bucket.emplace(bucket, i);
      if (!fresh && cps[i].time_s >= cps[it->second].time_s) it->second = i;
    }
    for (const auto& [bucket, i] : newest_in_bucket) {
      keep(i, fmt::format("keep_time_interval={:g}s", p.keep_time_interval_seconds));
    }
  }
  const std::string why_not = fmt::format("not kept by {}", Describe(p));
  for (size_t i = 0; i < n; ++i) {
    if (!kept[i]) out[i] = {cps[i].step, false, why_not, cps[i].bytes};
  }
  if (p.max_bytes > 0) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; ++i) total += out[i].keep ? cps[i].bytes : 0;
    for (size_t i = 0; i < n && total > p.max_bytes; ++i) {
      if (!out[i].keep || is_protected[i]) continue;
      out[i].keep = false;
      out[i].reason =
          fmt::format("over max_bytes={} (oldest first; was {})", p.max_bytes, out[i].reason);
      total -= cps[i].bytes;
    }
  }
  return out;
}

uint64_t GuardKeepsFree(const DiskGuard& g, uint64_t total_bytes) {
  const auto percent = static_cast<uint64_t>(
      std::ceil(g.min_free_percent / 100.0 * static_cast<double>(total_bytes)));
  return std::max(g.min_free_bytes, percent);
}

uint64_t BytesToFree(const DiskGuard& g, uint64_t free_bytes, uint64_t total_bytes,
                     uint64_t incoming_bytes) {
  const uint64_t want_free = GuardKeepsFree(g, total_bytes) + incoming_bytes;
  return want_free > free_bytes ? want_free - free_bytes : 0;
}

}  // namespace ckptd::policy
