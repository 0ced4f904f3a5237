// Run registry, per-run state and event fan-out.
#include "daemon/scheduler/run_registry.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <ctime>
#include <random>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/metrics/metrics.h"
#include "daemon/scheduler/retention.h"
#include "daemon/scheduler/save_session.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/roots.h"

namespace ckptd::scheduler {
namespace {

constexpr std::string_view kFinished = "finished\n";

void LogRecovery(const std::string& run_id, const storage::RecoveryReport& report,
                 const storage::RunDir& dir, std::string_view tier) {
  for (const std::string& path : report.removed) {
    spdlog::info("recovery run={} {}removed {}", run_id, tier, path);
  }
  for (const storage::QuarantinedFile& q : report.quarantined) {
    spdlog::error("recovery run={} {}quarantined {} as {}: {}", run_id, tier, q.from, q.path,
                  q.reason);
    metrics::Metrics::Get().CountQuarantined(run_id, "recovery");
  }
  if (report.latest_repaired) {
    auto last = dir.latest_step();
    spdlog::info("recovery run={} {}latest repointed to {}", run_id, tier,
                 last ? storage::ModelFileName(*last) : std::string("(none)"));
  }
}

}  // namespace

std::string_view TierName(Tier t) { return t == Tier::kDisk ? "disk" : "memory"; }

std::optional<uint64_t> RunSnapshot::memory_step() const {
  if (memory_catalog == nullptr || memory_catalog->empty()) return std::nullopt;
  return memory_catalog->rbegin()->first;
}

std::optional<uint64_t> RunSnapshot::newest_step() const {
  std::optional<uint64_t> m = memory_step();
  if (!latest_step) return m;
  return m && *m > *latest_step ? m : latest_step;
}

const storage::CheckpointRecord* RunSnapshot::Find(uint64_t step) const {
  if (catalog == nullptr) return nullptr;
  auto it = catalog->find(step);
  return it == catalog->end() ? nullptr : &it->second;
}

const storage::CheckpointRecord* RunSnapshot::FindAny(uint64_t step, Tier* tier) const {
  *tier = Tier::kDisk;
  if (const storage::CheckpointRecord* r = Find(step)) return r;
  if (memory_catalog == nullptr) return nullptr;
  auto it = memory_catalog->find(step);
  if (it == memory_catalog->end()) return nullptr;
  *tier = Tier::kMemory;
  return &it->second;
}

uint64_t RunSnapshot::total_bytes() const {
  uint64_t total = 0;
  if (catalog != nullptr) {
    for (const auto& [step, r] : *catalog) total += r.total_bytes();
  }
  return total;
}

std::vector<policy::RetentionDecision> RunSnapshot::DryPlan(double now_s) const {
  return policy::PlanRetention(
      retention, RetentionInputsFor(catalog ? *catalog : storage::Catalog{}, latest_step, pins,
                                    retention, holds, now_s));
}

RunSnapshot Run::Snapshot() const {
  absl::MutexLock lock(&mu_);
  RunSnapshot s{.id = id_,
                .run_dir = run_dir_,
                .state = state_,
                .opened = settings_.has_value(),
                .schedule = registry_->EffectiveSchedule(*this),
                .retention = registry_->EffectiveRetention(*this),
                .last_error = last_error_,
                .write_error = write_error_,
                .pins = pins_.pins(),
                .holds = RetentionHolds(),
                .catalog = dir_->catalog_ref(),
                .pending = dir_->pending_ref(),
                .quarantined = dir_->quarantined(),
                .latest_step = dir_->latest_step(),
                .last_seen_step = last_seen_step_,
                .reference_time_s = reference_time_s_,
                .last_active_s = std::max(last_active_s_, reference_time_s_),
                .step_seconds = step_s_,
                .stall_seconds = stall_s_};
  if (mem_dir_ != nullptr) {
    s.memory_catalog = mem_dir_->catalog_ref();
    s.memory_dir = mem_dir_->weights_dir();
  }
  if (settings_) {
    for (const RunExport& e : settings_->exports) s.export_names.push_back(e.name);
    s.base_model_uuid = settings_->base_model_uuid;
    s.tier = settings_->tier;
    s.multi_rank = settings_->multi_rank;
  }
  return s;
}

void Run::HoldForUpload(uint64_t step) {
  absl::MutexLock lock(&mu_);
  awaiting_upload_.insert(step);
}

void Run::ReleaseUploadHold(uint64_t step) {
  absl::MutexLock lock(&mu_);
  awaiting_upload_.erase(step);
}

void Run::Publish(const Event& e) {
  absl::MutexLock lock(&mu_);
  PublishLocked(e);
}

std::string NewEventEpoch() {
  std::random_device rd;
  return fmt::format("{:08x}", rd());
}

void Run::PublishLocked(const Event& published) {
  Event e = published;
  e.id = ++last_event_id_;
  kept_events_.push_back(e);
  if (kept_events_.size() > kKeptEvents) kept_events_.pop_front();
  std::erase_if(subscribers_, [&](const std::weak_ptr<Subscription>& w) {
    auto s = w.lock();
    if (!s) return true;
    s->Push(e);
    return false;
  });
}

std::shared_ptr<Subscription> Run::Subscribe(std::function<void()> on_change,
                                             std::optional<uint64_t> after, bool* gap) {
  auto s = std::make_shared<Subscription>(std::move(on_change));
  absl::MutexLock lock(&mu_);
  if (after) {
    // Under the lock: nothing published between the replay and the subscription.
    const uint64_t oldest = kept_events_.empty() ? last_event_id_ + 1 : kept_events_.front().id;
    if (gap != nullptr) *gap = *after + 1 < oldest && *after < last_event_id_;
    for (const Event& e : kept_events_) {
      if (e.id > *after) s->Push(e);
    }
  }
  subscribers_.push_back(s);
  return s;
}

void Run::CloseSubscriptions() {
  absl::MutexLock lock(&mu_);
  for (auto& w : subscribers_) {
    if (auto s = w.lock()) s->Close();
  }
}

RunRegistry::RunRegistry(env::Env* env, std::vector<std::string> roots,
                         policy::Schedule default_schedule, DaemonFacts facts,
                         policy::RetentionPolicy default_retention, policy::DiskGuard disk_guard)
    : env_(env),
      roots_(std::move(roots)),
      facts_(std::move(facts)),
      default_schedule_(std::move(default_schedule)),
      default_retention_(std::move(default_retention)),
      disk_guard_(disk_guard) {}

absl::StatusOr<std::shared_ptr<Run>> RunRegistry::Load(const std::string& run_id,
                                                       const std::string& dir) {
  storage::RecoveryReport report;
  CKPTD_ASSIGN_OR_RETURN(auto run_dir, storage::RunDir::Open(env_, dir, &report));
  LogRecovery(run_id, report, *run_dir, "");
  CKPTD_ASSIGN_OR_RETURN(storage::PinStore pins, storage::PinStore::Load(env_, dir));
  auto run = std::make_shared<Run>(run_id, std::move(run_dir), std::move(pins), this);
  if (!memory_.root.empty()) {
    // The memory tier outlives the trainer and the daemon, not the host.
    auto st = env_->Stat(StrCat(memory_.root, "/", run_id, "/", storage::kWeightsDir));
    if (st.ok() && st->is_dir) {
      absl::MutexLock lock(&run->mu());
      if (absl::Status opened = OpenMemoryDir(*run); !opened.ok()) {
        spdlog::error("recovery run={} memory tier: {}", run_id, opened.message());
      }
    }
  }
  auto marker = env::ReadWholeFile(env_, StrCat(dir, "/", storage::kRunStateFile));
  if (marker.ok() && *marker == kFinished) {
    absl::MutexLock lock(&run->mu());
    run->state_ = RunState::kFinished;
  }
  return run;
}

std::vector<std::string> RunRegistry::Scan() {
  std::vector<std::string> warnings;
  for (const std::string& root : roots_) {
    auto names = env_->ListDir(root);
    if (!names.ok()) {
      warnings.push_back(std::string(names.status().message()));
      continue;
    }
    for (const std::string& name : *names) {
      std::string dir = StrCat(root, "/", name);
      auto st = env_->Stat(StrCat(dir, "/", storage::kWeightsDir));
      if (!st.ok() || !st->is_dir) continue;
      // The recorded owner names the run (a run opened with its own run_dir
      // keeps its id); a directory from before the marker is named after itself.
      std::string id = storage::RunOwner(env_, dir);
      if (id.empty()) id = name;
      if (!storage::IsValidRunId(id)) continue;
      absl::MutexLock lock(&mu_);
      if (runs_.count(id)) {
        warnings.push_back(StrCat("run id '", id, "' exists under two roots; using ",
                                  runs_[id]->run_dir(), ", ignoring ", dir));
        continue;
      }
      auto run = Load(id, dir);
      if (!run.ok()) {
        warnings.push_back(std::string(run.status().message()));
        continue;
      }
      if (storage::RunOwner(env_, dir).empty()) {
        if (absl::Status w = storage::WriteRunOwner(env_, dir, id); !w.ok()) {
          warnings.push_back(StrCat("run '", id, "': ", w.message()));
        }
      }
      runs_[id] = *run;
    }
  }
  return warnings;
}

absl::StatusOr<std::shared_ptr<Run>> RunRegistry::Open(const std::string& run_id,
                                                       const std::string& requested_dir,
                                                       RunSettings settings, bool* resumed) {
  if (!storage::IsValidRunId(run_id)) {
    return absl::InvalidArgumentError(StrCat(
        "run_id '", Printable(run_id), "' must match [A-Za-z0-9._-]{1,128} and not be . or .."));
  }
  CKPTD_ASSIGN_OR_RETURN(std::string dir,
                         storage::ResolveRunDir(env_, roots_, run_id, requested_dir));
  std::shared_ptr<Run> run;
  {
    absl::MutexLock lock(&mu_);
    auto it = runs_.find(run_id);
    if (it != runs_.end()) {
      if (!requested_dir.empty() && it->second->run_dir() != dir) {
        return absl::FailedPreconditionError(StrCat("run '", run_id, "' already lives in ",
                                                    it->second->run_dir(),
                                                    "; pass the same run_dir or none"));
      }
      run = it->second;
    } else {
      CKPTD_TRY(CheckDirFreeLocked(run_id, dir));
      CKPTD_ASSIGN_OR_RETURN(run, Load(run_id, dir));
      if (storage::RunOwner(env_, dir) != run_id) {
        CKPTD_TRY(storage::WriteRunOwner(env_, dir, run_id));
      }
      runs_[run_id] = run;
    }
  }
  absl::MutexLock lock(&run->mu());
  *resumed = !run->dir()->catalog().empty();
  if (run->state_ == RunState::kFinished) {
    (void)env_->RemoveFile(StrCat(run->dir()->run_dir(), "/", storage::kRunStateFile));
  }
  run->state_ = RunState::kOpen;
  run->settings_ = std::move(settings);
  run->settings_unloaded_ = false;
  run->reopened_ = true;
  run->reference_time_s_ = run->last_active_s_ = NowSeconds();
  return run;
}

void RunRegistry::Restore(Run& run, RunSettings settings) {
  absl::MutexLock lock(&run.mu());
  if (run.state_ != RunState::kFinished) run.state_ = RunState::kOpen;
  run.settings_ = std::move(settings);
  run.settings_unloaded_ = false;
  run.reference_time_s_ = run.last_active_s_ = NowSeconds();
}

std::vector<std::string> RunRegistry::UnloadIdle(double idle_s, double now) {
  std::vector<std::string> out;
  for (const std::shared_ptr<Run>& run : List()) {
    if (!run->save_mu().TryLock()) continue;  // a save in progress: not idle
    bool unloaded = false;
    {
      absl::MutexLock lock(&run->mu());
      const double last = std::max(run->last_active_s_, run->reference_time_s_);
      const bool idle = run->in_flight_.empty() && now - last >= idle_s;
      // Opened but unused this long: its trainer went away without closing
      // it (or it was only imported). Listings say idle until it is used.
      if (idle && run->state_ == RunState::kOpen) run->state_ = RunState::kIdle;
      if (idle && store_ != nullptr && run->settings_ && !run->settings_unloaded_) {
        RunSettings& s = *run->settings_;
        s.model_metadata = {};
        s.provenance = {};
        for (RunExport& e : s.exports) e.profile.reset();
        run->settings_unloaded_ = unloaded = true;
      }
    }
    run->save_mu().Unlock();
    if (!unloaded) continue;
    store_->Unloaded(*run);
    out.push_back(run->id());
  }
  return out;
}

absl::Status RunRegistry::EnsureSettings(Run& run) {
  {
    absl::MutexLock lock(&run.mu());
    if (!run.settings_unloaded_) return absl::OkStatus();
  }
  absl::StatusOr<RunSettings> back =
      store_ != nullptr ? store_->Reload(run) : absl::InternalError("no settings store");
  if (!back.ok()) {
    return absl::FailedPreconditionError(
        StrCat("run '", run.id(), "': its settings left memory while it was idle and cannot be ",
               "read back (", back.status().message(), "); call OpenRun again"));
  }
  absl::MutexLock lock(&run.mu());
  if (run.settings_unloaded_) {  // else reopened meanwhile: the new settings stand
    run.settings_ = *std::move(back);
    run.settings_unloaded_ = false;
  }
  spdlog::info("run settings reloaded run={}", run.id());
  return absl::OkStatus();
}

absl::Status RunRegistry::CheckDirFreeLocked(const std::string& run_id,
                                             const std::string& dir) const {
  for (const auto& [id, other] : runs_) {
    const std::string& theirs = other->run_dir();
    if (theirs == dir) {
      return absl::FailedPreconditionError(
          StrCat("run_dir ", dir, " belongs to run '", id,
                 "'; a directory holds one run: pick another run_dir, or open run '", id,
                 "' to continue it"));
    }
    if (dir.starts_with(theirs + "/") || theirs.starts_with(dir + "/")) {
      return absl::FailedPreconditionError(StrCat(
          "run_dir ", dir, (dir.size() > theirs.size() ? " is inside " : " contains "), theirs,
          ", the directory of run '", id, "'; runs do not nest: pick a directory beside it"));
    }
  }
  return storage::CheckRunDirFree(env_, roots_, run_id, dir);
}

absl::StatusOr<std::shared_ptr<Run>> RunRegistry::Get(const std::string& run_id) const {
  absl::MutexLock lock(&mu_);
  auto it = runs_.find(run_id);
  if (it == runs_.end()) {
    return absl::NotFoundError(
        StrCat("run '", run_id, "' is not known to this daemon; OpenRun it first"));
  }
  return it->second;
}

std::vector<std::shared_ptr<Run>> RunRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Run>> out;
  for (const auto& [id, run] : runs_) out.push_back(run);
  return out;
}

