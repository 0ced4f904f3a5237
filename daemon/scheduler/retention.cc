// Retention and disk-guard execution.
#include "daemon/scheduler/retention.h"

#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::scheduler {
namespace {

bool Protected(const storage::RunDir& dir, const storage::PinStore& pins,
               const std::set<uint64_t>& in_flight, uint64_t step) {
  return dir.latest_step() == step || pins.Find(step) != nullptr || in_flight.count(step) > 0;
}

}  // namespace

policy::RetentionInputs RetentionInputsFor(const storage::Catalog& catalog,
                                           std::optional<uint64_t> latest_step,
                                           const std::map<uint64_t, std::string>& pins,
                                           const policy::RetentionPolicy& policy,
                                           const std::set<uint64_t>& in_flight, double now_s) {
  policy::RetentionInputs in;
  in.latest_step = latest_step;
  in.in_flight = in_flight;
  in.now_s = now_s;
  for (const auto& [step, r] : catalog) {
    policy::CheckpointFacts f{step, r.total_bytes(), r.time_s, std::nullopt, std::nullopt};
    if (auto it = r.metrics.find(policy.metric); it != r.metrics.end()) f.metric = it->second;
    if (auto pin = pins.find(step); pin != pins.end()) f.pin = pin->second;
    in.checkpoints.push_back(std::move(f));
  }
  return in;
}

namespace {

policy::RetentionInputs InputsOf(const storage::RunDir& dir, const storage::PinStore& pins,
                                 const policy::RetentionPolicy& policy,
                                 const std::set<uint64_t>& in_flight, double now_s) {
  return RetentionInputsFor(dir.catalog(), dir.latest_step(), pins.pins(), policy, in_flight,
                            now_s);
}

}  // namespace

absl::StatusOr<RetentionOutcome> ApplyRetention(storage::RunDir* dir, const storage::PinStore& pins,
                                                const policy::RetentionPolicy& policy,
                                                const std::set<uint64_t>& in_flight, double now_s,
                                                DryRun dry) {
  RetentionOutcome out;
  out.plan = policy::PlanRetention(policy, InputsOf(*dir, pins, policy, in_flight, now_s));
  if (dry == DryRun::kYes) return out;
  for (const auto& d : out.plan) {
    if (d.keep) continue;
    if (Protected(*dir, pins, in_flight, d.step)) {
      return absl::InternalError(StrCat("retention planned to delete protected step ", d.step));
    }
    CKPTD_TRY(dir->Delete(d.step));
    out.deleted.push_back(d.step);
  }
  return out;
}

absl::StatusOr<std::vector<uint64_t>> PruneForSpace(
    storage::RunDir* dir, const storage::PinStore& pins, const policy::RetentionPolicy& policy,
    const std::set<uint64_t>& in_flight, double now_s, uint64_t needed, policy::OnFull on_full) {
  auto plan = policy::PlanRetention(policy, InputsOf(*dir, pins, policy, in_flight, now_s));
  std::vector<std::pair<uint64_t, uint64_t>> order;  // (step, bytes): victims first, then oldest
  for (const auto& d : plan) {
    if (!d.keep) order.push_back({d.step, d.bytes});
  }
  const bool prune_kept = on_full == policy::OnFull::kPruneOldest;
  for (const auto& d : plan) {
    if (prune_kept && d.keep && !Protected(*dir, pins, in_flight, d.step)) {
      order.push_back({d.step, d.bytes});
    }
  }
  uint64_t available = 0;
  for (const auto& [step, bytes] : order) available += bytes;
  if (available < needed) {
    return absl::ResourceExhaustedError(
        prune_kept ? StrCat("pruning every unprotected checkpoint would free ", available,
                            " of the ", needed, " bytes needed")
                   : StrCat("the checkpoints the retention policy drops would free ", available,
                            " of the ", needed,
                            " bytes needed, and disk_guard.on_full = \"refuse\" never deletes "
                            "a checkpoint the policy keeps"));
  }
  std::vector<uint64_t> deleted;
  uint64_t freed = 0;
  for (const auto& [step, bytes] : order) {
    if (freed >= needed) break;
    CKPTD_TRY(dir->Delete(step));
    deleted.push_back(step);
    freed += bytes;
  }
  return deleted;
}

}  // namespace ckptd::scheduler
