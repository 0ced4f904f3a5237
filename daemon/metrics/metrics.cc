// Prometheus counters and histograms.
#include "daemon/metrics/metrics.h"

#include <fmt/format.h>

#include <array>

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
  line(
      "# HELP ckptd_zero_copy_bytes_total Of the written bytes, those written to disk straight "
      "from a trainer's shared-memory arena (no copy in the daemon).");
  line("# TYPE ckptd_zero_copy_bytes_total counter");
  for (const auto& [run, v] : zero_copy_bytes_) {
    line(fmt::format("ckptd_zero_copy_bytes_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
  }
  line(
      "# HELP ckptd_reflink_bytes_total Of the written bytes, those shared with the run's "
      "previous checkpoint (unchanged tensors, reflinked) instead of written.");
  line("# TYPE ckptd_reflink_bytes_total counter");
  for (const auto& [run, v] : reflink_bytes_) {
    line(fmt::format("ckptd_reflink_bytes_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
  }
  line(
      "# HELP ckptd_digest_known_bytes_total Tensor bytes whose digest was not computed again: "
      "regions of arenas sealed against writes, hashed by an earlier save.");
  line("# TYPE ckptd_digest_known_bytes_total counter");
  for (const auto& [run, v] : known_digest_bytes_) {
    line(fmt::format("ckptd_digest_known_bytes_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
  }
  RenderHistogram("ckptd_save_duration_seconds", "From a save's header to its commit.",
                  kDurationBounds, durations_, &out);
  RenderHistogram("ckptd_trainer_stall_seconds",
                  "Time a trainer was blocked staging a shared-memory save (waiting for a free "
                  "arena and copying), as reported by the client.",
                  kStallBounds, stalls_, &out);
  line(
      "# HELP ckptd_retention_deletions_total Checkpoints deleted, by retention or the disk "
      "guard.");
  line("# TYPE ckptd_retention_deletions_total counter");
  for (const auto& [k, v] : deletions_) {
    line(fmt::format("ckptd_retention_deletions_total{{run=\"{}\",by=\"{}\"}} {}",
                     EscapeLabel(k.first), k.second, v));
  }
  line(
      "# HELP ckptd_quarantined_files_total Files moved to a run's quarantine/ (damaged, or not "
      "belonging to their checkpoint), by recovery or the scrubber.");
  line("# TYPE ckptd_quarantined_files_total counter");
  for (const auto& [k, v] : quarantined_) {
    line(fmt::format("ckptd_quarantined_files_total{{run=\"{}\",by=\"{}\"}} {}",
                     EscapeLabel(k.first), k.second, v));
  }
  line(
      "# HELP ckptd_remote_repairs_total Steps uploaded again from intact local files because "
      "the object store's copy was missing or failed its digests.");
  line("# TYPE ckptd_remote_repairs_total counter");
  for (const auto& [run, v] : remote_repairs_) {
    line(fmt::format("ckptd_remote_repairs_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
  }
  line(
      "# HELP ckptd_disk_guard_refusals_total Saves refused because the disk guard could not "
      "make room.");
  line("# TYPE ckptd_disk_guard_refusals_total counter");
  for (const auto& [run, v] : guard_refusals_) {
    line(fmt::format("ckptd_disk_guard_refusals_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
  }
  line("# HELP ckptd_in_flight_bytes Tensor bytes of saves being written.");
  line("# TYPE ckptd_in_flight_bytes gauge");
  line(fmt::format("ckptd_in_flight_bytes {}", in_flight_bytes_));
  line("# HELP ckptd_save_queue_depth Saves waiting for their run's save slot.");
  line("# TYPE ckptd_save_queue_depth gauge");
  line(fmt::format("ckptd_save_queue_depth {}", queued_));
  line("# HELP ckptd_shm_arenas Shared-memory arenas registered by trainers.");
  line("# TYPE ckptd_shm_arenas gauge");
  line(fmt::format("ckptd_shm_arenas {}", arenas_));
  line("# HELP ckptd_shm_queued_saves Accepted shared-memory saves not yet committed or failed.");
  line("# TYPE ckptd_shm_queued_saves gauge");
  line(fmt::format("ckptd_shm_queued_saves {}", shared_queued_));
  if (peers_on_) {
    line("# HELP ckptd_peer_received_bytes_total Bytes of replicas taken from peers and held.");
    line("# TYPE ckptd_peer_received_bytes_total counter");
    line(fmt::format("ckptd_peer_received_bytes_total {}", replica_in_bytes_));
    line("# HELP ckptd_peer_replicas_received_total Replicas taken from peers and held.");
    line("# TYPE ckptd_peer_replicas_received_total counter");
    line(fmt::format("ckptd_peer_replicas_received_total {}", replicas_in_));
    line("# HELP ckptd_peer_sent_bytes_total Bytes of replicas sent to each peer.");
    line("# TYPE ckptd_peer_sent_bytes_total counter");
    for (const auto& [peer, v] : replica_out_bytes_) {
      line(fmt::format("ckptd_peer_sent_bytes_total{{peer=\"{}\"}} {}", EscapeLabel(peer), v));
    }
    line(
        "# HELP ckptd_peer_sends_total Replicas sent to each peer by result (sent, failed, "
        "superseded by a newer step before it was sent).");
    line("# TYPE ckptd_peer_sends_total counter");
    for (const auto& [k, v] : replica_sends_) {
      line(fmt::format("ckptd_peer_sends_total{{peer=\"{}\",result=\"{}\"}} {}",
                       EscapeLabel(k.first), k.second, v));
    }
    line(
        "# HELP ckptd_peer_lag_steps The run's newest step minus the newest step the peer "
        "holds.");
    line("# TYPE ckptd_peer_lag_steps gauge");
    for (const auto& [k, v] : peer_lag_) {
      line(fmt::format("ckptd_peer_lag_steps{{run=\"{}\",peer=\"{}\"}} {}", EscapeLabel(k.first),
                       EscapeLabel(k.second), v));
    }
  }
  if (tier_on_) {
    line("# HELP ckptd_tier_uploaded_bytes_total Bytes copied to the object store.");
    line("# TYPE ckptd_tier_uploaded_bytes_total counter");
    for (const auto& [run, v] : uploaded_bytes_) {
      line(fmt::format("ckptd_tier_uploaded_bytes_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
    }
    line(
        "# HELP ckptd_tier_copied_bytes_total Of the uploaded bytes, those copied inside the "
        "store from the previous step's objects (unchanged tensors) rather than sent.");
    line("# TYPE ckptd_tier_copied_bytes_total counter");
    for (const auto& [run, v] : copied_bytes_) {
      line(fmt::format("ckptd_tier_copied_bytes_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
    }
    line("# HELP ckptd_tier_upload_seconds_total Seconds spent uploading steps.");
    line("# TYPE ckptd_tier_upload_seconds_total counter");
    for (const auto& [run, v] : upload_seconds_) {
      line(fmt::format("ckptd_tier_upload_seconds_total{{run=\"{}\"}} {}", EscapeLabel(run), v));
    }
    line("# HELP ckptd_tier_uploads_total Step uploads by result (uploaded, failed).");
    line("# TYPE ckptd_tier_uploads_total counter");
    for (const auto& [k, v] : uploads_) {
      line(fmt::format("ckptd_tier_uploads_total{{run=\"{}\",result=\"{}\"}} {}",
                       EscapeLabel(k.first), k.second, v));
    }
    line("# HELP ckptd_tier_queue_depth Committed steps waiting for their upload.");
    line("# TYPE ckptd_tier_queue_depth gauge");
    line(fmt::format("ckptd_tier_queue_depth {}", tier_queue_depth_));
    line("# HELP ckptd_tier_healthy 1 while the object store takes uploads, 0 while they fail.");
    line("# TYPE ckptd_tier_healthy gauge");
    line(fmt::format("ckptd_tier_healthy {}", tier_healthy_ ? 1 : 0));
  }
  return out;
}

}  // namespace ckptd::metrics