absl::Status RunRegistry::OpenMemoryDir(Run& run) {
  if (run.mem_dir_ != nullptr) return absl::OkStatus();
  if (memory_.root.empty()) {
    return absl::FailedPreconditionError(
        StrCat("run '", run.id(),
               "' has memory steps (schedule.memory_every_steps) but this daemon has no memory "
               "tier; set [memory] root to a directory on tmpfs, or drop memory_every_steps"));
  }
  storage::RecoveryReport report;
  CKPTD_ASSIGN_OR_RETURN(run.mem_dir_,
                         storage::RunDir::Open(env_, StrCat(memory_.root, "/", run.id()), &report));
  LogRecovery(run.id(), report, *run.mem_dir_, "memory tier: ");
  return absl::OkStatus();
}

uint64_t RunRegistry::MemoryTierBytes() const {
  uint64_t total = 0;
  for (const std::shared_ptr<Run>& run : List()) {
    absl::MutexLock lock(&run->mu());
    if (run->mem_dir_ != nullptr) total += run->mem_dir_->total_bytes();
  }
  return total;
}

void RunRegistry::EvictMemory(Run& run, const std::vector<uint64_t>& steps, std::string_view why) {
  for (uint64_t step : steps) {
    spdlog::info("memory step evicted run={} step={} why=\"{}\"", run.id(), step, why);
    metrics::Metrics::Get().CountDeletion(run.id(), "memory_tier");
    run.PublishLocked({.type = Event::Type::kDeleted,
                       .run_id = run.id(),
                       .step = step,
                       .time_utc = FormatUtc(NowSeconds()),
                       .reason = StrCat("memory tier: ", why)});
  }
}

