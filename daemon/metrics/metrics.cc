// Prometheus counters and histograms.
#include "daemon/metrics/metrics.h"

#include <fmt/format.h>

#include <array>

namespace ckptd::metrics {
namespace {

constexpr std::array<double, 12> kDurationBounds = {0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                                    2.5,  5,    10,  30,   60,  300};

}  // namespace

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

Metrics& Metrics::Get() {
  static Metrics* m = new Metrics();
  return *m;
}

void Metrics::CountSave(const std::string& run, const std::string& result) {
  std::lock_guard lock(mu_);
  saves_[{run, result}]++;
}

void Metrics::RecordCommit(const std::string& run, uint64_t bytes, double seconds) {
  std::lock_guard lock(mu_);
  written_bytes_[run] += bytes;
  Histogram& h = durations_[run];
  h.buckets.resize(kDurationBounds.size());
  for (size_t i = 0; i < kDurationBounds.size(); ++i) {
    if (seconds <= kDurationBounds[i]) h.buckets[i]++;
  }
  h.count++;
  h.sum += seconds;
}

void Metrics::CountDeletion(const std::string& run, const std::string& by) {
  std::lock_guard lock(mu_);
  deletions_[{run, by}]++;
}

void Metrics::AddInFlightBytes(int64_t delta) {
  std::lock_guard lock(mu_);
  in_flight_bytes_ += delta;
}

void Metrics::AddQueued(int delta) {
  std::lock_guard lock(mu_);
  queued_ += delta;
}

std::string Metrics::Render() const {
  std::lock_guard lock(mu_);
  std::string out;
  auto line = [&](const std::string& s) { out += s + "\n"; };
  line("# HELP ckptd_saves_total Saves by run and result (committed, failed, skipped).");
  line("# TYPE ckptd_saves_total counter");
  for (const auto& [k, v] : saves_) {
    line(fmt::format("ckptd_saves_total{{run=\"{}\",result=\"{}\"}} {}", EscapeLabel(k.first),
                     k.second, v));
  }
  line("# HELP ckptd_written_bytes_total Bytes of committed checkpoint files.");
  line("# TYPE ckptd_written_bytes_total counter");
  for (const auto& [run, v] : written_bytes_) {
    line(fmt::format("ckptd_written_bytes_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
  }
  line("# HELP ckptd_save_duration_seconds From a save's header to its commit.");
  line("# TYPE ckptd_save_duration_seconds histogram");
  for (const auto& [run, h] : durations_) {
    const std::string r = EscapeLabel(run);
    for (size_t i = 0; i < kDurationBounds.size(); ++i) {
      line(fmt::format("ckptd_save_duration_seconds_bucket{{run=\"{}\",le=\"{:g}\"}} {}", r,
                       kDurationBounds[i], h.buckets[i]));
    }
    line(
        fmt::format("ckptd_save_duration_seconds_bucket{{run=\"{}\",le=\"+Inf\"}} {}", r, h.count));
    line(fmt::format("ckptd_save_duration_seconds_sum{{run=\"{}\"}} {}", r, h.sum));
    line(fmt::format("ckptd_save_duration_seconds_count{{run=\"{}\"}} {}", r, h.count));
  }
  line(
      "# HELP ckptd_retention_deletions_total Checkpoints deleted, by retention or the disk "
      "guard.");
  line("# TYPE ckptd_retention_deletions_total counter");
  for (const auto& [k, v] : deletions_) {
    line(fmt::format("ckptd_retention_deletions_total{{run=\"{}\",by=\"{}\"}} {}",
                     EscapeLabel(k.first), k.second, v));
  }
  line("# HELP ckptd_in_flight_bytes Tensor bytes of saves being written.");
  line("# TYPE ckptd_in_flight_bytes gauge");
  line(fmt::format("ckptd_in_flight_bytes {}", in_flight_bytes_));
  line("# HELP ckptd_save_queue_depth Saves waiting for their run's save slot.");
  line("# TYPE ckptd_save_queue_depth gauge");
  line(fmt::format("ckptd_save_queue_depth {}", queued_));
  return out;
}

}  // namespace ckptd::metrics
