// One save, from its header to its commit: schedule check, per-run
// ordering, overwrite rules, provenance, the disk-space check before any
// data is written, writing as bytes arrive, and the commit. A session that
// is destroyed without Commit() (client gone, bad input) removes its temp
// files and publishes a FAILED event; earlier checkpoints and `latest` stay
// as they were. Not thread-safe; one per save.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/storage/checkpoint_writer.h"

namespace ckptd::scheduler {

enum class SaveKind { kSave, kClose };

struct SaveParams {
  std::string run_id;
  uint64_t step = 0;
  std::map<std::string, double> metrics;
  bool force = false;
  bool overwrite = false;
  std::vector<storage::PlannedTensor> tensors;
  gguf::Metadata train_metadata;
  std::string transport = "grpc-stream";
  SaveKind kind = SaveKind::kSave;
  // Set when the schedule was already consulted (a queued shm save): Begin
  // uses this reason instead of asking the schedule again.
  std::string decided_reason;
};

struct SaveTimings {
  double received_s = 0;
  double durable_s = 0;
  double committed_s = 0;
};

// OK when the run takes saves: opened since the daemon started, not finished
// (run.mu held). FAILED_PRECONDITION naming what to call otherwise.
absl::Status CheckAcceptsSaves(const Run& run);

// Records a failed save: the run's last error (and write error for I/O
// failures), a FAILED event, the log line (with `detail`), the metric. Used by
// sessions and for queued shm saves that Begin refused.
void RecordFailure(Run& run, uint64_t step, const absl::Status& why, std::string_view detail = "");

class SaveSession {
 public:
  // Returns a session that is either skipped() (not due, nothing written)
  // or ready for data. Errors: NOT_FOUND (unknown run), FAILED_PRECONDITION
  // (run not opened, or finished; step below the last without overwrite),
  // ALREADY_EXISTS, INVALID_ARGUMENT (tensors, metadata), RESOURCE_EXHAUSTED
  // (not enough free space for the planned files).
  static absl::StatusOr<std::unique_ptr<SaveSession>> Begin(RunRegistry* registry,
                                                            SaveParams params);
  ~SaveSession();

  bool skipped() const { return writer_ == nullptr; }
  const std::string& reason() const { return reason_; }
  uint64_t expected_bytes() const { return writer_ ? writer_->data_bytes() : 0; }
  uint64_t received_bytes() const { return writer_ ? writer_->received_bytes() : 0; }

  absl::Status Write(std::string_view bytes);
  absl::StatusOr<storage::CheckpointRecord> Commit(SaveTimings* timings, bool* is_latest);
  // Records the failure (run's last_error, FAILED event, log); the
  // destructor then removes the temp files.
  void Fail(const absl::Status& why);

 private:
  SaveSession(RunRegistry* registry, std::shared_ptr<Run> run, SaveParams params);
  absl::Status Prepare();
  // Disk guard: prunes unprotected checkpoints to make room, or refuses.
  absl::Status EnsureSpace(uint64_t planned, const std::string& weights_dir);
  void LeaveInFlight();  // run_->mu held

  RunRegistry* registry_;
  std::shared_ptr<Run> run_;
  SaveParams params_;
  std::unique_lock<std::mutex> save_lock_;
  std::unique_ptr<storage::CheckpointWriter> writer_;
  std::string reason_;
  double start_s_ = 0;
  bool done_ = false;       // committed or failed
  bool in_flight_ = false;  // params_.step is in run_->in_flight
};

}  // namespace ckptd::scheduler