void RunRegistry::EvictMemoryForRoom(Run& run, const std::vector<uint64_t>& steps,
                                     uint64_t for_step) {
  EvictMemory(run, steps, StrCat("room for step ", for_step, " under [memory] max_bytes"));
}

void RunRegistry::CommittedToMemory(Run& run, const storage::CheckpointRecord& record,
                                    std::string_view details) {
  metrics::Metrics::Get().CountSave(run.id(), "memory");
  spdlog::info("memory step committed run={} step={} {}file={}", run.id(), record.step, details,
               record.model_path);
  run.Publish({.type = Event::Type::kCommitted,
               .run_id = run.id(),
               .step = record.step,
               .record = record,
               .time_utc = FormatUtc(NowSeconds())});
  if (tier_observer_ != nullptr) tier_observer_->OnTierCommitted(run, record, Tier::kMemory);
  absl::MutexLock lock(&run.mu());
  storage::RunDir* mem = run.mem_dir_.get();
  if (mem == nullptr) return;
  auto above = mem->DeleteAbove(record.step);
  if (!above.ok()) {
    spdlog::error("memory tier run={} step={}: evicting the steps above it: {}", run.id(),
                  record.step, above.status().message());
  } else {
    EvictMemory(run, *above, StrCat("step ", record.step, " was saved again after a restore"));
  }
  std::vector<policy::MemoryStep> held;
  for (const auto& [step, r] : mem->catalog()) held.push_back({step, r.total_bytes()});
  const policy::Schedule schedule = EffectiveSchedule(run);
  const uint32_t keep = schedule.memory_keep_last ? schedule.memory_keep_last : memory_.keep_last;
  std::vector<uint64_t> evicted;
  for (uint64_t step : policy::MemoryEvictions(held, record.step, keep, 0)) {
    if (absl::Status st = mem->Delete(step); !st.ok()) {
      spdlog::error("memory tier run={} step={}: evicting: {}", run.id(), step, st.message());
      continue;
    }
    evicted.push_back(step);
  }
  EvictMemory(run, evicted, StrCat("memory_keep_last=", keep));
}

