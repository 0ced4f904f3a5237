// The replicas this daemon holds for its peers ([peers]): each a step of
// another node's run (model file and training state), kept in
// <root>/<run_id>/ on the memory tier's tmpfs. A replica arrives whole or
// not at all: its bytes go to temp files, every digest is checked (and the
// training state tied to its model file), then the files are renamed in,
// the model file last. The newest keep_last replicas of each run are kept,
// and all together stay within max_bytes: room for a new one is made by
// evicting the oldest arrivals first, and a replica larger than the whole
// budget is refused. Reads check every digest again and drop a replica
// that fails. A multi-rank run's parts are kept per rank, in
// <root>/<run_id>/rank-R/ under their part names (several ranks' parts of
// one run may meet on one peer), keep_last counted per rank. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/env/env.h"

namespace ckptd::replication {

struct ReplicaStoreOptions {
  std::string root;        // created if missing
  uint64_t max_bytes = 0;  // all replicas together (> 0)
  uint32_t keep_last = 2;  // per run
};

struct ReplicaInfo {
  std::string run_id;
  uint64_t step = 0;
  uint32_t rank = 0;        // a multi-rank run's part: its rank
  uint32_t world_size = 0;  // and its world; 0 for a whole step
  std::string origin;       // the node that sent it ("" when found at start)
  uint64_t bytes = 0;
  std::string content_digest;
  uint64_t arrival = 0;  // order of arrival (oldest evicted first)
};

struct ReplicaFileSpec {
  std::string name;  // step_N.gguf, step_N.train.gguf
  uint64_t size = 0;
};

class ReplicaStore {
 public:
  // Reads what <root> holds (headers only; temps of unfinished arrivals removed).
  static absl::StatusOr<std::unique_ptr<ReplicaStore>> Open(env::Env* env,
                                                            ReplicaStoreOptions options);

  // One replica arriving: Write its files' bytes in order, then Finish.
  // Destroyed unfinished, it leaves nothing.
  class Incoming {
   public:
    ~Incoming();
    absl::Status Write(std::string_view bytes);
    absl::StatusOr<ReplicaInfo> Finish();

   private:
    friend class ReplicaStore;
    Incoming(ReplicaStore* store, ReplicaInfo info, std::vector<ReplicaFileSpec> files,
             std::string dir)
        : store_(store), info_(std::move(info)), files_(std::move(files)), dir_(std::move(dir)) {}
    absl::Status OpenNext();
    void Abandon();
    ReplicaStore* store_;
    ReplicaInfo info_;
    std::vector<ReplicaFileSpec> files_;
    std::string dir_;
    std::vector<std::string> temps_;
    std::unique_ptr<env::WritableFile> out_;
    size_t file_ = 0;       // the file being written
    uint64_t in_file_ = 0;  // its bytes so far
    bool done_ = false;
  };
  // INVALID_ARGUMENT for a bad run id, step or file list; RESOURCE_EXHAUSTED
  // for a replica larger than max_bytes. Room is made now (oldest evicted).
  // `world_size` > 0: rank `rank`'s part of a multi-rank step.
  absl::StatusOr<std::unique_ptr<Incoming>> Begin(const std::string& run_id, uint32_t rank,
                                                  uint32_t world_size, uint64_t step,
                                                  const std::string& origin,
                                                  std::vector<ReplicaFileSpec> files);

  // The replicas of `run_id` ("" = every run), every rank's, by run (then
  // rank) and ascending step.
  std::vector<ReplicaInfo> List(const std::string& run_id) const;
  // A replica's files (paths and sizes, model file first); NOT_FOUND when
  // there is no such replica.
  // `rank`: a multi-rank run's part of that rank; nullopt: a whole step.
  absl::StatusOr<std::vector<ReplicaFileSpec>> Files(const std::string& run_id,
                                                     std::optional<uint32_t> rank, uint64_t step);
  // Every digest of those files checked again; DATA_LOSS (the replica is
  // dropped) when one fails. GetReplica runs it beside the send.
  absl::Status Check(const std::string& run_id, std::optional<uint32_t> rank, uint64_t step,
                     const std::vector<ReplicaFileSpec>& files);
  // Files, then Check.
  absl::StatusOr<std::vector<ReplicaFileSpec>> Checked(const std::string& run_id,
                                                       std::optional<uint32_t> rank, uint64_t step);
  uint64_t bytes() const;
  const ReplicaStoreOptions& options() const { return options_; }
  env::Env* env() const { return env_; }

 private:
  ReplicaStore(env::Env* env, ReplicaStoreOptions options)
      : env_(env), options_(std::move(options)) {}
  // Where a run's replicas (or one rank's parts) are: the key of
  // `replicas_`, relative to the root.
  static std::string KeyOf(const std::string& run_id, std::optional<uint32_t> rank);
  std::string DirOf(const std::string& key) const { return options_.root + "/" + key; }
  // Reads the replicas in one key's directory (at Open).
  void ScanLocked(const std::string& key, const std::string& run_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a replica's files and forgets it.
  void DropLocked(const std::string& key, uint64_t step, std::string_view why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A finished arrival: files in place; keeps keep_last of its run.
  void Arrived(const ReplicaInfo& info) ABSL_LOCKS_EXCLUDED(mu_);
  void Release(uint64_t reserved) ABSL_LOCKS_EXCLUDED(mu_);

  env::Env* const env_;
  const ReplicaStoreOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::map<uint64_t, ReplicaInfo>> replicas_
      ABSL_GUARDED_BY(mu_);                     // by KeyOf
  uint64_t held_ ABSL_GUARDED_BY(mu_) = 0;      // bytes of the replicas held
  uint64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;  // bytes of arrivals under way
  uint64_t next_arrival_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace ckptd::replication
