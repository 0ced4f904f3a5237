// One save, from admission to commit, whatever its transport: admission
// (admission.h), per-run ordering, provenance, the disk-space check before
// any data is written, the write from a TensorSource, and the commit. A save
// that is refused or fails produces the same FAILED event, metric and log
// line on every path; its temp files are removed and earlier checkpoints and
// `latest` stay as they were. Not thread-safe; one per save.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/ingest/tensor_source.h"
#include "daemon/scheduler/admission.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/storage/checkpoint_writer.h"

namespace ckptd::scheduler {

struct SaveParams {
  std::string run_id;
  uint64_t step = 0;
  std::map<std::string, double> metrics;
  bool force = false;
  bool overwrite = false;
  std::vector<storage::PlannedTensor> tensors;
  gguf::Metadata train_metadata;
  SaveKind kind = SaveKind::kSave;

  AdmitRequest admit_request() const {
    return {.step = step,
            .kind = kind,
            .force = force,
            .overwrite = overwrite,
            .tensor_count = tensors.size()};
  }
};

struct SaveTimings {
  double received_s = 0;
  double durable_s = 0;
  double committed_s = 0;
};

struct SaveOutcome {
  bool skipped = false;  // not due: nothing written
  std::string reason;
  storage::CheckpointRecord record;  // committed
  bool is_latest = false;
  SaveTimings timings;
};

// Records a refused or failed save: the run's last error (and its sticky
// write error for I/O failures, env::IsIoError), a FAILED event, the log
// line (with `detail`), the metric.
void RecordFailure(Run& run, uint64_t step, const absl::Status& why, std::string_view detail = "")
    ABSL_LOCKS_EXCLUDED(run.mu_);

// Plans each of a run's exports for one save's model tensors (also used by
// OpenRun to refuse a profile before the first save).
absl::Status PlanExports(const std::vector<RunExport>& run_exports,
                         const std::vector<storage::PlannedTensor>& tensors,
                         const gguf::Metadata& model_metadata, std::string_view version,
                         std::vector<std::shared_ptr<const exports::ExportPlan>>* out);

class SaveSession {
 public:
  // Admits the save (Admit, with `queued_last` as the queue's highest step)
  // unless `admitted` says it was admitted earlier (a queued save: then only
  // the run's state and the step order are checked again), and prepares it:
  // plan, disk guard, temp files. The session is skipped() when not due.
  // Errors: NOT_FOUND (unknown run), Admit's errors, INVALID_ARGUMENT
  // (tensors, metadata), RESOURCE_EXHAUSTED (disk guard); each recorded.
  static absl::StatusOr<std::unique_ptr<SaveSession>> Begin(RunRegistry* registry,
                                                            SaveParams params,
                                                            std::string_view transport,
                                                            const Admission* admitted = nullptr);
  ~SaveSession();

  bool skipped() const { return writer_ == nullptr; }
  const std::string& reason() const { return reason_; }

  // Writes every byte `source` delivers, then commits. On any failure the
  // failure is recorded and returned, and nothing is left on disk.
  absl::StatusOr<SaveOutcome> Run(ingest::TensorSource& source);

 private:
  SaveSession(RunRegistry* registry, std::shared_ptr<scheduler::Run> run, SaveParams params,
              std::string_view transport);
  absl::Status Prepare(const Admission& admission);
  // Disk guard: prunes unprotected checkpoints to make room, or refuses.
  absl::Status EnsureSpace(uint64_t planned, const std::string& weights_dir);
  // The memory tier's budget ([memory] max_bytes): this run's oldest memory
  // steps evicted to make room, or RESOURCE_EXHAUSTED.
  absl::Status EnsureMemory(uint64_t planned);
  absl::StatusOr<storage::CheckpointRecord> Commit(SaveTimings* timings, bool* is_latest);
  absl::StatusOr<storage::CheckpointRecord> StagePart(SaveTimings* t);
  absl::StatusOr<storage::CheckpointRecord> CommitToMemory(SaveTimings* t);
  absl::Status Fail(absl::Status why);
  void LeaveInFlight() ABSL_EXCLUSIVE_LOCKS_REQUIRED(run_->mu());
  // The save's files are durable (committed, or a part staged): the run's
  // schedule clock restarts, its errors clear, the step leaves in_flight.
  void Written() ABSL_EXCLUSIVE_LOCKS_REQUIRED(run_->mu());

  RunRegistry* registry_;
  std::shared_ptr<scheduler::Run> run_;
  SaveParams params_;
  std::string transport_;
  std::unique_ptr<absl::MutexLock> save_lock_;  // the run's save_mu(), for the whole save
  std::unique_ptr<storage::CheckpointWriter> writer_;
  std::string reason_;
  bool overwrite_ = false;
  bool part_ = false;  // a multi-rank run's part: staged, committed by the coordinator's verdict
  // A multi-rank run's part of a memory step: committed on this node at
  // once (the ranks agree on a memory step only when they restore).
  bool memory_part_ = false;
  Tier tier_ = Tier::kDisk;
  double start_s_ = 0;
  bool done_ = false;       // committed or failed
  bool in_flight_ = false;  // params_.step is in run_->in_flight
};

}  // namespace ckptd::scheduler