policy::Schedule RunRegistry::EffectiveSchedule(const Run& run) const {
  policy::Schedule s;
  if (run.settings_ && run.settings_->schedule) {
    s = *run.settings_->schedule;
  } else {
    absl::MutexLock lock(&defaults_mu_);
    s = default_schedule_;
  }
  // memory_auto: the interval in force is the measured one, else the start.
  if (s.memory_auto) {
    s.memory_every_steps = run.auto_interval_     ? run.auto_interval_
                           : s.memory_every_steps ? s.memory_every_steps
                                                  : 10;
  }
  return s;
}

void RunRegistry::ObserveStep(Run& run, uint64_t step, double now) {
  run.ObserveStep(step, now);
  UpdateAutoInterval(run);
}

void RunRegistry::RecordStall(Run& run, double seconds) {
  absl::MutexLock lock(&run.mu());
  run.stall_s_ = run.stall_s_ > 0 ? 0.8 * run.stall_s_ + 0.2 * seconds : seconds;
  UpdateAutoInterval(run);
}

void RunRegistry::UpdateAutoInterval(Run& run) {
  const policy::Schedule s = EffectiveSchedule(run);
  if (!s.memory_auto) return;
  const std::optional<uint64_t> n =
      policy::AutoMemoryInterval(run.stall_s_, run.step_s_, s.memory_overhead_budget);
  if (!n || *n == run.auto_interval_) return;
  spdlog::info(
      "memory tier: auto interval run={} memory_every_steps={} (was {}) stall={:.6f}s "
      "step={:.6f}s budget={:g}",
      run.id(), *n, run.auto_interval_, run.stall_s_, run.step_s_,
      s.memory_overhead_budget > 0 ? s.memory_overhead_budget : 0.01);
  run.auto_interval_ = *n;
}

