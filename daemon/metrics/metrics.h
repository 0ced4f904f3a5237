// Process-wide Prometheus metrics: counters and histograms keyed by label
// values, rendered in the text exposition format. Gauges that describe
// current state (disk free, last step per run) are computed at scrape time
// by the HTTP layer. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ckptd::metrics {

class Metrics {
 public:
  static Metrics& Get();

  // ckptd_saves_total{run,result}: result is committed | failed | skipped.
  void CountSave(const std::string& run, const std::string& result);
  // ckptd_written_bytes_total{run}, ckptd_reflink_bytes_total{run},
  // ckptd_zero_copy_bytes_total{run} (of
  // those, bytes written to disk straight from a trainer's arena) and
  // ckptd_save_duration_seconds{run}.
  // `shared_bytes`: of `bytes`, those shared with the previous checkpoint
  // (ckptd_reflink_bytes_total{run}).
  void RecordCommit(const std::string& run, uint64_t bytes, uint64_t zero_copy_bytes,
                    uint64_t shared_bytes, double seconds);
  // ckptd_digest_known_bytes_total{run}: tensor bytes not hashed because an
  // immutable arena's region had been hashed before.
  void AddKnownDigestBytes(const std::string& run, uint64_t bytes);
  // ckptd_retention_deletions_total{run,by}: by is retention | disk_guard.
  void CountDeletion(const std::string& run, const std::string& by);
  // ckptd_quarantined_files_total{run,by}: files moved to the run's
  // quarantine/; by is recovery | scrub.
  void CountQuarantined(const std::string& run, const std::string& by);
  // ckptd_remote_repairs_total{run}: steps uploaded again because the
  // object store's copy was missing or failed its digests.
  void CountRemoteRepair(const std::string& run);
  // ckptd_disk_guard_refusals_total{run}: saves refused because the disk
  // guard could not make room (nothing written or deleted).
  void CountDiskGuardRefusal(const std::string& run);
  // ckptd_in_flight_bytes (bytes of saves being written) and
  // ckptd_save_queue_depth (saves waiting for their run's save slot).
  void AddInFlightBytes(int64_t delta);
  void AddQueued(int delta);
  // ckptd_shm_arenas (registered shared-memory arenas) and
  // ckptd_shm_queued_saves (accepted shm saves not yet committed or failed).
  void AddArenas(int64_t delta);
  void AddSharedQueued(int64_t delta);
  // ckptd_trainer_stall_seconds{run}: how long a shm-path trainer was blocked
  // staging a save (waiting for a free arena + copying), as it reports.
  void RecordTrainerStall(const std::string& run, double seconds);

  // The object-storage tier: ckptd_tier_uploaded_bytes_total{run},
  // ckptd_tier_upload_seconds_total{run}, ckptd_tier_uploads_total{run,
  // result} (uploaded | failed), and the gauges ckptd_tier_queue_depth
  // (steps waiting) and ckptd_tier_healthy (0 while uploads fail). Rendered
  // once SetTier was called (the tier is on).
  // `copied`: of `bytes`, those copied inside the store (UploadPartCopy)
  // rather than sent: ckptd_tier_copied_bytes_total{run}.
  void RecordUpload(const std::string& run, uint64_t bytes, uint64_t copied, double seconds);
  void CountUploadFailure(const std::string& run);
  void SetTier(int64_t queue_depth, bool healthy);

  // Peer replication ([peers]), rendered once anything happened:
  // ckptd_peer_received_bytes_total and _replicas_received_total (replicas
  // held for peers), ckptd_peer_sent_bytes_total{peer},
  // ckptd_peer_sends_total{peer,result} (sent | failed | superseded: a
  // newer step of the run replaced it in the queue), and the gauge
  // ckptd_peer_lag_steps{run,peer}: the run's newest step minus the newest
  // the peer acknowledged.
  void RecordReplicaIn(uint64_t bytes);
  void RecordReplicaOut(const std::string& peer, uint64_t bytes);
  void CountReplicaSend(const std::string& peer, const std::string& result);
  void SetPeerLag(const std::string& run, const std::string& peer, uint64_t steps);

  // The text exposition of everything above (HELP and TYPE included).
  std::string Render() const;

 private:
  struct Histogram {
    std::vector<uint64_t> buckets;  // cumulative counts per bound
    uint64_t count = 0;
    double sum = 0;
    void Observe(std::span<const double> bounds, double value);
  };
  static void RenderHistogram(const std::string& name, const std::string& help,
                              std::span<const double> bounds,
                              const std::map<std::string, Histogram>& by_run, std::string* out);
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, uint64_t> saves_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> written_bytes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> zero_copy_bytes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> reflink_bytes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> known_digest_bytes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Histogram> durations_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Histogram> stalls_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, uint64_t> deletions_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, uint64_t> quarantined_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> remote_repairs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> guard_refusals_ ABSL_GUARDED_BY(mu_);
  bool peers_on_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t replica_in_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t replicas_in_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> replica_out_bytes_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, uint64_t> replica_sends_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, uint64_t> peer_lag_ ABSL_GUARDED_BY(mu_);
  int64_t in_flight_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t arenas_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t shared_queued_ ABSL_GUARDED_BY(mu_) = 0;
  bool tier_on_ ABSL_GUARDED_BY(mu_) = false;
  int64_t tier_queue_depth_ ABSL_GUARDED_BY(mu_) = 0;
  bool tier_healthy_ ABSL_GUARDED_BY(mu_) = true;
  std::map<std::string, uint64_t> uploaded_bytes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> copied_bytes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, double> upload_seconds_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, uint64_t> uploads_ ABSL_GUARDED_BY(mu_);
};

// A label value escaped for the text format (backslash, quote, newline).
std::string EscapeLabel(const std::string& v);

}  // namespace ckptd::metrics
