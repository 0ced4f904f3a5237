// A run's directory: <run_dir>/weights/ with its committed checkpoints,
// `latest`, startup recovery and the catalog rebuilt from file headers (the
// files are the truth). Not thread-safe: the caller serializes access per run.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/checkpoint_writer.h"

namespace ckptd::storage {

// A file moved to <run_dir>/quarantine/.
struct QuarantinedFile {
  std::string from;  // where it was (absolute)
  std::string path;  // where it is (absolute)
  std::string reason;
  uint64_t bytes = 0;
};

struct RecoveryReport {
  // Files of saves that never committed (temps, a .next or exports without
  // their commit) and of deletions that were under way.
  std::vector<std::string> removed;
  // Files that were committed once but are damaged or do not belong where
  // they lie: moved, never deleted.
  std::vector<QuarantinedFile> quarantined;
  bool latest_repaired = false;
};

enum class Overwrite { kNo, kYes };

// Checkpoints by step. RunDir shares its catalogs with readers (catalog_ref)
// and copies one before changing it while a reader holds it.
using Catalog = std::map<uint64_t, CheckpointRecord>;

class RunDir {
 public:
  // Creates weights/ if needed, removes temp files and orphaned train files,
  // repoints `latest` at the highest committed step, and loads the catalog.
  static absl::StatusOr<std::unique_ptr<RunDir>> Open(env::Env* env, const std::string& run_dir,
                                                      RecoveryReport* report);

  const std::string& run_dir() const { return run_dir_; }
  const std::string& weights_dir() const { return weights_dir_; }
  const Catalog& catalog() const { return *catalog_; }
  // A multi-rank run's parts written here whose step is not committed yet
  // (no commit marker): invisible to the catalog, `latest` and retention.
  const Catalog& pending() const { return *pending_; }
  // The same, as they are now, for a reader that keeps them past the
  // caller's lock (they never change once handed out).
  std::shared_ptr<const Catalog> catalog_ref() const { return catalog_; }
  std::shared_ptr<const Catalog> pending_ref() const { return pending_; }
  std::optional<uint64_t> latest_step() const;
  const CheckpointRecord* Find(uint64_t step) const;
  uint64_t total_bytes() const;

  // Checks, before a byte is written, that `step` may be saved: ALREADY_EXISTS
  // for a committed step and FAILED_PRECONDITION below the last one, unless
  // overwrite.
  absl::Status CheckCanSave(uint64_t step, Overwrite overwrite) const;

  // The commit (each step durable before the next):
  //   1. new train file -> .step_N.train.gguf.next, fsync the directory
  //   2. model file -> step_N.gguf (the commit point), fsync the directory
  //      (exports are renamed to their final names in step 1 as well)
  //   3. .next -> step_N.train.gguf (or remove an overwritten step's stale
  //      train file and exports), then `latest` if this is the highest
  //      step, fsync, then each latest.E.
  // Recovery finishes step 3 or drops .next by its recorded model digest, so
  // an overwrite never leaves the old model without its training state. An
  // error after the commit point is returned, but the catalog already shows
  // the new checkpoint (memory follows disk).
  absl::StatusOr<CheckpointRecord> Commit(CheckpointWriter* writer, Overwrite overwrite);

  // A multi-rank run's part (the writer planned with SavePlan::part): its
  // files renamed to their part names and made durable, the step pending
  // (not in the catalog) until CommitPart or AbortPart. ALREADY_EXISTS if
  // the step is committed or pending already.
  // kYes: a step below the latest committed one may be staged (a memory
  // step of a trainer that resumed from an older step).
  absl::StatusOr<CheckpointRecord> StagePart(CheckpointWriter* writer,
                                             Overwrite overwrite = Overwrite::kNo);
  // Every rank's part is durable: writes step_N.commit (the commit point on
  // this node), moves the part into the catalog and points `latest` at it
  // if it is the newest. Idempotent for a committed step.
  absl::StatusOr<CheckpointRecord> CommitPart(uint64_t step);
  // The step failed: removes the pending part's files.
  absl::Status AbortPart(uint64_t step);

