// Joining the runs' commits and the object-storage tier.
#include "daemon/replication/replicator.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/gguf/reader.h"
#include "daemon/metrics/metrics.h"
#include "daemon/tier/fetch.h"

namespace ckptd::replication {
namespace {

constexpr std::string_view kStoreErrorPrefix = "object store: ";

// An answer about the object store for a client.
absl::Status StoreError(const absl::Status& st) {
  if (st.ok() || ToStd(st.message()).starts_with(kStoreErrorPrefix)) return st;
  return absl::Status(st.code(), StrCat(kStoreErrorPrefix, st.message()));
}

bool Replicated(const scheduler::RunSnapshot& s) { return !s.tier.local_only; }

}  // namespace

Replicator::Replicator(env::Env* env, scheduler::RunRegistry* registry,
                       std::unique_ptr<tier::ObjectStore> store, ReplicationOptions options)
    : env_(env),
      registry_(registry),
      store_(std::move(store)),
      options_(std::move(options)),
      uploader_(env, store_.get(), options_.tier, this, this) {}

Replicator::~Replicator() { Stop(); }

void Replicator::Start() {
  RecoverUploads();
  registry_->SetObserver(this);
  metrics::Metrics::Get().SetTier(static_cast<int64_t>(uploader_.queue_depth()), true);
  // Before the uploader's thread, whose events poke it.
  coordinator_ =
      std::make_unique<tier::StepCoordinator>(&uploader_, this, options_.coordinator_poll_s);
  coordinator_->Start();
  uploader_.Start();
}

void Replicator::Stop() {
  if (coordinator_) coordinator_->Stop();
  uploader_.Stop();
}

void Replicator::RecoverUploads() {
  for (const auto& run : registry_->List()) {
    const scheduler::RunSnapshot s = run->Snapshot();
    if (!Replicated(s)) continue;
    std::vector<storage::CheckpointRecord> local;
    for (const auto& [step, record] : *s.catalog) local.push_back(record);
    // A multi-rank run's parts waiting for their verdict: reported (or
    // uploaded and reported) before the verdict can come.
    for (const auto& [step, record] : *s.pending) local.push_back(record);
    std::sort(local.begin(), local.end(),
              [](const auto& a, const auto& b) { return a.step < b.step; });
    std::optional<uint32_t> rank;
    if (s.multi_rank.world_size > 1) rank = s.multi_rank.rank;
    if (absl::Status st = uploader_.Recover(run->id(), run->run_dir(), local, rank); !st.ok()) {
      spdlog::warn("tier: run={}: {}", run->id(), st.message());
    }
    for (const auto& r : local) {
      if (uploader_.StateOf(run->id(), r.step) == "queued") run->HoldForUpload(r.step);
    }
  }
}

void Replicator::OnCommitted(scheduler::Run& run, const storage::CheckpointRecord& record,
                             scheduler::CommitSource source) {
  if (source != scheduler::CommitSource::kSave) {
    // Committed from the store's side (a step's verdict, a fetch): it is
    // there already.
    (void)uploader_.MarkUploaded(run.id(), run.run_dir(), record.step);
    return;
  }
  if (!Replicated(run.Snapshot())) return;
  run.HoldForUpload(record.step);
  if (absl::Status st = uploader_.Enqueue({run.id(), run.run_dir(), record}); !st.ok()) {
    spdlog::error("tier: run={} step={} not queued for upload: {}", run.id(), record.step,
                  st.message());
  }
}

void Replicator::OnStaged(scheduler::Run& run, const storage::CheckpointRecord& record) {
  if (absl::Status st = uploader_.Enqueue({run.id(), run.run_dir(), record}); !st.ok()) {
    spdlog::error("tier: run={} step={} part not queued for upload: {}", run.id(), record.step,
                  st.message());
  }
  if (coordinator_) coordinator_->Poke(run.id());
}

std::optional<std::string> Replicator::PrefixOf(const std::string& run_id) const {
  auto run = registry_->Get(run_id);
  if (!run.ok()) return std::nullopt;
  const scheduler::RunSnapshot s = (*run)->Snapshot();
  return s.tier.prefix.empty() ? options_.tier.prefix : s.tier.prefix;
}

std::optional<tier::RemoteRules> Replicator::RulesOf(const std::string& run_id) const {
  auto run = registry_->Get(run_id);
  if (!run.ok()) return std::nullopt;
  const scheduler::RunSnapshot s = (*run)->Snapshot();
  return tier::RemoteRules{
      .prefix = s.tier.prefix.empty() ? options_.tier.prefix : s.tier.prefix,
      .remote_retention = s.tier.remote_retention.value_or(options_.tier.remote_retention),
      .policy = s.retention,
      .pins = s.pins};
}

void Replicator::OnUploadEvent(const tier::UploadEvent& e) {
  const bool uploaded = e.type == tier::UploadEventType::kUploaded;
  if (uploaded) {
    metrics::Metrics::Get().RecordUpload(e.run_id, e.bytes, e.copied_bytes, e.seconds);
  } else {
    metrics::Metrics::Get().CountUploadFailure(e.run_id);
  }
  auto run = registry_->Get(e.run_id);
  if (!run.ok()) return;
  // A multi-rank part reported: its verdict may be due now.
  if (uploaded && coordinator_) coordinator_->Poke(e.run_id);
  if (uploaded) {
    (*run)->ReleaseUploadHold(e.step);
    // Steps local retention kept only because they were not in the store
    // yet go now, not at the next commit.
    (void)registry_->RunRetention(**run, /*dry=*/false);
  }
  (*run)->Publish(
      {.type = uploaded ? scheduler::Event::Type::kUploaded : scheduler::Event::Type::kUploadFailed,
       .run_id = e.run_id,
       .step = e.step,
       .error = e.error,
       .time_utc = FormatUtc(NowSeconds())});
}

std::vector<tier::MultiRankRun> Replicator::MultiRankRuns() {
  std::vector<tier::MultiRankRun> out;
  for (const auto& run : registry_->List()) {
    const scheduler::RunSnapshot s = run->Snapshot();
    tier::MultiRankRun m{.run_id = run->id(), .run_dir = run->run_dir()};
    if (s.multi_rank.world_size > 1 && Replicated(s)) {
      m.rank = s.multi_rank.rank;
      m.world_size = s.multi_rank.world_size;
      m.coordinator = s.multi_rank.coordinator;
      m.part_timeout_s = s.multi_rank.part_timeout_s;
    }
    for (const auto& [step, record] : *s.pending) {
      m.pending.insert(step);
      if (m.world_size == 0) {  // reopened as another world: the part's own
        m.rank = record.rank;
        m.world_size = record.world_size;
      }
    }
    if (m.coordinator || !m.pending.empty()) out.push_back(std::move(m));
  }
  return out;
}

void Replicator::CommitPart(const std::string& run_id, uint64_t step) {
  auto run = registry_->Get(run_id);
  if (run.ok()) (void)registry_->CommitPart(**run, step);
}

void Replicator::AbortPart(const std::string& run_id, uint64_t step, const std::string& reason) {
  auto run = registry_->Get(run_id);
  if (!run.ok()) return;
  registry_->AbortPart(**run, step, reason);  // the coordinator withdraws its upload
}

absl::StatusOr<storage::CheckpointRecord> Replicator::Fetch(const std::string& run_id,
                                                            std::optional<uint64_t> step) {
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<scheduler::Run> run, registry_->Get(run_id));
  const scheduler::RunSnapshot s = run->Snapshot();
  std::optional<uint32_t> rank;
  if (s.multi_rank.world_size > 1) rank = s.multi_rank.rank;
  const tier::FetchOptions options{.prefix = PrefixOf(run_id).value_or(options_.tier.prefix),
                                   .parallel = options_.tier.parallel_parts,
                                   .max_memory_bytes = options_.tier.max_memory_bytes,
                                   .rank = rank};
  absl::StatusOr<storage::CheckpointRecord> record =
      registry_->Adopt(*run, step, [&](const std::string& weights) -> absl::StatusOr<uint64_t> {
        CKPTD_ASSIGN_OR_RETURN(tier::FetchResult got,
                               tier::FetchStep(env_, *store_, options, run_id, step, weights));
        spdlog::info("tier: fetched run={} step={} files={} bytes={} seconds={:.3f}", run_id,
                     got.step, got.files.size(), got.bytes, got.seconds);
        return got.step;
      });
  if (!record.ok() && absl::IsUnavailable(record.status())) return StoreError(record.status());
  return record;
}

