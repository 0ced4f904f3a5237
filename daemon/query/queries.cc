// The read side's answers.
#include "daemon/query/queries.h"

#include <algorithm>
#include <charconv>
#include <functional>

#include "daemon/api/convert.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/query/lineage.h"

namespace ckptd::query {
namespace {

v1::RunState ToProto(scheduler::RunState s) {
  switch (s) {
    case scheduler::RunState::kIdle:
      return v1::RUN_STATE_IDLE;
    case scheduler::RunState::kOpen:
      return v1::RUN_STATE_OPEN;
    case scheduler::RunState::kFinished:
      return v1::RUN_STATE_FINISHED;
  }
  return v1::RUN_STATE_UNSPECIFIED;
}

// A step only the object store holds, as listed: from its manifest.
// `url_of` names an object for a reader ("s3://bucket/key").
void DescribeRemote(const tier::StepManifest& m,
                    const std::function<std::string(const std::string&)>& url_of,
                    v1::CheckpointInfo* out) {
  out->set_uuid(m.facts.uuid);
  out->set_content_digest(m.facts.content_digest);
  out->set_time_utc(m.facts.time_utc);
  for (const auto& [name, value] : m.facts.metrics) (*out->mutable_metrics())[name] = value;
  for (const tier::RemoteFile& f : m.facts.files) {
    const std::string url = url_of(f.key);
    if (f.role == "model") {
      out->set_file(url);
      out->set_size_bytes(f.size);
    } else if (f.role == "train") {
      out->set_train_file(url);
      out->set_train_size_bytes(f.size);
    } else if (f.role.starts_with("export:")) {
      v1::ExportInfo* e = out->add_exports();
      e->set_name(f.role.substr(7));
      e->set_file(url);
      e->set_size_bytes(f.size);
    }
  }
}

}  // namespace

std::string Readiness::Summary() const {
  if (ready) return "ready";
  std::string out;
  for (const std::string& r : reasons) StrAppend(&out, out.empty() ? "" : "; ", r);
  return out;
}

v1::RunInfo Queries::RunInfo(const scheduler::RunSnapshot& run) const {
  v1::RunInfo info;
  info.set_run_id(run.id);
  info.set_run_dir(run.run_dir);
  info.set_state(ToProto(run.state));
  if (run.latest_step) {
    info.set_last_step(*run.latest_step);
    info.set_latest_file(run.Find(*run.latest_step)->model_path);
  }
  info.set_checkpoint_count(static_cast<uint32_t>(run.catalog->size()));
  info.set_total_bytes(run.total_bytes());
  *info.mutable_schedule() = api::ToProto(run.schedule);
  *info.mutable_retention() = api::ToProto(run.retention);
  info.set_last_error(run.last_error);
  info.set_write_error(run.write_error);
  if (run.opened) {
    for (const std::string& e : run.export_names) info.add_exports(e);
    info.set_base_model_uuid(run.base_model_uuid);
    info.set_world_size(run.multi_rank.world_size);
    info.set_rank(run.multi_rank.rank);
  }
  for (const auto& [step, record] : *run.pending) info.add_pending_steps(step);
  if (auto m = run.memory_step()) {
    info.set_memory_step(*m);
    info.set_memory_count(static_cast<uint32_t>(run.memory_catalog->size()));
  }
  if (run.last_seen_step) info.set_last_seen_step(*run.last_seen_step);
  info.set_measured_step_seconds(run.step_seconds);
  info.set_measured_stall_seconds(run.stall_seconds);
  if (run.last_active_s > 0) info.set_last_active_utc(FormatUtc(run.last_active_s));
  return info;
}

absl::StatusOr<v1::Lineage> Queries::Lineage(const std::string& uuid,
                                             const std::string& run_id) const {
  if (!uuid.empty() && !run_id.empty()) {
    return absl::InvalidArgumentError("give a uuid or a run_id, not both");
  }
  std::vector<v1::LineageNode> files;
  std::map<std::string, std::string> run_base;
  for (const auto& r : registry_->List()) {
    const scheduler::RunSnapshot snap = r->Snapshot();
    const scheduler::RunSnapshot* run = &snap;
    const auto& catalog = *run->catalog;
    const std::optional<uint64_t> latest = run->latest_step;
    std::map<std::string, uint64_t> newest_export;
    for (const auto& [step, c] : catalog) {
      for (const auto& e : c.exports) newest_export[e.name] = step;
    }
    std::string base = run->base_model_uuid;
    for (const auto& [step, r] : catalog) {
      if (base.empty()) base = r.base_model_uuid;
      std::map<std::string_view, const storage::ExportRecord*> by_name;
      for (const auto& e : r.exports) by_name[e.name] = &e;
      v1::LineageNode& n = files.emplace_back();
      n.set_id(CheckpointNodeId(run->id, step));
      n.set_uuid(r.uuid);
      n.set_kind(v1::LineageNode::KIND_CHECKPOINT);
      n.set_parent_uuid(!r.parent_uuid.empty() ? r.parent_uuid : r.base_model_uuid);
      n.set_run_id(run->id);
      n.set_step(step);
      n.set_file(r.model_path);
      n.set_time_utc(r.time_utc);
      n.set_is_latest(latest == step);
      n.set_pinned(run->pins.contains(step));
      for (const auto& e : r.exports) {
        v1::LineageNode& x = files.emplace_back();
        x.set_id(ExportNodeId(run->id, step, e.name));
        x.set_uuid(e.uuid);
        x.set_kind(v1::LineageNode::KIND_EXPORT);
        // An adapter hangs off the base export it applies to.
        if (auto b = by_name.find(e.base); !e.base.empty() && b != by_name.end()) {
          x.set_parent_uuid(b->second->uuid);
          x.set_parent_id(ExportNodeId(run->id, step, e.base));
        } else {
          x.set_parent_uuid(r.uuid);
          x.set_parent_id(CheckpointNodeId(run->id, step));
        }
        x.set_run_id(run->id);
        x.set_step(step);
        x.set_name(e.name);
        x.set_file(e.path);
        x.set_time_utc(r.time_utc);
        x.set_is_latest(newest_export[e.name] == step);
        x.set_profile(e.profile);
      }
    }
    if (!base.empty()) run_base[run->id] = base;
  }
  return Focus(CompleteGraph(std::move(files), run_base), uuid, run_id);
}

v1::ListRunsResponse Queries::ListRuns() const {
  v1::ListRunsResponse resp;
  for (const auto& run : registry_->List()) *resp.add_runs() = RunInfo(run->Snapshot());
  return resp;
}

absl::StatusOr<v1::RunInfo> Queries::GetRun(const std::string& run_id) const {
  CKPTD_ASSIGN_OR_RETURN(auto run, registry_->Get(run_id));
  return RunInfo(run->Snapshot());
}

void Queries::Describe(const scheduler::RunSnapshot& run, const storage::CheckpointRecord& r,
                       const std::vector<policy::RetentionDecision>& plan,
                       v1::CheckpointInfo* out) const {
  api::ToProto(r, run.latest_step == r.step, out);
  if (auto pin = run.pins.find(r.step); pin != run.pins.end()) {
    out->set_pinned(true);
    out->set_pin_reason(pin->second);
  }
  auto it = std::lower_bound(plan.begin(), plan.end(), r.step,
                             [](const auto& d, uint64_t step) { return d.step < step; });
  if (it != plan.end() && it->step == r.step) {
    out->set_retention_keeps(it->keep);
    out->set_retention_reason(it->reason);
  }
  if (replicator_ != nullptr) out->set_upload_state(replicator_->UploadState(run.id, r.step));
  out->set_location(out->upload_state() == "uploaded" ? "both" : "local");
  out->set_pending(run.pending->contains(r.step));
}

void Queries::DescribeMemory(const scheduler::RunSnapshot& run, const storage::CheckpointRecord& r,
                             v1::CheckpointInfo* out) const {
  api::ToProto(r, false, out);
  out->set_location("memory");
  out->set_retention_keeps(true);
  const uint32_t keep = run.schedule.memory_keep_last ? run.schedule.memory_keep_last
                                                      : registry_->memory_tier().keep_last;
  out->set_retention_reason(StrCat("memory tier: the newest ", keep, " memory steps"));
}

void Queries::DescribeAny(const scheduler::RunSnapshot& run, const storage::CheckpointRecord& r,
                          scheduler::Tier tier, v1::CheckpointInfo* out) const {
  if (tier == scheduler::Tier::kMemory) return DescribeMemory(run, r, out);
  Describe(run, r, run.DryPlan(NowSeconds()), out);
}

absl::StatusOr<v1::CheckpointInfo> Queries::DescribeCheckpoint(const std::string& run_id,
                                                               uint64_t step) const {
  CKPTD_ASSIGN_OR_RETURN(auto run, registry_->Get(run_id));
  const scheduler::RunSnapshot snap = run->Snapshot();
  scheduler::Tier tier;
  const storage::CheckpointRecord* r = snap.FindAny(step, &tier);
  if (r == nullptr) {
    return absl::NotFoundError(StrCat("run '", run_id, "' has no checkpoint at step ", step));
  }
  v1::CheckpointInfo info;
  DescribeAny(snap, *r, tier, &info);
  return info;
}

absl::StatusOr<v1::ListCheckpointsResponse> Queries::ListCheckpoints(
    const v1::ListCheckpointsRequest& req) const {
  constexpr uint32_t kDefaultPage = 100, kMaxPage = 1000;
  if (req.page_size() > kMaxPage) {
    return absl::InvalidArgumentError(
        StrCat("page_size ", req.page_size(), " is over the maximum of ", kMaxPage));
  }
  uint64_t after = req.since_step();
  bool has_after = req.since_step() > 0;
  if (!req.page_token().empty()) {
    const std::string& tok = req.page_token();
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
    if (ec != std::errc() || end != tok.data() + tok.size()) {
      return absl::InvalidArgumentError(
          "page_token is not one this server returned; start again without it");
    }
    after = std::max(after, v);
    has_after = true;
  }
  const uint32_t page = req.page_size() == 0 ? kDefaultPage : req.page_size();
  CKPTD_ASSIGN_OR_RETURN(auto r, registry_->Get(req.run_id()));
  // The store's steps first (one LIST).
  std::set<uint64_t> remote;
  if (req.include_remote()) {
    if (replicator_ == nullptr) {
      return absl::FailedPreconditionError(
          "include_remote: this daemon has no object-storage tier ([tier.s3] endpoint is unset)");
    }
    CKPTD_ASSIGN_OR_RETURN(remote, replicator_->RemoteSteps(req.run_id()));
  }
  v1::ListCheckpointsResponse resp;
  std::vector<int> remote_only;  // indexes into resp.checkpoints
  bool more = false;
  {
    const scheduler::RunSnapshot snap = r->Snapshot();
    const scheduler::RunSnapshot* run = &snap;
    const auto& catalog = *snap.catalog;
    const auto plan = snap.DryPlan(NowSeconds());
    if (req.page_token().empty()) {
      for (const storage::QuarantinedFile& q : snap.quarantined) {
        v1::QuarantinedFile* out = resp.add_quarantined();
        out->set_file(q.path);
        out->set_size_bytes(q.bytes);
        out->set_reason(q.reason);
      }
    }
    // Disk, memory tier and store merged by step; a step on disk is listed
    // once (a memory copy of it is about to be evicted).
    static const storage::Catalog kNone;
    const storage::Catalog& memory = snap.memory_catalog ? *snap.memory_catalog : kNone;
    auto it = has_after ? catalog.upper_bound(after) : catalog.begin();
    auto mit = has_after ? memory.upper_bound(after) : memory.begin();
    auto rit = has_after ? remote.upper_bound(after) : remote.begin();
    while (it != catalog.end() || mit != memory.end() || rit != remote.end()) {
      if (static_cast<uint32_t>(resp.checkpoints_size()) == page) {
        more = true;
        break;
      }
      uint64_t next = UINT64_MAX;
      if (it != catalog.end()) next = it->first;
      if (mit != memory.end()) next = std::min(next, mit->first);
      if (rit != remote.end()) next = std::min(next, *rit);
      const bool on_disk = it != catalog.end() && it->first == next;
      const bool in_memory = mit != memory.end() && mit->first == next;
      const bool in_store = rit != remote.end() && *rit == next;
      if (in_memory) ++mit;
      if (in_store) ++rit;
      v1::CheckpointInfo* info = resp.add_checkpoints();
      if (on_disk) {
        Describe(*run, it->second, plan, info);
        if (in_store) info->set_location("both");
        ++it;
        continue;
      }
      if (in_memory) {
        DescribeMemory(*run, std::prev(mit)->second, info);
        continue;
      }
      info->set_step(next);
      info->set_location("remote");
      info->set_upload_state("uploaded");
      info->set_retention_reason("only in the object store: local retention does not apply");
      if (auto pin = run->pins.find(next); pin != run->pins.end()) {
        info->set_pinned(true);
        info->set_pin_reason(pin->second);
      }
      remote_only.push_back(resp.checkpoints_size() - 1);
    }
  }
  // Remote-only steps described from their manifests. A manifest deleted
  // since the LIST (remote retention) leaves the entry bare rather than
  // failing the listing.
  for (int i : remote_only) {
    v1::CheckpointInfo* info = resp.mutable_checkpoints(i);
    absl::StatusOr<tier::StepManifest> m = replicator_->RemoteManifest(req.run_id(), info->step());
    if (absl::IsNotFound(m.status())) continue;
    if (!m.ok()) return m.status();
    DescribeRemote(
        *m, [&](const std::string& key) { return replicator_->UrlOf(key); }, info);
  }
  if (more && resp.checkpoints_size() > 0) {
    resp.set_next_page_token(std::to_string(resp.checkpoints().rbegin()->step()));
  }
  return resp;
}

absl::StatusOr<v1::CheckpointDetail> Queries::GetCheckpoint(const std::string& run_id,
                                                            uint64_t step) const {
  CKPTD_ASSIGN_OR_RETURN(auto run, registry_->Get(run_id));
  v1::CheckpointDetail resp;
  storage::CheckpointRecord record;
  {
    const scheduler::RunSnapshot snap = run->Snapshot();
    scheduler::Tier tier;
    const storage::CheckpointRecord* r = snap.FindAny(step, &tier);
    if (r == nullptr) {
      return absl::NotFoundError(StrCat("run '", run_id, "' has no checkpoint at step ", step,
                                        "; ListCheckpoints shows the committed steps"));
    }
    record = *r;
    DescribeAny(snap, record, tier, resp.mutable_info());
  }
  // A concurrent overwrite replaces the file atomically, so the header read
  // is of one version or the other.
  CKPTD_ASSIGN_OR_RETURN(auto model, storage::ReadGgufHeader(registry_->env(), record.model_path));
  api::ToProto(model.metadata, resp.mutable_metadata());
  for (const auto& t : model.tensors) {
    api::ToProto(t, storage::TensorGroup::kModel, resp.add_tensors());
  }
  if (!record.train_path.empty()) {
    CKPTD_ASSIGN_OR_RETURN(auto train,
                           storage::ReadGgufHeader(registry_->env(), record.train_path));
    api::ToProto(train.metadata, resp.mutable_train_metadata());
    for (const auto& t : train.tensors) {
      api::ToProto(t, storage::TensorGroup::kTrain, resp.add_train_tensors());
    }
  }
  return resp;
}

Readiness Queries::Ready() const {
  Readiness r;
  for (const auto& run : registry_->List()) {
    const scheduler::RunSnapshot snap = run->Snapshot();
    if (!snap.write_error.empty()) {
      r.reasons.push_back(
          StrCat("run ", snap.id, " has an unresolved write error: ", snap.write_error));
    }
  }
  const policy::DiskGuard guard = registry_->disk_guard();
  for (const std::string& root : roots_) {
    auto space = registry_->env()->Space(root);
    if (!space.ok()) {
      r.reasons.push_back(std::string(space.status().message()));
    } else if (policy::BytesToFree(guard, space->free_bytes, space->total_bytes, 0) > 0) {
      r.reasons.push_back(
          StrCat("root ", root, " is below the disk guard (", space->free_bytes, " bytes free)"));
    }
  }
  if (replicator_ != nullptr) {
    if (std::optional<std::string> why = replicator_->Unhealthy()) {
      r.reasons.push_back(StrCat("the object-storage tier is unhealthy: ", *why));
    }
  }
  r.ready = r.reasons.empty();
  return r;
}

v1::RunEvent Queries::EventToProto(const scheduler::Event& e) {
  v1::RunEvent out;
  out.set_run_id(e.run_id);
  out.set_step(e.step);
  out.set_time_utc(e.time_utc);
  switch (e.type) {
    case scheduler::Event::Type::kCommitted:
      out.set_type(v1::RunEvent::TYPE_COMMITTED);
      api::ToProto(*e.record, e.is_latest, out.mutable_checkpoint());
      break;
    case scheduler::Event::Type::kFailed:
      out.set_type(v1::RunEvent::TYPE_FAILED);
      out.set_error(e.error);
      break;
    case scheduler::Event::Type::kDeleted:
      out.set_type(v1::RunEvent::TYPE_DELETED);
      out.set_reason(e.reason);
      break;
    case scheduler::Event::Type::kUploaded:
      out.set_type(v1::RunEvent::TYPE_UPLOADED);
      break;
    case scheduler::Event::Type::kUploadFailed:
      out.set_type(v1::RunEvent::TYPE_UPLOAD_FAILED);
      out.set_error(e.error);
      break;
    case scheduler::Event::Type::kQuarantined:
      out.set_type(v1::RunEvent::TYPE_QUARANTINED);
      out.set_error(e.error);
      break;
  }
  return out;
}

}  // namespace ckptd::query
