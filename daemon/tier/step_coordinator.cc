// The coordinator's rounds: decide undecided steps from their reports,
// then apply the verdicts to this node's pending parts.
#include "daemon/tier/step_coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/tier/remote_keys.h"

namespace ckptd::tier {

StepCoordinator::StepCoordinator(Uploader* uploader, MultiRankNode* node, double poll_s)
    : uploader_(uploader), store_(uploader->store()), node_(node), poll_s_(poll_s) {}

StepCoordinator::~StepCoordinator() { Stop(); }

void StepCoordinator::Start() {
  absl::MutexLock lock(&mu_);
  if (worker_.joinable()) return;
  stop_ = false;
  worker_ = std::thread([this] { Loop(); });
}

void StepCoordinator::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  if (worker_.joinable()) worker_.join();
}

void StepCoordinator::Poke(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  poked_ = true;
  if (!run_id.empty()) poked_runs_.insert(run_id);
  cv_.Signal();
}

void StepCoordinator::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      poked_ = false;
    }
    PollOnce();
    absl::MutexLock lock(&mu_);
    if (!stop_ && !poked_) cv_.WaitWithTimeout(&mu_, absl::Seconds(poll_s_));
  }
}

void StepCoordinator::PollOnce() {
  const std::vector<MultiRankRun> runs = node_->MultiRankRuns();
  std::set<std::string> poked;
  {
    absl::MutexLock lock(&mu_);
    poked.swap(poked_runs_);
  }
  const double now = NowSeconds();
  std::string error;
  for (const MultiRankRun& run : runs) {
    // Listed every poll while it has reports or this node's parts wait.
    auto quiet = quiet_until_.find(run.run_id);
    const bool listen = run.coordinator && (!run.pending.empty() || poked.contains(run.run_id) ||
                                            quiet == quiet_until_.end() || quiet->second <= now);
    absl::Status st = listen ? Coordinate(run) : absl::OkStatus();
    if (st.ok() && !run.pending.empty()) st = ApplyVerdicts(run);
    if (!st.ok() && error.empty()) error = StrCat("run=", run.run_id, ": ", st.message());
  }
  if (error != last_error_) {
    if (!error.empty()) {
      spdlog::warn("multi-rank: {} (parts stay pending; tried again every {:g}s)", error, poll_s_);
    } else if (!last_error_.empty()) {
      spdlog::info("multi-rank: the object store answers again");
    }
    last_error_ = error;
  }
}

absl::Status StepCoordinator::Coordinate(const MultiRankRun& run) {
  const RunKeys keys = uploader_->KeysOf(run.run_id);
  CKPTD_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store_.List(keys.PartsDir()));
  std::map<uint64_t, std::vector<std::pair<std::string, std::string>>> by_step;
  for (const ObjectInfo& o : objects) {
    std::optional<std::string_view> name = keys.NameOf(o.key);
    if (!name) continue;
    if (auto k = ParsePartReportName(*name)) by_step[k->step].emplace_back(o.key, o.etag);
  }
  for (auto it = first_seen_.begin(); it != first_seen_.end();) {
    it = it->first.first == run.run_id && !by_step.contains(it->first.second)
             ? first_seen_.erase(it)
             : std::next(it);
  }
  if (by_step.empty()) {
    quiet_until_[run.run_id] = NowSeconds() + kQuietPollS;
  } else {
    quiet_until_.erase(run.run_id);
  }
  for (const auto& [step, reports] : by_step) CKPTD_TRY(Decide(run, step, reports));
  return absl::OkStatus();
}