policy::RetentionPolicy RunRegistry::EffectiveRetention(const Run& run) const {
  if (run.settings_ && run.settings_->retention) return *run.settings_->retention;
  absl::MutexLock lock(&defaults_mu_);
  return default_retention_;
}

void RunRegistry::SetDefaults(const policy::Schedule& s, const policy::RetentionPolicy& r,
                              const policy::DiskGuard& g) {
  absl::MutexLock lock(&defaults_mu_);
  default_schedule_ = s;
  default_retention_ = r;
  disk_guard_ = g;
}

policy::DiskGuard RunRegistry::disk_guard() const {
  absl::MutexLock lock(&defaults_mu_);
  return disk_guard_;
}

absl::StatusOr<RunRegistry::RetentionResult> RunRegistry::RunRetention(Run& run, bool dry) {
  absl::MutexLock lock(&run.mu());
  return RunRetentionLocked(run, dry);
}

absl::StatusOr<RunRegistry::RetentionResult> RunRegistry::RunRetentionLocked(Run& run, bool dry) {
  RetentionResult r;
  const policy::RetentionPolicy policy = EffectiveRetention(run);
  r.policy = policy::Describe(policy);
  if (!run.write_error_.empty()) {
    r.paused = StrCat("retention is paused while a write error is unresolved: ", run.write_error_);
    dry = true;
  }
  auto outcome = ApplyRetention(run.dir(), run.pins_, policy, run.RetentionHolds(), NowSeconds(),
                                dry ? DryRun::kYes : DryRun::kNo);
  if (!outcome.ok()) {
    spdlog::error("retention run={} failed: {}", run.id(), ToStd(outcome.status().message()));
    return outcome.status();
  }
  r.plan = std::move(outcome->plan);
  r.deleted = std::move(outcome->deleted);
  for (uint64_t step : r.deleted) {
    std::string reason;
    for (const auto& d : r.plan) {
      if (d.step == step) reason = d.reason;
    }
    spdlog::info("retention deleted run={} step={} reason=\"{}\"", run.id(), step, reason);
    metrics::Metrics::Get().CountDeletion(run.id(), "retention");
    run.PublishLocked({.type = Event::Type::kDeleted,
                       .run_id = run.id(),
                       .step = step,
                       .time_utc = FormatUtc(NowSeconds()),
                       .reason = reason});
  }
  return r;
}

