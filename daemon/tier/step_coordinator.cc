// The coordinator's rounds: decide undecided steps from their reports,
// then apply the verdicts to this node's pending parts.
#include "daemon/tier/step_coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/storage/file_names.h"
#include "daemon/tier/remote_names.h"

namespace ckptd::tier {
namespace {

absl::StatusOr<nlohmann::json> ParseObject(const std::string& key, const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::DataLossError(StrCat(key, " is not a JSON object"));
  return j;
}

}  // namespace

absl::StatusOr<policy::PartReport> ParsePartReport(const nlohmann::json& j) {
  try {
    policy::PartReport r;
    r.rank = j.at("rank").get<uint32_t>();
    r.world_size = j.at("world_size").get<uint32_t>();
    r.bytes = j.value("bytes", uint64_t{0});
    r.uuid = j.value("uuid", std::string());
    for (const auto& t : j.at("tensors")) {
      policy::PartTensor pt{.name = t.at("name").get<std::string>()};
      if (t.contains("slice")) {
        const auto& s = t["slice"];
        pt.slice = policy::TensorSlice{.full_ne = s.at("full_ne").get<std::vector<uint64_t>>(),
                                       .dim = s.at("dim").get<uint32_t>(),
                                       .offset = s.at("offset").get<uint64_t>(),
                                       .length = s.at("length").get<uint64_t>()};
      }
      r.tensors.push_back(std::move(pt));
    }
    return r;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(StrCat("not a part report: ", e.what()));
  }
}

StepCoordinator::StepCoordinator(Uploader* uploader, CoordinatorHooks hooks, double poll_s)
    : uploader_(uploader), client_(uploader->client()), hooks_(std::move(hooks)), poll_s_(poll_s) {}

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
  const std::vector<MultiRankRun> runs = hooks_.runs();
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
  const std::string base = uploader_->KeyFor(run.run_id, "");
  CKPTD_ASSIGN_OR_RETURN(std::vector<S3Object> objects,
                         client_.List(uploader_->KeyFor(run.run_id, std::string(kPartsDir))));
  std::map<uint64_t, std::vector<std::pair<std::string, std::string>>> by_step;
  for (const S3Object& o : objects) {
    if (!o.key.starts_with(base)) continue;
    if (auto k = ParsePartReportName(std::string_view(o.key).substr(base.size()))) {
      by_step[k->step].emplace_back(o.key, o.etag);
    }
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
  std::vector<nlohmann::json> parts;
  std::vector<std::string> keys;
  for (const auto& [key, etag] : reports) {
    keys.push_back(key);
    if (auto it = reports_.find(key); it != reports_.end() && it->second.first == etag) {
      parts.push_back(it->second.second);
      continue;
    }
    absl::StatusOr<std::string> text = client_.Get(key);
    if (absl::IsNotFound(text.status())) continue;  // cleaned up meanwhile
    CKPTD_TRY(text.status());
    absl::StatusOr<nlohmann::json> j = ParseObject(key, *text);
    if (!j.ok()) {
      spdlog::warn("multi-rank: run={} step={}: {}; ignored", run.run_id, step,
                   j.status().message());
      continue;
    }
    reports_[key] = {etag, *j};
    parts.push_back(std::move(*j));
  }
  // A verdict already given (by a coordinator that stopped before its
  // cleanup, or a part reported after its step failed): only the cleanup
  // is left.
  CKPTD_ASSIGN_OR_RETURN(std::optional<S3Object> manifest,
                         client_.Head(uploader_->KeyFor(run.run_id, ManifestName(step))));
  if (manifest) return Cleanup(run, keys, parts, /*with_files=*/false);
  CKPTD_ASSIGN_OR_RETURN(std::optional<S3Object> failed,
                         client_.Head(uploader_->KeyFor(run.run_id, FailedName(step))));
  if (failed) return Cleanup(run, keys, parts, /*with_files=*/true);

  policy::StepParts sp{.step = step, .world_size = run.world_size};
  sp.first_report_s = first_seen_.try_emplace({run.run_id, step}, NowSeconds()).first->second;
  std::vector<nlohmann::json> kept;
  for (const nlohmann::json& j : parts) {
    absl::StatusOr<policy::PartReport> r = ParsePartReport(j);
    if (!r.ok()) {
      spdlog::warn("multi-rank: run={} step={}: {}; ignored", run.run_id, step,
                   r.status().message());
      continue;
    }
    if (r->world_size != run.world_size || r->rank >= run.world_size) {
      return Abort(run, step,
                   StrCat("rank ", r->rank, " saved its part for a world of ", r->world_size,
                          " ranks; the coordinator's run has ", run.world_size,
                          " (every rank must open the run with the same multi_rank.world_size)"),
                   {}, parts);
    }
    sp.parts[r->rank] = std::move(*r);
    kept.push_back(j);
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
  std::sort(kept.begin(), kept.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return a["rank"].get<uint32_t>() < b["rank"].get<uint32_t>();
  });
  if (!sliced && !kept.empty() && kept[0].contains("split_tensors_count") &&
      kept[0]["split_tensors_count"].get<int64_t>() != static_cast<int64_t>(tensors)) {
    return Abort(run, step,
                 StrCat("rank 0's part says split.tensors.count = ",
                        kept[0]["split_tensors_count"].get<int64_t>(), " but the parts hold ",
                        tensors, " tensors; set multi_rank.total_tensors to ", tensors,
                        " on rank 0 so that llama.cpp can load the step"),
                 {}, parts);
  }
  return Commit(run, step, kept);
}

absl::Status StepCoordinator::Commit(const MultiRankRun& run, uint64_t step,
                                     const std::vector<nlohmann::json>& parts) {
  const nlohmann::json& first = parts.front();
  nlohmann::json manifest = {{"run_id", run.run_id},
                             {"step", step},
                             {"world_size", run.world_size},
                             {"metrics", first.value("metrics", nlohmann::json::object())},
                             {"uuid", first.value("uuid", "")},
                             {"content_digest", first.value("content_digest", "")},
                             {"time_utc", first.value("time_utc", "")},
                             {"part_size", first.value("part_size", uint64_t{0})},
                             {"files", nlohmann::json::array()},
                             {"parts", nlohmann::json::array()}};
  uint64_t bytes = 0;
  std::vector<std::string> report_keys;
  for (const nlohmann::json& p : parts) {
    for (const auto& f : p["files"]) manifest["files"].push_back(f);
    manifest["parts"].push_back({{"rank", p["rank"]},
                                 {"uuid", p.value("uuid", "")},
                                 {"content_digest", p.value("content_digest", "")},
                                 {"bytes", p.value("bytes", uint64_t{0})},
                                 {"time_utc", p.value("time_utc", "")},
                                 {"tensors", p["tensors"]}});
    bytes += p.value("bytes", uint64_t{0});
    report_keys.push_back(
        uploader_->KeyFor(run.run_id, PartReportName(step, p["rank"].get<uint32_t>())));
  }
  // The step's commit record, then latest: as for a single-rank step.
  CKPTD_TRY(
      client_.Put(uploader_->KeyFor(run.run_id, ManifestName(step)), manifest.dump(2)).status());
  absl::StatusOr<std::string> latest = client_.Get(uploader_->KeyFor(run.run_id, "latest"));
  if (!latest.ok() && !absl::IsNotFound(latest.status())) return latest.status();
  std::optional<uint64_t> newest;
  if (latest.ok()) {
    nlohmann::json l = nlohmann::json::parse(*latest, nullptr, false);
    if (l.is_object() && l.contains("step")) newest = l["step"].get<uint64_t>();
  }
  if (!newest || *newest < step) {
    CKPTD_TRY(
        client_
            .Put(uploader_->KeyFor(run.run_id, "latest"),
                 nlohmann::json{{"step", step},
                                {"manifest", uploader_->KeyFor(run.run_id, ManifestName(step))}}
                     .dump())
            .status());
  }
  spdlog::info("multi-rank: step committed run={} step={} world_size={} bytes={}", run.run_id, step,
               run.world_size, bytes);
  first_seen_.erase({run.run_id, step});
  CKPTD_TRY(Cleanup(run, report_keys, {}, /*with_files=*/false));
  if (uploader_->RemoteRetentionOf(run.run_id)) {
    auto applied = uploader_->PlanRemote(run.run_id, /*apply=*/true, /*retry=*/false);
    if (!applied.ok()) {
      spdlog::warn("tier: remote retention run={}: {}", run.run_id, applied.status().message());
    }
  }
  return absl::OkStatus();
}

absl::Status StepCoordinator::Abort(const MultiRankRun& run, uint64_t step,
                                    const std::string& reason, const std::vector<uint32_t>& missing,
                                    const std::vector<nlohmann::json>& parts) {
  const nlohmann::json record = {
      {"run_id", run.run_id},         {"step", step},
      {"world_size", run.world_size}, {"reason", reason},
      {"missing_ranks", missing},     {"time_utc", FormatUtc(NowSeconds())}};
  CKPTD_TRY(client_.Put(uploader_->KeyFor(run.run_id, FailedName(step)), record.dump(2)).status());
  spdlog::warn("multi-rank: step aborted run={} step={}: {}", run.run_id, step, reason);
  first_seen_.erase({run.run_id, step});
  std::vector<std::string> keys;
  for (const nlohmann::json& p : parts) {
    if (p.contains("rank")) {
      keys.push_back(
          uploader_->KeyFor(run.run_id, PartReportName(step, p["rank"].get<uint32_t>())));
    }
  }
  return Cleanup(run, keys, parts, /*with_files=*/true);
}

absl::Status StepCoordinator::Cleanup(const MultiRankRun& run,
                                      const std::vector<std::string>& report_keys,
                                      const std::vector<nlohmann::json>& parts, bool with_files) {
  std::vector<std::string> keys;
  if (with_files) {
    for (const nlohmann::json& p : parts) {
      if (!p.contains("files") || !p["files"].is_array()) continue;
      for (const auto& f : p["files"]) {
        if (f.contains("key") && f["key"].is_string()) keys.push_back(f["key"].get<std::string>());
      }
    }
  }
  // The files first: a report left behind by a failure here names them
  // again at the next round.
  if (!keys.empty()) CKPTD_TRY(client_.Delete(keys));
  if (!report_keys.empty()) CKPTD_TRY(client_.Delete(report_keys));
  for (const std::string& k : report_keys) reports_.erase(k);
  (void)run;
  return absl::OkStatus();
}

absl::Status StepCoordinator::ApplyVerdicts(const MultiRankRun& run) {
  for (uint64_t step : run.pending) {
    CKPTD_ASSIGN_OR_RETURN(std::optional<S3Object> manifest,
                           client_.Head(uploader_->KeyFor(run.run_id, ManifestName(step))));
    if (manifest) {
      hooks_.commit(run.run_id, step);
      continue;
    }
    const std::string failed_key = uploader_->KeyFor(run.run_id, FailedName(step));
    absl::StatusOr<std::string> failed = client_.Get(failed_key);
    if (absl::IsNotFound(failed.status())) continue;  // not decided yet
    CKPTD_TRY(failed.status());
    std::string reason = "the coordinator aborted the step";
    if (absl::StatusOr<nlohmann::json> j = ParseObject(failed_key, *failed); j.ok()) {
      reason = j->value("reason", reason);
    }
    hooks_.abort(run.run_id, step, reason);
    // What this node may have uploaded of the part (an upload that ended
    // after the coordinator's cleanup): gone too.
    (void)client_.Delete(
        {uploader_->KeyFor(run.run_id, storage::SplitFileName(step, run.rank, run.world_size)),
         uploader_->KeyFor(run.run_id, storage::PartTrainFileName(step, run.rank, run.world_size)),
         uploader_->KeyFor(run.run_id, PartReportName(step, run.rank))});
  }
  return absl::OkStatus();
}

}  // namespace ckptd::tier
