// A step of a run brought back from beyond this node: a peer's memory
// ([peers]) or the object store ([tier.s3]), whichever holds the newer step
// (a peer's when both hold it: it is faster). The files are verified and
// adopted into the run's directory (RunRegistry::Adopt), so restores read
// them as any local step. A peer whose replica fails its check is skipped
// for the next holder, then the store.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/replication/peer_sender.h"
#include "daemon/replication/replicator.h"

namespace ckptd::replication {

struct Recovered {
  storage::CheckpointRecord record;
  std::string from;  // "peer HOST:PORT" or "store"
};

// `step`: that step, else the newest anywhere above `newer_than`.
// FAILED_PRECONDITION when neither source is configured; NOT_FOUND naming
// what each source holds when none has such a step.
absl::StatusOr<Recovered> Recover(scheduler::RunRegistry* registry, PeerSender* peers,
                                  Replicator* store, const std::string& run_id,
                                  std::optional<uint64_t> step, std::optional<uint64_t> newer_than);

// A multi-rank run restarting: this rank reports the steps it can get its
// part of (its memory and disk, its part's replicas on the peers, the
// store's complete steps), the ranks agree through the store on the newest
// step all of them can get (tier/restore_agreement.h), and that step is
// brought here when it is not (`from` "" when it is already here).
// INVALID_ARGUMENT for a run that is not multi-rank; the agreement's errors.
absl::StatusOr<Recovered> RecoverAgreed(scheduler::RunRegistry* registry, PeerSender* peers,
                                        Replicator* store, const std::string& run_id,
                                        const std::string& attempt, double timeout_s,
                                        const std::function<bool()>& cancelled);

}  // namespace ckptd::replication