absl::Status RunRegistry::MarkFinished(Run* run) {
  CKPTD_TRY(env::WriteFileAtomically(env_, StrCat(run->run_dir(), "/", storage::kRunStateFile),
                                     kFinished));
  absl::MutexLock lock(&run->mu());
  run->state_ = RunState::kFinished;
  return absl::OkStatus();
}

void RunRegistry::Committed(Run& run, const storage::CheckpointRecord& record, CommitSource source,
                            std::string_view details) {
  bool is_latest = false;
  {
    absl::MutexLock lock(&run.mu());
    is_latest = run.dir()->latest_step() == record.step;
  }
  const char* what = source == CommitSource::kSave   ? "save committed"
                     : source == CommitSource::kStep ? "multi-rank: part committed"
                                                     : "tier: fetched step committed";
  if (source != CommitSource::kFetched) metrics::Metrics::Get().CountSave(run.id(), "committed");
  spdlog::info("{} run={} step={} {}file={}{}", what, run.id(), record.step, details,
               record.model_path, is_latest ? " latest" : "");
  run.Publish({.type = Event::Type::kCommitted,
               .run_id = run.id(),
               .step = record.step,
               .record = record,
               .is_latest = is_latest,
               .time_utc = FormatUtc(NowSeconds())});
  if (source == CommitSource::kSave) {
    // The disk holds this step now; memory steps at or above it belong to
    // a continuation the trainer abandoned when it resumed from older.
    absl::MutexLock lock(&run.mu());
    if (storage::RunDir* mem = run.mem_dir_.get(); mem != nullptr && record.step > 0) {
      auto gone = mem->DeleteAbove(record.step - 1);
      if (gone.ok()) {
        EvictMemory(run, *gone, StrCat("step ", record.step, " is on disk"));
      } else {
        spdlog::error("memory tier run={} step={}: evicting: {}", run.id(), record.step,
                      gone.status().message());
      }
    }
  }
  if (observer_ != nullptr) observer_->OnCommitted(run, record, source);
  if (tier_observer_ != nullptr && source == CommitSource::kSave && record.world_size == 0) {
    tier_observer_->OnTierCommitted(run, record, Tier::kDisk);
  }
  // A fetched step is one the trainer asked back: retention must not take
  // it before it is restored.
  if (source != CommitSource::kFetched) (void)RunRetention(run, /*dry=*/false);
}

