// Bringing a step back from a peer or the store.
#include "daemon/replication/recover.h"

#include <spdlog/spdlog.h>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::replication {

absl::StatusOr<Recovered> Recover(scheduler::RunRegistry* registry, PeerSender* peers,
                                  Replicator* store, const std::string& run_id,
                                  std::optional<uint64_t> step,
                                  std::optional<uint64_t> newer_than) {
  if (peers == nullptr && store == nullptr) {
    return absl::FailedPreconditionError(
        "neither peers ([peers] nodes) nor an object store ([tier.s3] endpoint) are configured: "
        "there is nothing to fetch from");
  }
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<scheduler::Run> run, registry->Get(run_id));
  std::vector<std::string> notes;
  std::vector<PeerStep> holders;
  if (peers != nullptr) holders = peers->Holders(run_id, &notes);
  std::optional<uint64_t> in_store;
  if (store != nullptr) {
    auto steps = store->RemoteSteps(run_id);
    if (!steps.ok()) {
      notes.push_back(StrCat("store: ", steps.status().message()));
    } else if (steps->empty()) {
      notes.push_back("store: nothing of this run");
    } else if (step) {
      if (steps->contains(*step)) in_store = *step;
    } else {
      in_store = *steps->rbegin();
    }
  }
  // Every source, newest step first, a peer before the store at the same
  // step (faster); each tried in turn until one gives its step whole.
  struct Candidate {
    uint64_t step;
    std::string peer;  // "" = the store
  };
  std::vector<Candidate> candidates;
  for (const PeerStep& h : holders) {
    if (!step || h.step == *step) candidates.push_back({h.step, h.peer});
  }
  if (in_store) candidates.push_back({*in_store, ""});
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) { return a.step > b.step; });
  std::erase_if(candidates,
                [&](const Candidate& c) { return newer_than && c.step <= *newer_than; });
  for (const Candidate& c : candidates) {
    if (!c.peer.empty()) {
      auto record = registry->Adopt(*run, c.step, [&](const std::string& weights) {
        return peers->Fetch(c.peer, run_id, c.step, weights);
      });
      if (record.ok()) return Recovered{*record, StrCat("peer ", c.peer)};
      spdlog::error("peers: run={} step={} from peer={} refused: {}", run_id, c.step, c.peer,
                    record.status().message());
      notes.push_back(StrCat("peer ", c.peer, " step ", c.step, ": ", record.status().message()));
      continue;
    }
    auto record = store->Fetch(run_id, c.step);
    if (record.ok()) return Recovered{*record, "store"};
    notes.push_back(StrCat("store step ", c.step, ": ", record.status().message()));
  }
  std::string what = step ? StrCat("no peer or store gave run '", run_id, "' step ", *step)
                          : StrCat("no peer or store gave a step of run '", run_id, "'",
                                   newer_than ? StrCat(" above step ", *newer_than) : "");
  for (const std::string& n : notes) StrAppend(&what, "; ", n);
  return absl::NotFoundError(what);
}

}  // namespace ckptd::replication