void Replicator::OnQuarantined(scheduler::Run& run, uint64_t step) {
  const std::string state = UploadState(run.id(), step);
  if (state != "uploaded") {
    spdlog::error("scrub run={} step={}: no copy in the object store to heal from ({})", run.id(),
                  step, state.empty() ? "never uploaded" : state);
    return;
  }
  auto healed = Fetch(run.id(), step);
  if (healed.ok()) {
    spdlog::info("scrub run={} step={} healed from the object store ({} bytes)", run.id(), step,
                 healed->total_bytes());
  } else {
    spdlog::error("scrub run={} step={}: healing from the object store failed: {}", run.id(), step,
                  healed.status().message());
  }
}

std::string Replicator::RemoteDamage(const std::string& run_id, uint64_t step,
                                     const std::string& name, uint64_t* read) {
  auto unanswered = [&](const absl::Status& st) {
    spdlog::warn("scrub run={} step={}: cannot check the object store's copy of {}: {}", run_id,
                 step, name, st.message());
    return std::string();
  };
  auto manifest = uploader_.RemoteManifest(run_id, step);
  if (absl::IsNotFound(manifest.status())) return "its manifest is missing";
  if (!manifest.ok()) return unanswered(manifest.status());
  const auto& files = manifest->facts.files;
  auto file = std::find_if(files.begin(), files.end(),
                           [&](const tier::RemoteFile& f) { return f.name == name; });
  if (file == files.end()) return "";  // not a file of the step as uploaded
  auto head = store_->Head(file->key);
  if (!head.ok()) return unanswered(head.status());
  const std::string url = store_->UrlOf(file->key);
  if (!head->has_value()) return StrCat(url, " is missing");
  if ((*head)->size != file->size) {
    return StrCat(url, " has ", (*head)->size, " bytes, its manifest says ", file->size);
  }
  tier::ObjectSource src(store_.get(), file->key, file->size);
  auto header = gguf::ReadHeader(src);
  const absl::Status st = header.ok() ? gguf::Verify(src, *header).status() : header.status();
  *read += src.bytes_fetched();
  if (st.ok() || absl::IsFailedPrecondition(st)) return "";  // intact, or carries no digests
  // Deleted between the HEAD and the reads: missing, as if the HEAD had seen it.
  if (absl::IsNotFound(st)) return StrCat(url, " is missing");
  if (tier::IsTransient(st)) return unanswered(st);
  return StrCat(url, ": ", st.message());
}