absl::Status StepCoordinator::Decide(
    const MultiRankRun& run, uint64_t step,
    const std::vector<std::pair<std::string, std::string>>& reports) {
  const RunKeys keys = uploader_->KeysOf(run.run_id);
  std::vector<PartReport> parts;
  std::vector<std::string> report_keys;
  for (const auto& [key, etag] : reports) {
    report_keys.push_back(key);
    if (auto it = reports_.find(key); it != reports_.end() && it->second.first == etag) {
      parts.push_back(it->second.second);
      continue;
    }
    absl::StatusOr<std::string> text = store_.Get(key);
    if (absl::IsNotFound(text.status())) continue;  // cleaned up meanwhile
    CKPTD_TRY(text.status());
    absl::StatusOr<PartReport> r = PartReport::Parse(*text, key);
    if (!r.ok()) {
      spdlog::warn("multi-rank: run={} step={}: {}; ignored", run.run_id, step,
                   r.status().message());
      continue;
    }
    reports_[key] = {etag, *r};
    parts.push_back(*std::move(r));
  }
  // A verdict already given (by a coordinator that stopped before its
  // cleanup, or a part reported after its step failed): what is left of
  // the commit (latest) and the cleanup.
  CKPTD_ASSIGN_OR_RETURN(std::optional<ObjectInfo> manifest, store_.Head(keys.Manifest(step)));
  if (manifest) {
    CKPTD_TRY(AdvanceLatest(keys, step));
    return Cleanup(report_keys, parts, /*with_files=*/false);
  }
  CKPTD_ASSIGN_OR_RETURN(std::optional<ObjectInfo> failed, store_.Head(keys.Failed(step)));
  if (failed) return Cleanup(report_keys, parts, /*with_files=*/true);

  policy::StepParts sp{.step = step, .world_size = run.world_size};
  sp.first_report_s = first_seen_.try_emplace({run.run_id, step}, NowSeconds()).first->second;
  for (const PartReport& r : parts) {
    if (r.world_size != run.world_size || r.rank >= run.world_size) {
      return Abort(run, step,
                   StrCat("rank ", r.rank, " saved its part for a world of ", r.world_size,
                          " ranks; the coordinator's run has ", run.world_size,
                          " (every rank must open the run with the same multi_rank.world_size)"),
                   {}, parts);
    }
    sp.parts[r.rank] = r.ForPolicy();
  }
  const policy::StepDecision d = policy::DecideStep(sp, NowSeconds(), run.part_timeout_s);
  switch (d.verdict) {
    case policy::StepVerdict::kWait:
      return absl::OkStatus();
    case policy::StepVerdict::kAbort:
      return Abort(run, step, d.reason, d.missing, parts);
    case policy::StepVerdict::kCommit:
      break;
  }
  // llama.cpp checks the first part's split.tensors.count against the
  // tensors of all parts; sliced steps are merged before they are loaded.
  bool sliced = false;
  uint64_t tensors = 0;
  for (const auto& [rank, r] : sp.parts) {
    tensors += r.tensors.size();
    for (const auto& t : r.tensors) sliced |= t.slice.has_value();
  }
  std::vector<PartReport> kept = parts;
  std::sort(kept.begin(), kept.end(),
            [](const PartReport& a, const PartReport& b) { return a.rank < b.rank; });
  if (!sliced && !kept.empty() && kept[0].split_tensors_count &&
      *kept[0].split_tensors_count != static_cast<int64_t>(tensors)) {
    return Abort(
        run, step,
        StrCat("rank 0's part says split.tensors.count = ", *kept[0].split_tensors_count,
               " but the parts hold ", tensors, " tensors; set multi_rank.total_tensors to ",
               tensors, " on rank 0 so that llama.cpp can load the step"),
        {}, parts);
  }
  return Commit(run, step, kept);
}

absl::Status StepCoordinator::Commit(const MultiRankRun& run, uint64_t step,
                                     const std::vector<PartReport>& parts) {
  const RunKeys keys = uploader_->KeysOf(run.run_id);
  const StepFacts& first = parts.front().facts;
  StepManifest manifest{.facts = {.run_id = run.run_id,
                                  .step = step,
                                  .metrics = first.metrics,
                                  .uuid = first.uuid,
                                  .content_digest = first.content_digest,
                                  .time_utc = first.time_utc,
                                  .part_size = first.part_size},
                        .world_size = run.world_size};
  uint64_t bytes = 0;
  std::vector<std::string> report_keys;
  for (const PartReport& p : parts) {
    for (const RemoteFile& f : p.facts.files) manifest.facts.files.push_back(f);
    manifest.parts.push_back({.rank = p.rank,
                              .uuid = p.facts.uuid,
                              .content_digest = p.facts.content_digest,
                              .bytes = p.bytes,
                              .time_utc = p.facts.time_utc,
                              .tensors = p.tensors});
    bytes += p.bytes;
    report_keys.push_back(keys.PartReport(step, p.rank));
  }
  // The step's commit record, then latest: as for a single-rank step.
  CKPTD_TRY(store_.Put(keys.Manifest(step), manifest.ToJson(), Precondition::kNone, {}).status());
  CKPTD_TRY(AdvanceLatest(keys, step));
  spdlog::info("multi-rank: step committed run={} step={} world_size={} bytes={}", run.run_id, step,
               run.world_size, bytes);
  first_seen_.erase({run.run_id, step});
  CKPTD_TRY(Cleanup(report_keys, {}, /*with_files=*/false));
  if (uploader_->RemoteRetentionOf(run.run_id)) {
    auto applied = uploader_->PlanRemote(run.run_id, /*apply=*/true, /*retry=*/false);
    if (!applied.ok()) {
      spdlog::warn("tier: remote retention run={}: {}", run.run_id, applied.status().message());
    }
  }
  return absl::OkStatus();
}