  // Deletes a committed checkpoint: the model file (a part's commit
  // marker) first, after which the checkpoint no longer exists, then its
  // train file and exports, then fsyncs the directory. Refuses `latest`'s target
  // (FAILED_PRECONDITION). Only files named by the grammar inside weights/ are touched.
  absl::Status Delete(uint64_t step);
  // Deletes every committed step above `step`, newest first, after `latest`
  // is pointed at the newest step left: the steps a retaken step replaces
  // (the memory tier's, after a trainer resumed from an older step).
  // Returns the steps deleted.
  absl::StatusOr<std::vector<uint64_t>> DeleteAbove(uint64_t step);

  // Startup recovery again: temps and orphans removed, `latest` repointed,
  // the catalog reloaded from the headers.
  absl::Status Recover(RecoveryReport* report);

  // Moves weights/NAME to quarantine/NAME (NAME.1, NAME.2, ... when taken)
  // with NAME.why holding `reason`, both directories made durable.
  absl::StatusOr<QuarantinedFile> Quarantine(const std::string& name, const std::string& reason);
  // A committed file found damaged after its commit (the scrubber): an
  // export goes alone; a model or train file takes its whole step with it
  // (the step is no longer one checkpoint), which leaves the catalog, and
  // `latest` and `latest.E` move to the newest step left. NOT_FOUND when
  // `path` is no longer a file of `step` (retention got there first).
  struct Damaged {
    std::vector<QuarantinedFile> files;
    bool step_lost = false;  // the step left the catalog
  };
  absl::StatusOr<Damaged> QuarantineDamaged(uint64_t step, const std::string& path,
                                            const std::string& reason);
  // What quarantine/ holds (read at recovery, added to by Quarantine), by name.
  const std::vector<QuarantinedFile>& quarantined() const { return quarantined_; }

  // A step whose files were placed in weights/ from elsewhere (fetched from
  // the object store, model file renamed last): a multi-rank part is
  // committed by its marker (its step is committed in the store), then the
  // directory is read again as at startup. NOT_FOUND when no file of the
  // step is there after all.
  absl::StatusOr<CheckpointRecord> Adopt(uint64_t step, RecoveryReport* report);

 private:
  RunDir(env::Env* env, std::string run_dir);
  absl::Status PointLatestAt(std::optional<uint64_t> step);
  // Delete without the `latest` check (DeleteAbove repoints it first).
  absl::Status DeleteStep(uint64_t step);
  // What `latest` names for a committed step: its model file or its part.
  std::string LatestTarget(uint64_t step) const;
  // Points each latest.E at the newest step with export E (removing links
  // of exports no step has); fsyncs when anything changed.
  absl::StatusOr<bool> RelinkExports();
  // Symlink `link` -> `target` via a temp link renamed over; no fsync.
  absl::Status ReplaceLink(const std::string& link, const std::string& target);
  std::string PathOf(const std::string& name) const { return weights_dir_ + "/" + name; }
  // A part's commit marker, written atomically (the commit point on this node).
  absl::Status WriteCommitMarker(uint64_t step, uint32_t rank, uint32_t world_size);
  // `c`, copied first if a reader shares it.
  static Catalog& Edit(std::shared_ptr<Catalog>& c);
  std::vector<QuarantinedFile> ScanQuarantine() const;

  env::Env* env_;
  std::string run_dir_;
  std::string weights_dir_;
  std::string quarantine_dir_;
  std::shared_ptr<Catalog> catalog_ = std::make_shared<Catalog>();
  std::shared_ptr<Catalog> pending_ = std::make_shared<Catalog>();
  std::vector<QuarantinedFile> quarantined_;
};

}  // namespace ckptd::storage