uint64_t Replicator::OnIntact(scheduler::Run& run, uint64_t step, const std::string& path) {
  if (UploadState(run.id(), step) != "uploaded") return 0;
  const scheduler::RunSnapshot snap = run.Snapshot();
  auto record = snap.catalog->find(step);
  // A multi-rank step's copy is its ranks' together: the coordinator's.
  if (record == snap.catalog->end() || record->second.world_size > 0) return 0;
  uint64_t read = 0;
  const std::string damage = RemoteDamage(run.id(), step, path.substr(path.rfind('/') + 1), &read);
  if (damage.empty()) return read;
  spdlog::error(
      "scrub run={} step={}: the object store's copy cannot be trusted ({}); uploading the step "
      "again from its intact local files",
      run.id(), step, damage);
  metrics::Metrics::Get().CountRemoteRepair(run.id());
  run.HoldForUpload(step);
  if (absl::Status st = uploader_.Enqueue({run.id(), run.run_dir(), record->second}); !st.ok()) {
    spdlog::error("tier: run={} step={} not queued for upload again: {}", run.id(), step,
                  st.message());
  }
  return read;
}

absl::StatusOr<tier::RemotePlan> Replicator::PlanRemote(const std::string& run_id, bool apply) {
  absl::StatusOr<tier::RemotePlan> plan = uploader_.PlanRemote(run_id, apply, /*retry=*/false);
  if (!plan.ok()) return StoreError(plan.status());
  return plan;
}

std::string Replicator::UploadState(const std::string& run_id, uint64_t step) const {
  return uploader_.StateOf(run_id, step);
}

std::optional<std::string> Replicator::Unhealthy() const {
  tier::Uploader::Health h = uploader_.health();
  if (h.healthy) return std::nullopt;
  return h.error;
}

size_t Replicator::queue_depth() const { return uploader_.queue_depth(); }

absl::StatusOr<std::set<uint64_t>> Replicator::RemoteSteps(const std::string& run_id) {
  absl::StatusOr<std::set<uint64_t>> steps = uploader_.RemoteSteps(run_id);
  if (!steps.ok()) return StoreError(steps.status());
  return steps;
}

absl::StatusOr<tier::AgreedRestore> Replicator::AgreeOnRestore(
    const tier::RestoreAgreementRequest& request, const std::function<bool()>& cancelled) {
  absl::StatusOr<tier::AgreedRestore> agreed =
      tier::AgreeOnRestore(*store_, uploader_.KeysOf(request.run_id), request, cancelled);
  if (!agreed.ok() && absl::IsUnavailable(agreed.status())) return StoreError(agreed.status());
  return agreed;
}

absl::StatusOr<tier::StepManifest> Replicator::RemoteManifest(const std::string& run_id,
                                                              uint64_t step) {
  absl::StatusOr<tier::StepManifest> m = uploader_.RemoteManifest(run_id, step);
  if (!m.ok()) return StoreError(m.status());
  return m;
}

}  // namespace ckptd::replication