void RunRegistry::Staged(Run& run, const storage::CheckpointRecord& record) {
  if (observer_ != nullptr) observer_->OnStaged(run, record);
}

absl::StatusOr<storage::CheckpointRecord> RunRegistry::CommitPart(Run& run, uint64_t step) {
  absl::StatusOr<storage::CheckpointRecord> record;
  {
    absl::MutexLock lock(&run.mu());
    record = run.dir()->CommitPart(step);
  }
  if (!record.ok()) {
    spdlog::error(
        "multi-rank: run={} step={}: the step is committed but this node's part could not be: {}",
        run.id(), step, record.status().message());
    return record.status();
  }
  Committed(run, *record, CommitSource::kStep,
            StrCat("rank=", record->rank, " world_size=", record->world_size, " "));
  return record;
}

void RunRegistry::AbortPart(Run& run, uint64_t step, const std::string& reason) {
  {
    absl::MutexLock lock(&run.mu());
    if (absl::Status st = run.dir()->AbortPart(step); !st.ok()) {
      spdlog::error("multi-rank: run={} step={}: removing the aborted part: {}", run.id(), step,
                    st.message());
    }
  }
  RecordFailure(run, step,
                absl::AbortedError(StrCat("multi-rank step ", step, " aborted: ", reason)),
                "part=removed ");
}