absl::Status StepCoordinator::AdvanceLatest(const RunKeys& keys, uint64_t step) {
  absl::StatusOr<std::string> latest = store_.Get(keys.Latest());
  if (!latest.ok() && !absl::IsNotFound(latest.status())) return latest.status();
  if (latest.ok()) {
    absl::StatusOr<LatestRecord> l = LatestRecord::Parse(*latest, keys.Latest());
    if (!l.ok()) return l.status();  // damaged or newer: never overwritten blindly
    if (l->step >= step) return absl::OkStatus();
  }
  return store_
      .Put(keys.Latest(), LatestRecord{.step = step, .manifest = keys.Manifest(step)}.ToJson(),
           Precondition::kNone, {})
      .status();
}

absl::Status StepCoordinator::Abort(const MultiRankRun& run, uint64_t step,
                                    const std::string& reason, const std::vector<uint32_t>& missing,
                                    const std::vector<PartReport>& parts) {
  const RunKeys keys = uploader_->KeysOf(run.run_id);
  const FailedStep record{.run_id = run.run_id,
                          .step = step,
                          .world_size = run.world_size,
                          .reason = reason,
                          .missing_ranks = missing,
                          .time_utc = FormatUtc(NowSeconds())};
  CKPTD_TRY(store_.Put(keys.Failed(step), record.ToJson(), Precondition::kNone, {}).status());
  spdlog::warn("multi-rank: step aborted run={} step={}: {}", run.run_id, step, reason);
  first_seen_.erase({run.run_id, step});
  std::vector<std::string> report_keys;
  report_keys.reserve(parts.size());
  for (const PartReport& p : parts) report_keys.push_back(keys.PartReport(step, p.rank));
  return Cleanup(report_keys, parts, /*with_files=*/true);
}

absl::Status StepCoordinator::Cleanup(const std::vector<std::string>& report_keys,
                                      const std::vector<PartReport>& parts, bool with_files) {
  std::vector<std::string> keys;
  if (with_files) {
    for (const PartReport& p : parts) {
      for (const RemoteFile& f : p.facts.files) keys.push_back(f.key);
    }
  }
  // The files first: a report left behind by a failure here names them
  // again at the next round.
  if (!keys.empty()) CKPTD_TRY(store_.Delete(keys));
  if (!report_keys.empty()) CKPTD_TRY(store_.Delete(report_keys));
  for (const std::string& k : report_keys) reports_.erase(k);
  return absl::OkStatus();
}

absl::Status StepCoordinator::ApplyVerdicts(const MultiRankRun& run) {
  const RunKeys keys = uploader_->KeysOf(run.run_id);
  for (uint64_t step : run.pending) {
    CKPTD_ASSIGN_OR_RETURN(std::optional<ObjectInfo> manifest, store_.Head(keys.Manifest(step)));
    if (manifest) {
      node_->CommitPart(run.run_id, step);
      continue;
    }
    const std::string failed_key = keys.Failed(step);
    absl::StatusOr<std::string> failed = store_.Get(failed_key);
    if (absl::IsNotFound(failed.status())) continue;  // not decided yet
    CKPTD_TRY(failed.status());
    std::string reason = "the coordinator aborted the step";
    if (absl::StatusOr<FailedStep> f = FailedStep::Parse(*failed, failed_key); f.ok()) {
      if (!f->reason.empty()) reason = f->reason;
    } else {
      reason = StrCat(reason, " (", f.status().message(), ")");
    }
    node_->AbortPart(run.run_id, step, reason);
    // What this node may have uploaded of the part (an upload that ended
    // after the coordinator's cleanup, or is still going): gone too, once
    // that upload has ended.
    uploader_->Withdraw(run.run_id, run.run_dir, step, run.rank, run.world_size);
  }
  return absl::OkStatus();
}

}  // namespace ckptd::tier
