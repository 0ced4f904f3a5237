// Restore: a checkpoint read back into the trainer's own memory.
//
//   auto r = ckptd::Restore::OpenRun(client, "run-7");          // latest
//   if (r.ok()) for (auto& t : (*r)->tensors()) (*r)->ReadInto(t.name, dst(t), t.nbytes);
//
// A Restore opens step_N.gguf and, when there is one, step_N.train.gguf,
// and checks before any data is read that each file's tensor table matches
// its stored content digest and that the training-state file was written
// with this model file (its ckpt.model_content_digest). Reads go straight
// from the file into caller memory through a few reused, aligned buffers
// (O_DIRECT where the filesystem allows it, `reads_in_flight` preads at
// once, the file read sequentially across tensors), and each tensor's
// XXH3-128 digest is checked as its bytes land: a mismatch is DATA_LOSS
// naming the tensor, and the caller's buffer must then be treated as
// garbage. Hot restore: when the daemon keeps the run's newest shared-memory
// save in memory (`[shm] keep_last_in_memory`), OpenRun maps that copy
// read-only and reads from it instead (source() == "memory"), with the same
// digest checks; any problem with it falls back to disk.
//
// Thread-compatible: one thread uses a Restore at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/v1/ckptd.pb.h"
#include "daemon/gguf/value.h"

namespace ckptd {

class Client;
class Run;

struct RestoreOptions {
  bool verify = true;     // check every tensor's digest as it lands
  bool direct_io = true;  // O_DIRECT where the filesystem allows it
  int reads_in_flight = 4;
  size_t chunk_bytes = 8 << 20;  // one read; also the size of each reused buffer
  bool allow_memory = true;      // OpenRun: use the daemon's in-memory copy (only with verify)
  // OpenRun: when the step (or, with none asked for, any step) is not on
  // the daemon's disk, ask it to fetch the step from its object store
  // ([tier.s3], FetchRemote) first: a trainer on a new node restores.
  bool allow_remote = true;
  // A rank of a multi-rank run restoring with no step asked for: the ranks
  // agree, through the daemons' object store, on the newest step every rank
  // can get its part of (from its memory or disk, a peer's memory or the
  // store), and each restores exactly that step or fails (NOT_FOUND: no
  // common step; DEADLINE_EXCEEDED: a rank never reported). The same id on
  // every rank of one restart, a new one for each; "" = $CKPTD_RESTORE_ATTEMPT,
  // else torchrun's "$TORCHELASTIC_RUN_ID:$TORCHELASTIC_RESTART_COUNT". A
  // multi-rank run with memory steps and no id is FAILED_PRECONDITION.
  std::string agree_attempt;
  double agree_timeout_s = 300;
};

struct RestoreTensor {
  std::string name;
  v1::TensorType type = v1::TENSOR_TYPE_F32;
  std::vector<uint64_t> ne;  // GGUF order (fastest-varying first)
  uint64_t nbytes = 0;
  std::string digest;  // XXH3-128 as 32 hex digits; "" when the file stores none
  v1::TensorGroup group = v1::TENSOR_GROUP_MODEL;
};

struct ReadTarget {
  std::string_view name;
  void* dst = nullptr;
  size_t n = 0;  // must equal the tensor's nbytes
  // What the destination holds. When `type` is given, the saved tensor must
  // have exactly this type and these dims (GGUF order), or the read is
  // refused before any byte is read: FAILED_PRECONDITION naming the tensor,
  // both types and both shapes. Bytes are never reinterpreted.
  std::optional<v1::TensorType> type;
  std::vector<uint64_t> ne;
};

class Restore {
 public:
  // A checkpoint by path. `train_path` "" = step_N.train.gguf beside the
  // model file when it exists (FAILED_PRECONDITION if it belongs to another
  // model file).
  static absl::StatusOr<std::unique_ptr<Restore>> Open(const std::string& model_path,
                                                       const std::string& train_path = "",
                                                       const RestoreOptions& options = {});
  // A run's checkpoint through the daemon: `step` nullopt = latest. NOT_FOUND
  // when the run has no checkpoint (or not that step). Reads the daemon's
  // in-memory copy when it holds one of that step (hot restore;
  // options.allow_memory); a tensor whose bytes there no longer match its
  // digest is read from disk instead (memory_fallbacks()).
  static absl::StatusOr<std::unique_ptr<Restore>> OpenRun(Client& client, const std::string& run_id,
                                                          std::optional<uint64_t> step = {},
                                                          const RestoreOptions& options = {});
  // The same, for an open run.
  static absl::StatusOr<std::unique_ptr<Restore>> OpenRun(Run& run,
                                                          std::optional<uint64_t> step = {},
                                                          const RestoreOptions& options = {});
  // The newest step of the run that restores whole into `targets`: the
  // latest, or, when its files fail to open (damaged header, metadata
  // digest, a train file not its own) or a tensor fails its digest, the
  // step before it, and so on down the run's steps; skipped() names each
  // step passed over and why. Other errors (the daemon, a target of another
  // size, type or shape) are returned at once, as is the newest step's
  // error when no step restores. A step asked for by number is OpenRun's:
  // never swapped. On success the targets hold the returned step's bytes.
  static absl::StatusOr<std::unique_ptr<Restore>> ReadRun(Client& client, const std::string& run_id,
                                                          std::span<const ReadTarget> targets,
                                                          const RestoreOptions& options = {});
  static absl::StatusOr<std::unique_ptr<Restore>> ReadRun(Run& run,
                                                          std::span<const ReadTarget> targets,
                                                          const RestoreOptions& options = {});
  struct Skipped {
    uint64_t step = 0;
    std::string why;
  };
  // ReadRun: the newer steps that did not restore, newest first.
  const std::vector<Skipped>& skipped() const { return skipped_; }
  // OpenRun and ReadRun: the tier that held the step ("memory": the
  // daemon's memory tier, "disk", "peer": fetched back from a peer daemon's
  // memory first, or "store": from the object store), and the
  // steps between the highest step the daemon saw the trainer reach and
  // this one (unknown after the daemon restarted).
  const std::string& tier() const { return tier_; }
  std::optional<uint64_t> steps_lost() const { return steps_lost_; }
  ~Restore();
  Restore(const Restore&) = delete;
  Restore& operator=(const Restore&) = delete;