namespace {

// One log line, one count and one QUARANTINED event per file moved aside
// after a step was adopted or scrubbed (`what`: the log's verb; `by`: the
// metric's label).
void ReportQuarantined(Run& run, uint64_t step, const std::vector<storage::QuarantinedFile>& files,
                       std::string_view what, const std::string& by) {
  for (const storage::QuarantinedFile& q : files) {
    spdlog::error("{} run={} step={} quarantined {} as {}: {}", what, run.id(), step, q.from,
                  q.path, q.reason);
    metrics::Metrics::Get().CountQuarantined(run.id(), by);
    run.Publish(Event{.type = Event::Type::kQuarantined,
                      .run_id = run.id(),
                      .step = step,
                      .error = StrCat(q.from, " -> ", q.path, ": ", q.reason),
                      .time_utc = FormatUtc(NowSeconds())});
  }
}

}  // namespace

absl::StatusOr<storage::CheckpointRecord> RunRegistry::Adopt(Run& run, std::optional<uint64_t> step,
                                                             const PlaceFn& place) {
  absl::MutexLock save(&run.save_mu());  // no save writes into weights/ meanwhile
  std::string weights;
  {
    absl::MutexLock lock(&run.mu());
    if (step) {
      if (const storage::CheckpointRecord* r = run.dir()->Find(*step)) return *r;
    }
    weights = run.dir()->weights_dir();
  }
  CKPTD_ASSIGN_OR_RETURN(uint64_t placed, place(weights));
  storage::RecoveryReport report;
  absl::StatusOr<storage::CheckpointRecord> record;
  {
    absl::MutexLock lock(&run.mu());
    record = run.dir()->Adopt(placed, &report);
  }
  for (const std::string& path : report.removed) {
    spdlog::info("adopt run={} step={} removed {}", run.id(), placed, path);
  }
  ReportQuarantined(run, placed, report.quarantined, "adopt", "recovery");
  if (!record.ok()) return record.status();
  Committed(run, *record, CommitSource::kFetched, "");
  return record;
}

absl::StatusOr<storage::RunDir::Damaged> RunRegistry::QuarantineDamaged(Run& run, uint64_t step,
                                                                        const std::string& path,
                                                                        const std::string& reason) {
  absl::StatusOr<storage::RunDir::Damaged> damaged;
  {
    absl::MutexLock save(&run.save_mu());  // no save writes into weights/ meanwhile
    absl::MutexLock lock(&run.mu());
    damaged = run.dir()->QuarantineDamaged(step, path, reason);
    if (!damaged.ok()) return damaged.status();
    if (damaged->step_lost) {
      const std::optional<uint64_t> latest = run.dir()->latest_step();
      spdlog::error("scrub run={} step={} is no longer a checkpoint; latest is {}", run.id(), step,
                    latest ? storage::ModelFileName(*latest) : std::string("(none)"));
    }
  }
  ReportQuarantined(run, step, damaged->files, "scrub", "scrub");
  if (damaged->step_lost && observer_ != nullptr) observer_->OnQuarantined(run, step);
  return damaged;
}

absl::StatusOr<storage::CheckpointRecord> RunRegistry::Pin(Run& run, uint64_t step,
                                                           const std::string& reason) {
  absl::MutexLock lock(&run.mu());
  const storage::CheckpointRecord* r = run.dir()->Find(step);
  if (r == nullptr) {
    return absl::NotFoundError(StrCat("run '", run.id(), "' has no checkpoint at step ", step));
  }
  CKPTD_TRY(run.pins_.Pin(step, reason));
  spdlog::info("pinned run={} step={} reason=\"{}\"", run.id(), step, reason);
  return *r;
}

absl::Status RunRegistry::Unpin(Run& run, uint64_t step) {
  absl::MutexLock lock(&run.mu());
  if (absl::Status st = run.pins_.Unpin(step); !st.ok()) {
    return absl::Status(st.code(), StrCat("run '", run.id(), "': ", st.message()));
  }
  spdlog::info("unpinned run={} step={}", run.id(), step);
  return absl::OkStatus();
}

void RunRegistry::CloseAllSubscriptions() {
  for (const auto& run : List()) run->CloseSubscriptions();
}

}  // namespace ckptd::scheduler
