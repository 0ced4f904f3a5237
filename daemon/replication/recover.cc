// Bringing a step back from a peer or the store.
#include "daemon/replication/recover.h"

#include <spdlog/spdlog.h>

#include <set>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::replication {
namespace {

// A multi-rank run's part of this node, or nullopt for a whole-step run.
std::optional<RankPart> RecoverPartOf(const scheduler::RunSnapshot& s) {
  if (s.multi_rank.world_size <= 1) return std::nullopt;
  return RankPart{.rank = s.multi_rank.rank, .world_size = s.multi_rank.world_size};
}

// Recover, given which peers hold which steps of this node's part (listed
// by the caller, with what it noted on the way).
absl::StatusOr<Recovered> RecoverFromHolders(scheduler::RunRegistry* registry, PeerSender* peers,
                                             Replicator* store, scheduler::Run& run,
                                             std::optional<RankPart> part,
                                             const std::vector<PeerStep>& holders,
                                             std::vector<std::string> notes,
                                             std::optional<uint64_t> step,
                                             std::optional<uint64_t> newer_than) {
  const std::string& run_id = run.id();
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
      auto record = registry->Adopt(run, c.step, [&](const std::string& weights) {
        return peers->Fetch(c.peer, run_id, part, c.step, weights);
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

}  // namespace

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
  const std::optional<RankPart> part = RecoverPartOf(run->Snapshot());
  std::vector<std::string> notes;
  std::vector<PeerStep> holders;
  if (peers != nullptr) holders = peers->Holders(run_id, part, &notes);
  return RecoverFromHolders(registry, peers, store, *run, part, holders, std::move(notes), step,
                            newer_than);
}

absl::StatusOr<Recovered> RecoverAgreed(scheduler::RunRegistry* registry, PeerSender* peers,
                                        Replicator* store, const std::string& run_id,
                                        const std::string& attempt, double timeout_s,
                                        const std::function<bool()>& cancelled) {
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<scheduler::Run> run, registry->Get(run_id));
  const scheduler::RunSnapshot snap = run->Snapshot();
  const std::optional<RankPart> part = RecoverPartOf(snap);
  if (!part) {
    return absl::InvalidArgumentError(
        StrCat("agree_attempt: run '", run_id,
               "' is not trained by several ranks (multi_rank.world_size is not above 1); restore "
               "it without agree_attempt"));
  }
  if (store == nullptr) {
    return absl::FailedPreconditionError(
        "agree_attempt: the ranks agree through the object store, and this daemon has none "
        "([tier.s3] endpoint is unset)");
  }
  tier::RestoreAgreementRequest req{.run_id = run_id,
                                    .attempt = attempt,
                                    .mine = {.rank = part->rank, .world_size = part->world_size},
                                    .node = peers != nullptr ? peers->self() : std::string(),
                                    .timeout_s = timeout_s};
  // What this rank can get: its own steps, its part's replicas, the store's.
  std::set<uint64_t>& steps = req.mine.steps;
  for (const auto& [step, record] : *snap.catalog) steps.insert(step);
  if (snap.memory_catalog != nullptr) {
    for (const auto& [step, record] : *snap.memory_catalog) steps.insert(step);
  }
  if (!steps.empty()) req.newest_local = *steps.rbegin();
  std::vector<std::string> notes;
  std::vector<PeerStep> holders;
  if (peers != nullptr) holders = peers->Holders(run_id, part, &notes);
  for (const PeerStep& h : holders) steps.insert(h.step);
  CKPTD_ASSIGN_OR_RETURN(std::set<uint64_t> remote, store->RemoteSteps(run_id));
  steps.insert(remote.begin(), remote.end());
  CKPTD_ASSIGN_OR_RETURN(tier::AgreedRestore agreed, store->AgreeOnRestore(req, cancelled));
  std::string ranks;
  for (const tier::RestoreReport& r : agreed.reports) {
    StrAppend(&ranks, ranks.empty() ? "" : " ", r.rank, ":",
              r.steps.empty() ? std::string("none") : StrCat(r.steps.back()));
  }
  spdlog::info("restore agreement run={} attempt={} rank={} step={} (each rank's newest: {})",
               run_id, attempt, part->rank, agreed.step, ranks);
  const scheduler::RunSnapshot now = run->Snapshot();
  scheduler::Tier tier = scheduler::Tier::kDisk;
  if (const storage::CheckpointRecord* here = now.FindAny(agreed.step, &tier); here != nullptr) {
    return Recovered{*here, ""};
  }
  // From the peers listed for the report (one listing per restore), or the store.
  return RecoverFromHolders(registry, peers, store, *run, part, holders, std::move(notes),
                            agreed.step, std::nullopt);
}

}  // namespace ckptd::replication
