// The save path's entry points, one per thing a transport asks for; rpc/
// only converts proto to these and back. Every path admits through Admit and
// writes through one SaveSession:
//   ShouldSave  the admission rules without tensors (queued steps count)
//   SaveNow     bytes that arrive now (the stream path)
//   Enqueue     bytes the run's writer reads later (shm and pointer paths)
//   Close       queued saves first, then the final snapshot, then finished
// A commit from one arena keeps it as the run's in-memory copy (hot restore,
// in SaveQueue); any other commit, and closing the run, drops that copy.
// Thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/ingest/tensor_source.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_queue.h"
#include "daemon/scheduler/save_session.h"

namespace ckptd::scheduler {

class SavePipeline {
 public:
  // `queue` may be null (shm off): Enqueue then fails with UNAVAILABLE.
  SavePipeline(RunRegistry* registry, SaveQueue* queue) : registry_(registry), queue_(queue) {}

  absl::StatusOr<Admission> ShouldSave(const std::string& run_id, uint64_t step) const;
  absl::StatusOr<SaveOutcome> SaveNow(SaveParams params, ingest::TensorSource& source) const;
  absl::StatusOr<SaveQueue::Accepted> Enqueue(SaveParams params,
                                              std::unique_ptr<ingest::TensorSource> source) const;
  // Commits the run's queued saves, then (when `final_params` has tensors)
  // writes the final snapshot from `source` (skipped with final_on_close
  // off), then marks the run finished. The final save's outcome, if any.
  absl::StatusOr<std::optional<SaveOutcome>> Close(SaveParams final_params,
                                                   ingest::TensorSource& source) const;

  // A trainer's save stall, as it reported it (for the memory tier's auto).
  void RecordStall(const std::string& run_id, double seconds) const;

  SaveQueue* queue() const { return queue_; }

 private:
  void DropHotCopy(const std::string& run_id) const;
  RunRegistry* registry_;
  SaveQueue* queue_;
};

}  // namespace ckptd::scheduler
