// Prometheus counters and histograms.
#include "daemon/metrics/metrics.h"

#include <fmt/format.h>

#include <array>
#include <initializer_list>
#include <map>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

namespace ckptd::metrics {
namespace {

constexpr std::array<double, 12> kDurationBounds = {0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                                    2.5,  5,    10,  30,   60,  300};
constexpr std::array<double, 12> kStallBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                 0.1,   0.25,   0.5,   1,    2.5,   10};

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
  absl::MutexLock lock(&mu_);
  saves_[{run, result}]++;
}

void Metrics::RecordCommit(const std::string& run, uint64_t bytes, uint64_t zero_copy_bytes,
                           uint64_t shared_bytes, double seconds) {
  absl::MutexLock lock(&mu_);
  written_bytes_[run] += bytes;
  zero_copy_bytes_[run] += zero_copy_bytes;
  reflink_bytes_[run] += shared_bytes;
  durations_[run].Observe(kDurationBounds, seconds);
}

void Metrics::AddKnownDigestBytes(const std::string& run, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  known_digest_bytes_[run] += bytes;
}

void Metrics::AddArenas(int64_t delta) {
  absl::MutexLock lock(&mu_);
  arenas_ += delta;
}

void Metrics::AddSharedQueued(int64_t delta) {
  absl::MutexLock lock(&mu_);
  shared_queued_ += delta;
}

void Metrics::RecordUpload(const std::string& run, uint64_t bytes, uint64_t copied,
                           double seconds) {
  absl::MutexLock lock(&mu_);
  uploaded_bytes_[run] += bytes;
  copied_bytes_[run] += copied;
  upload_seconds_[run] += seconds;
  uploads_[{run, "uploaded"}]++;
}

void Metrics::CountUploadFailure(const std::string& run) {
  absl::MutexLock lock(&mu_);
  uploads_[{run, "failed"}]++;
}

void Metrics::RecordReplicaIn(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  peers_on_ = true;
  replica_in_bytes_ += bytes;
  replicas_in_++;
}

void Metrics::RecordReplicaOut(const std::string& peer, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  peers_on_ = true;
  replica_out_bytes_[peer] += bytes;
  replica_sends_[{peer, "sent"}]++;
}

void Metrics::CountReplicaSend(const std::string& peer, const std::string& result) {
  absl::MutexLock lock(&mu_);
  peers_on_ = true;
  replica_sends_[{peer, result}]++;
}

void Metrics::SetPeerLag(const std::string& run, const std::string& peer, uint64_t steps) {
  absl::MutexLock lock(&mu_);
  peers_on_ = true;
  peer_lag_[{run, peer}] = steps;
}

void Metrics::SetTier(int64_t queue_depth, bool healthy) {
  absl::MutexLock lock(&mu_);
  tier_on_ = true;
  tier_queue_depth_ = queue_depth;
  tier_healthy_ = healthy;
}

void Metrics::RecordTrainerStall(const std::string& run, double seconds) {
  absl::MutexLock lock(&mu_);
  stalls_[run].Observe(kStallBounds, seconds);
}

namespace {

// One metric family: its HELP and TYPE lines, then a sample per entry of
// `values`, keyed by the value of its one label (a map keyed by string) or
// of its two labels (keyed by a pair); no labels: one sample, unlabelled.
std::string MetricLabels(std::span<const std::string_view> names, const std::string& first,
                         const std::string* second) {
  if (names.empty()) return "";
  std::string out = fmt::format("{{{}=\"{}\"", names[0], EscapeLabel(first));
  if (second != nullptr && names.size() > 1) {
    out += fmt::format(",{}=\"{}\"", names[1], EscapeLabel(*second));
  }
  return out + "}";
}

template <typename Key, typename V>
void RenderFamily(std::string_view name, std::string_view type, std::string_view help,
                  std::initializer_list<std::string_view> labels, const std::map<Key, V>& values,
                  std::string* out) {
  const std::vector<std::string_view> names(labels);
  *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  for (const auto& [key, value] : values) {
    if constexpr (std::is_same_v<Key, std::string>) {
      *out += fmt::format("{}{} {}\n", name, MetricLabels(names, key, nullptr), value);
    } else {
      *out += fmt::format("{}{} {}\n", name, MetricLabels(names, key.first, &key.second), value);
    }
  }
}

}  // namespace

void Metrics::Histogram::Observe(std::span<const double> bounds, double value) {
  buckets.resize(bounds.size());
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (value <= bounds[i]) buckets[i]++;
  }
  count++;
  sum += value;
}

void Metrics::RenderHistogram(const std::string& name, const std::string& help,
                              std::span<const double> bounds,
                              const std::map<std::string, Histogram>& by_run, std::string* out) {
  auto line = [&](const std::string& s) { *out += s + "\n"; };
  line(fmt::format("# HELP {} {}", name, help));
  line(fmt::format("# TYPE {} histogram", name));
  for (const auto& [run, h] : by_run) {
    const std::string r = EscapeLabel(run);
    for (size_t i = 0; i < bounds.size(); ++i) {
      line(fmt::format("{}_bucket{{run=\"{}\",le=\"{:g}\"}} {}", name, r, bounds[i], h.buckets[i]));
    }
    line(fmt::format("{}_bucket{{run=\"{}\",le=\"+Inf\"}} {}", name, r, h.count));
    line(fmt::format("{}_sum{{run=\"{}\"}} {}", name, r, h.sum));
    line(fmt::format("{}_count{{run=\"{}\"}} {}", name, r, h.count));
  }
}

void Metrics::CountDeletion(const std::string& run, const std::string& by) {
  absl::MutexLock lock(&mu_);
  deletions_[{run, by}]++;
}