  uint64_t step() const { return step_; }
  // Model tensors first, then training-state tensors, each in file order.
  const std::vector<RestoreTensor>& tensors() const { return tensors_; }
  const RestoreTensor* Find(std::string_view name) const;
  const gguf::Metadata& metadata() const;
  // Empty when there is no training-state file.
  const gguf::Metadata& train_metadata() const;
  const std::string& model_path() const;
  const std::string& train_path() const;  // "" when none
  // "disk" or "memory" (hot restore).
  std::string_view source() const;
  uint64_t bytes_read() const { return bytes_read_; }
  // Hot restore: tensors read from disk because the in-memory copy had
  // changed, and why memory was not used at all ("" when it was, or not offered).
  uint64_t memory_fallbacks() const { return memory_fallbacks_; }
  const std::string& memory_error() const { return memory_error_; }

  // Reads one tensor into dst (n must be its nbytes).
  absl::Status ReadInto(std::string_view name, void* dst, size_t n);
  // The same, checking that the saved tensor is `type` with dims `ne`
  // (GGUF order, as the trainer saved it): the way to restore into a
  // model's own tensors.
  absl::Status ReadInto(std::string_view name, void* dst, size_t n, v1::TensorType type,
                        std::span<const uint64_t> ne);
  // Reads several tensors at once, in file order whatever the order given:
  // the fast way to restore a whole model.
  absl::Status ReadMany(std::span<const ReadTarget> targets);

  class File;  // one opened GGUF file (restore.cc)

 private:
  Restore(RestoreOptions options, std::vector<std::unique_ptr<File>> files);
  absl::Status Index();
  absl::Status AttachMemory(const std::string& run_id, const v1::InMemoryCopy& copy);
  // A multi-rank run: the step its ranks agreed on (here now), or nullopt
  // when there is nothing to agree on (no attempt id, no memory steps).
  static absl::StatusOr<std::optional<v1::CheckpointInfo>> AgreedStep(
      Client& client, const v1::RunInfo& info, const RestoreOptions& options);
  absl::Status ReadPass(std::span<const ReadTarget> targets, bool use_memory,
                        std::vector<ReadTarget>* damaged);
  RestoreOptions options_;
  std::vector<std::unique_ptr<File>> files_;  // [0] model, [1] train (optional)
  std::vector<RestoreTensor> tensors_;
  std::vector<std::pair<size_t, size_t>> where_;        // per tensor: (file, index in file)
  std::map<std::string, size_t, std::less<>> by_name_;  // index into tensors_
  uint64_t step_ = 0;
  uint64_t bytes_read_ = 0;
  uint64_t memory_fallbacks_ = 0;
  std::string memory_error_;
  std::vector<Skipped> skipped_;
  std::string tier_ = "disk";
  std::optional<uint64_t> steps_lost_;
};

}  // namespace ckptd
