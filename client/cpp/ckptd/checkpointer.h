// The trainer-side checkpointer: call MaybeSave(step, tensors) every step.
// When the daemon says the step is due, the tensors are copied into a free
// shared-memory arena (several threads for large saves) and handed over by
// reference; the call returns as soon as the copy is done, while the daemon
// persists at disk speed. The save is announced before the copy and the
// copy publishes its progress in the arena, so the daemon starts writing
// while the trainer is still copying. With two arenas (the default), save N+1 is staged
// while save N is still being written; only when every arena is busy does
// the trainer wait, and that wait is counted in stats() and reported to the
// daemon's ckptd_trainer_stall_seconds. A remote daemon (TCP) or a daemon
// without the shm path is served over the stream path instead (one log line
// says so). A daemon restart costs the trainer nothing but time: the
// checkpointer reconnects, reopens the run, registers its arenas again, and
// sends again a staged save the restarted daemon did not commit (its bytes
// are still in the arena); see ClientOptions::reconnect_timeout_s. A pointer
// save lost that way is reported by Wait() (the tensors have moved on).
// Not thread-safe: one per training loop.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/arena.h"
#include "ckptd/client.h"

namespace ckptd {

struct CheckpointerOptions {
  int buffers = 2;            // arenas; 2 = double buffering
  int copy_threads = 0;       // 0 = one per core, at most 4
  size_t arena_bytes = 0;     // 0 = sized by the first save that needs more
  bool force_stream = false;  // never use shared memory
  // Announce the save before copying and publish the copy's progress, so the
  // daemon writes while the trainer copies. On 2 cores: ~7 % sooner durable,
  // ~28 % more stall (README, Benchmarks), hence off by default.
  bool overlap_copy = false;
  // Pointer saves: no arena and no copy by the trainer; the daemon reads the
  // tensors straight from this process's memory (process_vm_readv) and
  // MaybeSave returns once it has read them all (the tensors must not change
  // until then: that is the stall). For trainers that cannot hold a second
  // copy of their state. Falls back to arenas where the daemon may not read
  // this process (another uid, Yama's ptrace_scope), with one log line.
  bool pointers = false;
  double wait_timeout_s = 3600;  // Wait(): give up after this long per save
  // Where the checkpointer's one-line notices go (default: stderr).
  std::function<void(const std::string&)> log;
};

struct CheckpointerStats {
  uint64_t saves = 0;    // staged (shm) or written (stream)
  uint64_t skipped = 0;  // not due
  double last_stall_s = 0;
  double total_stall_s = 0;
  double max_stall_s = 0;
  uint64_t buffer_waits = 0;  // saves that found every arena busy
  double buffer_wait_s = 0;   // time spent waiting for an arena
  double last_copy_s = 0;
  bool shared_memory = false;  // the shm path (arenas or pointers) is in use
  bool pointers = false;       // pointer saves are in use
};

class Checkpointer {
 public:
  // `run` must outlive the checkpointer.
  static absl::StatusOr<std::unique_ptr<Checkpointer>> Create(Run* run,
                                                              CheckpointerOptions options = {});
  ~Checkpointer();  // Wait()s for staged saves (their bytes live in our arenas)

  // Creates the arenas for saves of up to `bytes` tensor bytes up front
  // (otherwise the first due save does, and its stall includes the page
  // population: about 0.5 GB/s here).
  absl::Status Reserve(size_t bytes);
  // Saves if the step is due. true: staged (shm) or saved (stream); false: not due.
  absl::StatusOr<bool> MaybeSave(uint64_t step, const std::vector<TensorView>& tensors,
                                 const std::map<std::string, double>& metrics = {});
  // Saves regardless of the schedule (preemption, end of an epoch).
  absl::StatusOr<bool> Save(uint64_t step, const std::vector<TensorView>& tensors,
                            const std::map<std::string, double>& metrics = {},
                            const SaveOptions& options = {.force = true});
  // Blocks until every staged save is committed; the first failure since
  // the last Wait() is returned.
  absl::Status Wait();
  // Wait(), then the final snapshot (if tensors are given; through shared
  // memory when in use, and waited for) and the run's end.
  absl::StatusOr<v1::CloseRunResponse> Close(uint64_t step = 0,
                                             const std::vector<TensorView>& tensors = {},
                                             const std::map<std::string, double>& metrics = {});