void Metrics::CountQuarantined(const std::string& run, const std::string& by) {
  absl::MutexLock lock(&mu_);
  quarantined_[{run, by}]++;
}

void Metrics::CountDiskGuardRefusal(const std::string& run) {
  absl::MutexLock lock(&mu_);
  guard_refusals_[run]++;
}

void Metrics::CountRemoteRepair(const std::string& run) {
  absl::MutexLock lock(&mu_);
  remote_repairs_[run]++;
}

void Metrics::AddInFlightBytes(int64_t delta) {
  absl::MutexLock lock(&mu_);
  in_flight_bytes_ += delta;
}

void Metrics::AddQueued(int delta) {
  absl::MutexLock lock(&mu_);
  queued_ += delta;
}

std::string Metrics::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  const auto by_run = [&](std::string_view name, std::string_view type, std::string_view help,
                          const auto& values) {
    RenderFamily(name, type, help, {"run"}, values, &out);
  };
  const auto by_run_and = [&](std::string_view name, std::string_view type, std::string_view help,
                              std::string_view second, const auto& values) {
    RenderFamily(name, type, help, {"run", second}, values, &out);
  };
  const auto scalar = [&](std::string_view name, std::string_view type, std::string_view help,
                          auto value) {
    RenderFamily(name, type, help, {}, std::map<std::string, decltype(value)>{{"", value}}, &out);
  };
  by_run_and("ckptd_saves_total", "counter",
             "Saves by run and result (committed, failed, skipped).", "result", saves_);
  by_run("ckptd_written_bytes_total", "counter", "Bytes of committed checkpoint files.",
         written_bytes_);
  by_run("ckptd_zero_copy_bytes_total", "counter",
         "Of the written bytes, those written to disk straight from a trainer's shared-memory "
         "arena (no copy in the daemon).",
         zero_copy_bytes_);
  by_run("ckptd_reflink_bytes_total", "counter",
         "Of the written bytes, those shared with the run's previous checkpoint (unchanged "
         "tensors, reflinked) instead of written.",
         reflink_bytes_);
  by_run("ckptd_digest_known_bytes_total", "counter",
         "Tensor bytes whose digest was not computed again: regions of arenas sealed against "
         "writes, hashed by an earlier save.",
         known_digest_bytes_);
  RenderHistogram("ckptd_save_duration_seconds", "From a save's header to its commit.",
                  kDurationBounds, durations_, &out);
  RenderHistogram("ckptd_trainer_stall_seconds",
                  "Time a trainer was blocked staging a shared-memory save (waiting for a free "
                  "arena and copying), as reported by the client.",
                  kStallBounds, stalls_, &out);
  by_run_and("ckptd_retention_deletions_total", "counter",
             "Checkpoints deleted, by retention or the disk guard.", "by", deletions_);
  by_run_and("ckptd_quarantined_files_total", "counter",
             "Files moved to a run's quarantine/ (damaged, or not belonging to their "
             "checkpoint), by recovery or the scrubber.",
             "by", quarantined_);
  by_run("ckptd_remote_repairs_total", "counter",
         "Steps uploaded again from intact local files because the object store's copy was "
         "missing or failed its digests.",
         remote_repairs_);
  by_run("ckptd_disk_guard_refusals_total", "counter",
         "Saves refused because the disk guard could not make room.", guard_refusals_);
  scalar("ckptd_in_flight_bytes", "gauge", "Tensor bytes of saves being written.",
         in_flight_bytes_);
  scalar("ckptd_save_queue_depth", "gauge", "Saves waiting for their run's save slot.", queued_);
  scalar("ckptd_shm_arenas", "gauge", "Shared-memory arenas registered by trainers.", arenas_);
  scalar("ckptd_shm_queued_saves", "gauge",
         "Accepted shared-memory saves not yet committed or failed.", shared_queued_);
  if (peers_on_) {
    scalar("ckptd_peer_received_bytes_total", "counter",
           "Bytes of replicas taken from peers and held.", replica_in_bytes_);
    scalar("ckptd_peer_replicas_received_total", "counter", "Replicas taken from peers and held.",
           replicas_in_);
    RenderFamily("ckptd_peer_sent_bytes_total", "counter", "Bytes of replicas sent to each peer.",
                 {"peer"}, replica_out_bytes_, &out);
    RenderFamily("ckptd_peer_sends_total", "counter",
                 "Replicas sent to each peer by result (sent, failed, superseded by a newer step "
                 "before it was sent).",
                 {"peer", "result"}, replica_sends_, &out);
    by_run_and("ckptd_peer_lag_steps", "gauge",
               "The run's newest step minus the newest step the peer holds.", "peer", peer_lag_);
  }
  if (tier_on_) {
    by_run("ckptd_tier_uploaded_bytes_total", "counter", "Bytes copied to the object store.",
           uploaded_bytes_);
    by_run("ckptd_tier_copied_bytes_total", "counter",
           "Of the uploaded bytes, those copied inside the store from the previous step's "
           "objects (unchanged tensors) rather than sent.",
           copied_bytes_);
    by_run("ckptd_tier_upload_seconds_total", "counter", "Seconds spent uploading steps.",
           upload_seconds_);
    by_run_and("ckptd_tier_uploads_total", "counter", "Step uploads by result (uploaded, failed).",
               "result", uploads_);
    scalar("ckptd_tier_queue_depth", "gauge", "Committed steps waiting for their upload.",
           tier_queue_depth_);
    scalar("ckptd_tier_healthy", "gauge",
           "1 while the object store takes uploads, 0 while they fail.", tier_healthy_ ? 1 : 0);
  }
  return out;
}

}  // namespace ckptd::metrics