  CheckpointerStats stats() const {
    CheckpointerStats s = stats_;
    s.shared_memory = shared_;
    s.pointers = attachment_.has_value();
    return s;
  }
  // The committed checkpoints reported by finished shm saves, oldest first.
  const std::vector<v1::WaitSavedResponse>& finished() const { return finished_; }

 private:
  // A queued save, as sent: enough to send it again to a restarted daemon.
  struct Sent {
    uint64_t step = 0;
    std::vector<TensorView> tensors;  // descriptions (data not read)
    std::vector<uint64_t> offsets;    // in the slot's arena; empty for a pointer save
    std::map<std::string, double> metrics;
    SaveOptions options;
    bool final_snapshot = false;
  };
  struct Slot {
    std::unique_ptr<Arena> arena;  // null for a pointer save (no buffer to reuse)
    uint64_t arena_id = 0;
    std::optional<uint64_t> save_id;  // the pending save using it
    double stall_s = 0;               // its stall, reported with the first WaitSaved
    Sent sent;                        // what save_id was
  };
  Checkpointer(Run* run, CheckpointerOptions options);
  void Log(const std::string& line) const;
  absl::Status SetUpSharedMemory();
  absl::Status EnsureArenas(size_t bytes);
  // Polls (timeout 0) or waits for the slot's save; the slot is free after.
  absl::StatusOr<bool> Settle(Slot& slot, double timeout_s);
  absl::StatusOr<Slot*> FreeSlot(double* waited_s);
  // Copies into a free arena and calls SaveShared. false: skipped, or (for a
  // final snapshot) not sent because the arenas failed and shared_ is now off.
  absl::StatusOr<bool> Stage(double t0, uint64_t step, const std::vector<TensorView>& tensors,
                             const std::map<std::string, double>& metrics,
                             const SaveOptions& options, bool final_snapshot = false);
  // The pointer path: the daemon reads the tensors where they are.
  absl::StatusOr<bool> SendPointers(double t0, uint64_t step,
                                    const std::vector<TensorView>& tensors,
                                    const std::map<std::string, double>& metrics,
                                    const SaveOptions& options, bool final_snapshot);
  // The stream path, and the fallback of the others: one place counts it.
  absl::StatusOr<bool> StreamSave(double t0, uint64_t step, const std::vector<TensorView>& tensors,
                                  const std::map<std::string, double>& metrics,
                                  const SaveOptions& options);
  void Account(double stall_s);
  // After a failure that a restarted or unreachable daemon explains (or an
  // arena or attachment it no longer knows): reopens the run if no call has
  // yet, then Resync(). Other failures come back unchanged.
  absl::Status Recover(const absl::Status& cause, double* deadline);
  // A new arena connection, the arenas registered again, the attachment
  // renewed: for a daemon of a newer generation than ours.
  absl::Status Resync();
  // Sends again, in step order, every staged save a restarted daemon does
  // not know (its bytes are still in its arena).
  absl::Status ResendLost();
  // Keeps a failure for the next Wait() (added to any kept before).
  void Defer(const absl::Status& st);
  // SaveShared for `slot`'s arena, sent again through Recover() while the
  // daemon restarts.
  // A `fresh` save first lets ResendLost() send the lost ones (a run's
  // steps go in increasing order).
  absl::StatusOr<v1::SaveSharedResponse> SendShared(Slot& slot, double stall_s,
                                                    const v1::TensorLocation* progress,
                                                    bool fresh = false);

  Run* run_;
  CheckpointerOptions options_;
  std::unique_ptr<ArenaChannel> channel_;
  uint64_t generation_ = 0;         // the run's generation our arenas are registered with
  uint64_t resent_generation_ = 0;  // the generation ResendLost() last ran for
  std::vector<Slot> slots_;
  bool shared_ = false;
  std::optional<PointerAttachment> attachment_;  // pointer saves
  absl::Status deferred_error_;  // failed saves, every one named, reported by the next Wait()
  CheckpointerStats stats_;
  std::vector<v1::WaitSavedResponse> finished_;
};

}  // namespace ckptd
