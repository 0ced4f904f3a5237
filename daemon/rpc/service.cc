// ckptd.v1.Checkpointd implementation.
#include "daemon/rpc/service.h"

#include <spdlog/spdlog.h>

#include <set>

#include "daemon/api/convert.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/ingest/arena_source.h"
#include "daemon/ingest/pointer_source.h"
#include "daemon/ingest/stream_source.h"
#include "daemon/metrics/metrics.h"
#include "daemon/replication/recover.h"
#include "daemon/rpc/requests.h"
#include "daemon/rpc/save_frames.h"
#include "daemon/scheduler/save_session.h"
#include "daemon/storage/file_names.h"

namespace ckptd::rpc {
namespace {

using api::ToProto;

grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

// A query's answer, or its error.
template <typename M>
grpc::Status Answer(absl::StatusOr<M> answer, M* resp) {
  if (!answer.ok()) return ToGrpc(answer.status());
  *resp = std::move(*answer);
  return grpc::Status::OK;
}

grpc::Status Invalid(const std::string& msg) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg);
}

// The request a budget refusal names.
std::string HeaderWhat(const v1::SaveHeader& h) {
  return StrCat("the save of run '", Printable(h.run_id()), "' step ", h.step());
}

grpc::Status TooManyPeerStreams(const std::string& host, uint32_t limit) {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      StrCat(host, " already holds ", limit,
                             " WatchRun and Save streams (server.max_streams_per_peer); close "
                             "idle ones or try again later"));
}

grpc::Status TooManyStreams(const char* what, const char* setting, uint32_t limit) {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      StrCat("the daemon already serves ", limit, " ", what, " streams (", setting,
                             "); close idle ones or try again later"));
}

void SetTimings(const scheduler::SaveTimings& t, v1::Timings* out) {
  out->set_received_s(t.received_s);
  out->set_durable_s(t.durable_s);
  out->set_committed_s(t.committed_s);
}

}  // namespace

std::optional<std::string_view> CheckpointdService::Authorization(
    const grpc::ServerContextBase* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return std::nullopt;
  return std::string_view(it->second.data(), it->second.size());
}

grpc::Status CheckpointdService::Authorize(const grpc::ServerContextBase* ctx,
                                           std::optional<std::string_view> run_id) const {
  if (tokens_ == nullptr) return grpc::Status::OK;
  absl::Status st = tokens_->Authorize(Authorization(ctx), run_id.value_or(""));
  if (!st.ok() && !run_id.has_value() && st.code() == absl::StatusCode::kPermissionDenied) {
    return grpc::Status::OK;  // a known token, asking for what it covers
  }
  if (!st.ok()) {
    spdlog::warn("refused {} call{}: {}", ctx->peer(),
                 run_id ? StrCat(" for run=", Printable(*run_id)) : "", st.message());
  }
  return ToGrpc(st);
}

std::string PeerStreams::HostOf(std::string_view peer) {
  if (!peer.starts_with("ipv4:") && !peer.starts_with("ipv6:")) return "";
  const size_t colon = peer.rfind(':');
  return std::string(colon > 5 ? peer.substr(0, colon) : peer);
}

bool PeerStreams::Acquire(const std::string& host, uint32_t limit) {
  absl::MutexLock lock(&mu_);
  uint32_t& n = held_[host];
  if (limit != 0 && n >= limit) {
    if (n == 0) held_.erase(host);
    return false;
  }
  ++n;
  return true;
}

void PeerStreams::Release(const std::string& host) {
  absl::MutexLock lock(&mu_);
  auto it = held_.find(host);
  if (it != held_.end() && --it->second == 0) held_.erase(it);
}

void CheckpointdService::BeginShutdown() {
  stopping_ = true;
  watches_.BeginShutdown();
  registry_->CloseAllSubscriptions();
}

grpc::Status CheckpointdService::OpenRun(grpc::ServerContext* ctx, const v1::OpenRunRequest* req,
                                         v1::OpenRunResponse* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  if (absl::Status st = CheckLimits(limits_, "model_tensors", req->model_tensors_size(),
                                    "model_metadata", req->model_metadata());
      !st.ok()) {
    return ToGrpc(st);
  }
  // While converting; a reopened run's current settings are replaced, so
  // only what the new ones add is charged.
  const uint64_t settings_bytes = req->ByteSizeLong() * scheduler::MemoryBudget::kParsedFactor;
  const uint64_t held = budget_->HeldByRun(req->run_id());
  scheduler::MemoryBudget::Charge charge;
  if (absl::Status st =
          budget_->Reserve(settings_bytes - std::min(held, settings_bytes),
                           StrCat("OpenRun of run '", Printable(req->run_id()), "'"), &charge);
      !st.ok()) {
    return ToGrpc(st);
  }
  auto declared = codec_->Declared(*req);
  if (!declared.ok()) return ToGrpc(declared.status());
  bool resumed = false;
  auto run = lifecycle_->Open(req->run_id(), req->run_dir(), *std::move(declared),
                              RequestCodec::Stored(*req), &resumed);
  if (!run.ok()) return ToGrpc(run.status());
  *resp->mutable_run() = queries_->RunInfo((*run)->Snapshot());
  resp->set_resumed(resumed);
  if (arenas_ != nullptr) {
    resp->set_arena_token(arenas_->TokenFor(req->run_id()));
    resp->set_arena_socket(arena_socket_);
    AddInMemoryCopy(resp->mutable_run());
  }
  spdlog::info("run opened run={} dir={} resumed={} last_step={}", req->run_id(),
               resp->run().run_dir(), resumed,
               resp->run().has_last_step() ? std::to_string(resp->run().last_step()) : "none");
  return grpc::Status::OK;
}

void CheckpointdService::AddInMemoryCopy(v1::RunInfo* info) const {
  ingest::HotCopies* hot = pipeline_.queue() ? pipeline_.queue()->hot_copies() : nullptr;
  if (hot == nullptr || !info->has_last_step()) return;
  auto copy = hot->Find(info->run_id());
  if (!copy || copy->step != info->last_step()) return;
  v1::InMemoryCopy* out = info->mutable_in_memory();
  out->set_step(copy->step);
  out->set_bytes(copy->bytes);
  out->set_socket(arena_socket_);
  out->set_key(copy->key);
  for (const ingest::HotTensor& t : copy->tensors) {
    v1::InMemoryCopy::Tensor* o = out->add_tensors();
    o->set_name(t.name);
    o->set_offset(t.offset);
    o->set_nbytes(t.bytes);
  }
}

grpc::Status CheckpointdService::ShouldSave(grpc::ServerContext* ctx,
                                            const v1::ShouldSaveRequest* req,
                                            v1::ShouldSaveResponse* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  auto d = pipeline_.ShouldSave(req->run_id(), req->step());
  if (!d.ok()) return ToGrpc(d.status());
  resp->set_due(d->due);
  resp->set_reason(d->reason);
  if (d->due) resp->set_tier(std::string(scheduler::TierName(d->tier)));
  return grpc::Status::OK;
}

namespace {

// A Save stream's data messages as chunks, under the idle watchdog from the
// first read on (not while the save waits for its run's previous one). A
// message of the plain data form is handed over as views into gRPC's slices
// (save_frames.h); any other is decoded by protobuf.
class GrpcChunkStream final : public ingest::ChunkStream {
 public:
  GrpcChunkStream(grpc::ServerContext* ctx, grpc::ServerReader<grpc::ByteBuffer>* reader,
                  StallWatchdog* watchdog)
      : ctx_(ctx), reader_(reader), watchdog_(watchdog) {}

  absl::StatusOr<bool> Next(const ingest::ByteWriter& write) override {
    if (watch_ == nullptr) watch_.reset(new StallWatchdog::Guard(watchdog_->Watch(ctx_)));
    if (!reader_->Read(&buf_)) {
      if (ctx_->IsCancelled()) return absl::CancelledError("the client went away");
      return false;
    }
    watch_->Progress();
    slices_.clear();
    if (!buf_.Dump(&slices_).ok()) return absl::InternalError("gRPC could not hand over a message");
    views_.clear();
    for (const grpc::Slice& s : slices_) {
      views_.emplace_back(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    if (auto payload = DataPayload(views_)) {
      for (std::string_view piece : *payload) CKPTD_TRY(write(piece));
      return true;
    }
    v1::SaveRequest msg;
    if (!grpc::SerializationTraits<v1::SaveRequest>::Deserialize(&buf_, &msg).ok()) {
      return absl::InvalidArgumentError(
          "a Save data message could not be decoded (not valid protobuf SaveRequest)");
    }
    if (!msg.has_data()) {
      return absl::InvalidArgumentError("a Save stream has one header, then data messages only");
    }
    CKPTD_TRY(write(msg.data()));
    return true;
  }

 private:
  grpc::ServerContext* ctx_;
  grpc::ServerReader<grpc::ByteBuffer>* reader_;
  StallWatchdog* watchdog_;
  std::unique_ptr<StallWatchdog::Guard> watch_;
  grpc::ByteBuffer buf_;
  std::vector<grpc::Slice> slices_;
  std::vector<std::string_view> views_;
};

// A multi-rank run's part, just staged: its step commits when every rank's
// part is durable.
void SetStaged(const storage::CheckpointRecord& r, v1::CheckpointInfo* out) {
  if (r.world_size > 0) out->set_pending(true);
}

void OutcomeToProto(const scheduler::SaveOutcome& o, v1::SaveResponse* resp) {
  resp->set_reason(o.reason);
  if (o.skipped) {
    resp->set_result(v1::SaveResponse::RESULT_SKIPPED);
    return;
  }
  resp->set_result(o.record.world_size > 0 ? v1::SaveResponse::RESULT_STAGED
                                           : v1::SaveResponse::RESULT_COMMITTED);
  api::ToProto(o.record, o.is_latest, resp->mutable_checkpoint());
  SetStaged(o.record, resp->mutable_checkpoint());
  SetTimings(o.timings, resp->mutable_timings());
}

// A tensor's size, or INVALID_ARGUMENT naming it (bad type or dims).
absl::StatusOr<uint64_t> TensorBytes(const gguf::TensorSpec& t, int index) {
  auto n = gguf::TensorBytes(t.type, t.ne);
  if (!n.ok()) {
    return absl::InvalidArgumentError(
        StrCat("tensors[", index, "] '", t.name, "': ", n.status().message()));
  }
  return n;
}

grpc::Status Accepted(const absl::StatusOr<scheduler::SaveQueue::Accepted>& accepted,
                      v1::SaveSharedResponse* resp) {
  if (!accepted.ok()) return ToGrpc(accepted.status());
  resp->set_reason(accepted->reason);
  if (accepted->skipped) {
    resp->set_result(v1::SaveSharedResponse::RESULT_SKIPPED);
    return grpc::Status::OK;
  }
  resp->set_result(v1::SaveSharedResponse::RESULT_ACCEPTED);
  resp->set_save_id(accepted->save_id);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status CheckpointdService::SaveShared(grpc::ServerContext* ctx,
                                            const v1::SaveSharedRequest* req,
                                            v1::SaveSharedResponse* resp) {
  if (grpc::Status st = Authorize(ctx, req->header().run_id()); !st.ok()) return st;
  if (arenas_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "shared-memory saves are off in this daemon (shm.enabled); use Save");
  }
  const double started = NowSeconds();
  scheduler::MemoryBudget::Charge charge;
  if (absl::Status st = Charge(*req, req->header(), HeaderWhat(req->header()), &charge); !st.ok()) {
    return ToGrpc(st);
  }
  auto p = ParamsFrom(
      req->header(),
      req->final_snapshot() ? scheduler::SaveKind::kClose : scheduler::SaveKind::kSave, limits_);
  if (!p.ok()) return ToGrpc(p.status());
  // An unknown run is the problem to name, not the arenas it cannot own.
  if (auto run = registry_->Get(p->run_id); !run.ok()) return ToGrpc(run.status());
  if (req->locations_size() != static_cast<int>(p->tensors.size())) {
    return Invalid(StrCat("locations: ", req->locations_size(), " given for ", p->tensors.size(),
                          " tensors; give one per tensor, in the same order"));
  }
  std::vector<ingest::ArenaRegion> regions;
  std::vector<std::string> names;
  for (int i = 0; i < req->locations_size(); ++i) {
    const v1::TensorLocation& loc = req->locations(i);
    auto arena = arenas_->Get(loc.arena_id(), p->run_id);
    if (!arena.ok()) {
      return ToGrpc(absl::Status(arena.status().code(),
                                 StrCat("locations[", i, "]: ", arena.status().message())));
    }
    const gguf::TensorSpec& t = p->tensors[i].spec;
    auto bytes = TensorBytes(t, i);
    if (!bytes.ok()) return ToGrpc(bytes.status());
    regions.push_back({std::move(*arena), loc.offset(), *bytes});
    names.push_back(t.name);
  }
  std::optional<ingest::ArenaRegion> progress;
  if (req->has_progress()) {
    auto arena = arenas_->Get(req->progress().arena_id(), p->run_id);
    if (!arena.ok()) {
      return ToGrpc(
          absl::Status(arena.status().code(), StrCat("progress: ", arena.status().message())));
    }
    progress = ingest::ArenaRegion{std::move(*arena), req->progress().offset()};
  }
  auto source =
      ingest::ArenaSource::Create(std::move(regions), names, std::move(progress), staging_timeout_);
  if (!source.ok()) return ToGrpc(source.status());
  const bool progressive = (*source)->progressive();
  const std::string run_id = p->run_id;
  const uint64_t step = p->step;
  auto accepted = pipeline_.Enqueue(std::move(*p), std::move(*source));
  grpc::Status st = Accepted(accepted, resp);
  if (!st.ok() || accepted->skipped) return st;
  if (req->trainer_stall_s() > 0) {
    metrics::Metrics::Get().RecordTrainerStall(run_id, req->trainer_stall_s());
    pipeline_.RecordStall(run_id, req->trainer_stall_s());
  }
  if (progressive) {
    spdlog::info("shared save run={} step={} staged progressively: writing as the trainer copies",
                 run_id, step);
  }
  spdlog::debug("shared save queued run={} step={} save={} validated+queued in {:.3f}ms", run_id,
                step, accepted->save_id, (NowSeconds() - started) * 1000);
  return grpc::Status::OK;
}

grpc::Status CheckpointdService::SavePointers(grpc::ServerContext* ctx,
                                              const v1::SavePointersRequest* req,
                                              v1::SaveSharedResponse* resp) {
  if (grpc::Status st = Authorize(ctx, req->header().run_id()); !st.ok()) return st;
  if (arenas_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "pointer saves are off in this daemon (shm.enabled); use Save");
  }
  constexpr double kMaxWait = 600;
  if (!(req->timeout_seconds() >= 0 && req->timeout_seconds() <= kMaxWait)) {
    return Invalid(StrCat("timeout_seconds must be within [0, ", kMaxWait, "]"));
  }
  scheduler::MemoryBudget::Charge charge;
  if (absl::Status st = Charge(*req, req->header(), HeaderWhat(req->header()), &charge); !st.ok()) {
    return ToGrpc(st);
  }
  auto p = ParamsFrom(
      req->header(),
      req->final_snapshot() ? scheduler::SaveKind::kClose : scheduler::SaveKind::kSave, limits_);
  if (!p.ok()) return ToGrpc(p.status());
  if (auto run = registry_->Get(p->run_id); !run.ok()) return ToGrpc(run.status());
  if (req->addresses_size() != static_cast<int>(p->tensors.size())) {
    return Invalid(StrCat("addresses: ", req->addresses_size(), " given for ", p->tensors.size(),
                          " tensors; give one per tensor, in the same order"));
  }
  // Only the process that attached on the arena socket, while its
  // connection is open, and only the ranges named here.
  auto attachment = arenas_->GetAttachment(req->attachment_id(), p->run_id, req->attachment_key());
  if (!attachment.ok()) {
    return ToGrpc(absl::Status(attachment.status().code(),
                               StrCat("attachment_id: ", attachment.status().message())));
  }
  std::vector<ingest::PointerRange> ranges;
  for (int i = 0; i < req->addresses_size(); ++i) {
    const gguf::TensorSpec& t = p->tensors[i].spec;
    auto bytes = TensorBytes(t, i);
    if (!bytes.ok()) return ToGrpc(bytes.status());
    const uint64_t n = *bytes;
    if (req->addresses(i) > UINT64_MAX - n) {
      return Invalid(StrCat("addresses[", i, "]: tensor '", t.name, "' would wrap around memory"));
    }
    ranges.push_back({req->addresses(i), n});
  }
  // The call holds its thread until every byte is read: counted among the
  // waiting calls, so trainers' other calls always find a thread.
  StreamSlot waiting(&waiting_calls_, limits_.max_waiting_calls);
  if (!waiting.ok()) {
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        StrCat("the daemon already holds ", limits_.max_waiting_calls,
               " calls that wait (server.max_waiting_calls): try the pointer save again shortly, "
               "or save over shared memory (SaveShared), which holds no thread"));
  }
  const std::string run_id = p->run_id;
  auto accepted = pipeline_.Enqueue(
      std::move(*p), std::make_unique<ingest::PointerSource>(std::move(*attachment), ranges));
  grpc::Status st = Accepted(accepted, resp);
  if (!st.ok() || accepted->skipped) return st;
  // The trainer's tensors are in use until every byte has been read.
  const double wait_s = req->timeout_seconds() == 0 ? kMaxWait : req->timeout_seconds();
  auto r = pipeline_.queue()->Wait(run_id, accepted->save_id, scheduler::SaveQueue::Until::kRead,
                                   std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000)),
                                   [&] { return ctx->IsCancelled() || stopping_.load(); });
  if (!r.ok()) return ToGrpc(r.status());
  if (!r->read_error.ok()) {
    // Answer once the failed save has removed its temp files.
    (void)pipeline_.queue()->Wait(run_id, accepted->save_id, scheduler::SaveQueue::Until::kFinished,
                                  std::chrono::seconds(60), [] { return false; });
    return ToGrpc(r->read_error);
  }
  if (r->state == scheduler::QueuedSaveResult::State::kFailed) return ToGrpc(r->error);
  if (!r->read) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        StrCat("save ", accepted->save_id,
                               " was not read within timeout_seconds; its tensors are still in "
                               "use: WaitSaved before modifying them"));
  }
  return grpc::Status::OK;
}

grpc::Status CheckpointdService::WaitSaved(grpc::ServerContext* ctx,
                                           const v1::WaitSavedRequest* req,
                                           v1::WaitSavedResponse* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  if (pipeline_.queue() == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "shared-memory saves are off in this daemon (shm.enabled)");
  }
  constexpr double kMaxWait = 600;
  if (!(req->timeout_seconds() >= 0 && req->timeout_seconds() <= kMaxWait)) {
    return Invalid(StrCat("timeout_seconds must be within [0, ", kMaxWait, "]"));
  }
  // Beyond server.max_waiting_calls the answer is the state now (PENDING
  // if so), without waiting: the clients ask again after a short pause,
  // and no number of waiters can take the threads other calls need.
  StreamSlot waiting(&waiting_calls_, limits_.max_waiting_calls);
  const double timeout_s = waiting.ok() ? req->timeout_seconds() : 0;
  auto r =
      pipeline_.queue()->Wait(req->run_id(), req->save_id(), scheduler::SaveQueue::Until::kFinished,
                              std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)),
                              [&] { return ctx->IsCancelled() || stopping_.load(); });
  if (!r.ok() && r.status().code() == absl::StatusCode::kNotFound && req->has_step()) {
    // Queued before a restart: the catalog knows whether it committed.
    auto run = registry_->Get(req->run_id());
    if (!run.ok()) return ToGrpc(run.status());
    const scheduler::RunSnapshot snap = (*run)->Snapshot();
    const storage::CheckpointRecord* record = snap.Find(req->step());
    const storage::Catalog& pending = *snap.pending;
    if (record == nullptr && pending.contains(req->step())) record = &pending.at(req->step());
    if (record == nullptr) {
      return ToGrpc(absl::NotFoundError(
          StrCat("run '", req->run_id(), "' has no save ", req->save_id(),
                 " (the daemon restarted since it was queued) and step ", req->step(),
                 " is not committed: the save was lost; save the step again")));
    }
    resp->set_step(req->step());
    const bool staged = pending.contains(req->step());
    resp->set_state(staged ? v1::WaitSavedResponse::STATE_STAGED
                           : v1::WaitSavedResponse::STATE_COMMITTED);
    ToProto(*record, snap.latest_step == req->step(), resp->mutable_checkpoint());
    resp->mutable_checkpoint()->set_pending(staged);
    return grpc::Status::OK;
  }
  if (!r.ok()) return ToGrpc(r.status());
  if (req->trainer_stall_s() > 0) {
    metrics::Metrics::Get().RecordTrainerStall(req->run_id(), req->trainer_stall_s());
  }
  resp->set_step(r->step);
  switch (r->state) {
    case scheduler::QueuedSaveResult::State::kPending:
      resp->set_state(v1::WaitSavedResponse::STATE_PENDING);
      break;
    case scheduler::QueuedSaveResult::State::kCommitted:
      resp->set_state(r->record.world_size > 0 ? v1::WaitSavedResponse::STATE_STAGED
                                               : v1::WaitSavedResponse::STATE_COMMITTED);
      ToProto(r->record, r->is_latest, resp->mutable_checkpoint());
      SetStaged(r->record, resp->mutable_checkpoint());
      SetTimings(r->timings, resp->mutable_timings());
      break;
    case scheduler::QueuedSaveResult::State::kFailed:
      resp->set_state(v1::WaitSavedResponse::STATE_FAILED);
      resp->set_error_code(static_cast<int32_t>(r->error.code()));
      resp->set_error(std::string(r->error.message()));
      break;
  }
  return grpc::Status::OK;
}

void CheckpointdService::InstallRawSaveHandlers() {
  // The methods' indices are their places in the proto's service (the
  // generated Service adds them in that order): Save is the third, CloseRun
  // the seventh. Every Save and CloseRun test goes through these handlers.
  constexpr int kSaveIndex = 2;
  constexpr int kCloseRunIndex = 6;
  MarkMethodStreamed(
      kSaveIndex, new grpc::internal::ClientStreamingHandler<CheckpointdService, grpc::ByteBuffer,
                                                             v1::SaveResponse>(
                      [](CheckpointdService* s, grpc::ServerContext* ctx,
                         grpc::ServerReader<grpc::ByteBuffer>* reader,
                         v1::SaveResponse* resp) { return s->SaveRaw(ctx, reader, resp); },
                      this));
  MarkMethodStreamed(
      kCloseRunIndex,
      new grpc::internal::ClientStreamingHandler<CheckpointdService, grpc::ByteBuffer,
                                                 v1::CloseRunResponse>(
          [](CheckpointdService* s, grpc::ServerContext* ctx,
             grpc::ServerReader<grpc::ByteBuffer>* reader,
             v1::CloseRunResponse* resp) { return s->CloseRunRaw(ctx, reader, resp); },
          this));
}

grpc::Status CheckpointdService::StartSaveStream(grpc::ServerContext* ctx,
                                                 grpc::ServerReader<grpc::ByteBuffer>* reader,
                                                 scheduler::SaveKind kind, SaveStreamStart* out) {
  out->slot = std::make_unique<StreamSlot>(&save_streams_, limits_.max_save_streams);
  if (!out->slot->ok()) {
    return TooManyStreams("Save and CloseRun", "server.max_save_streams", limits_.max_save_streams);
  }
  out->peer_slot =
      std::make_unique<PeerSlot>(&peer_streams_, ctx->peer(), limits_.max_streams_per_peer);
  if (!out->peer_slot->ok()) {
    return TooManyPeerStreams(out->peer_slot->host(), limits_.max_streams_per_peer);
  }
  v1::SaveRequest first;
  grpc::ByteBuffer first_buf;
  if (!reader->Read(&first_buf) ||
      !grpc::SerializationTraits<v1::SaveRequest>::Deserialize(&first_buf, &first).ok() ||
      !first.has_header()) {
    return Invalid(StrCat(
        "the first ", kind == scheduler::SaveKind::kClose ? "CloseRun" : "Save",
        " message must be a header (run_id, step, tensors); none arrived, or it could not be "
        "decoded (not valid protobuf, or a string field that is not valid UTF-8)"));
  }
  if (grpc::Status st = Authorize(ctx, first.header().run_id()); !st.ok()) return st;
  if (absl::Status st = Charge(first, first.header(), HeaderWhat(first.header()), &out->charge);
      !st.ok()) {
    return ToGrpc(st);
  }
  auto p = ParamsFrom(first.header(), kind, limits_);
  if (!p.ok()) return ToGrpc(p.status());
  out->params = std::move(*p);
  return grpc::Status::OK;
}

grpc::Status CheckpointdService::SaveRaw(grpc::ServerContext* ctx,
                                         grpc::ServerReader<grpc::ByteBuffer>* reader,
                                         v1::SaveResponse* resp) {
  SaveStreamStart start;
  if (grpc::Status st = StartSaveStream(ctx, reader, scheduler::SaveKind::kSave, &start);
      !st.ok()) {
    return st;
  }
  GrpcChunkStream chunks(ctx, reader, &watchdog_);
  ingest::StreamSource source(&chunks);
  auto outcome = pipeline_.SaveNow(std::move(start.params), source);
  if (!outcome.ok()) return ToGrpc(outcome.status());
  OutcomeToProto(*outcome, resp);
  return grpc::Status::OK;
}

grpc::Status CheckpointdService::CloseRunRaw(grpc::ServerContext* ctx,
                                             grpc::ServerReader<grpc::ByteBuffer>* reader,
                                             v1::CloseRunResponse* resp) {
  SaveStreamStart start;
  if (grpc::Status st = StartSaveStream(ctx, reader, scheduler::SaveKind::kClose, &start);
      !st.ok()) {
    return st;
  }
  const std::string run_id = start.params.run_id;
  GrpcChunkStream chunks(ctx, reader, &watchdog_);
  ingest::StreamSource source(&chunks);
  auto final_save = pipeline_.Close(std::move(start.params), source);
  if (!final_save.ok()) return ToGrpc(final_save.status());
  if (*final_save) OutcomeToProto(**final_save, resp->mutable_final_save());
  auto run = registry_->Get(run_id);
  if (!run.ok()) return ToGrpc(run.status());
  *resp->mutable_run() = queries_->RunInfo((*run)->Snapshot());
  return grpc::Status::OK;
}

grpc::Status CheckpointdService::ListRuns(grpc::ServerContext* ctx, const v1::ListRunsRequest*,
                                          v1::ListRunsResponse* resp) {
  *resp = queries_->ListRuns();
  if (tokens_ == nullptr) return grpc::Status::OK;
  // Any known token may list; it sees only the runs it covers.
  if (grpc::Status st = Authorize(ctx, std::nullopt); !st.ok()) return st;
  const std::string_view auth = *Authorization(ctx);
  auto* runs = resp->mutable_runs();
  runs->erase(
      std::remove_if(runs->begin(), runs->end(),
                     [&](const v1::RunInfo& r) { return !tokens_->Covers(auth, r.run_id()); }),
      runs->end());
  return grpc::Status::OK;
}

grpc::Status CheckpointdService::GetRun(grpc::ServerContext* ctx, const v1::GetRunRequest* req,
                                        v1::RunInfo* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  grpc::Status st = Answer(queries_->GetRun(req->run_id()), resp);
  if (st.ok()) AddInMemoryCopy(resp);
  return st;
}

grpc::Status CheckpointdService::ListCheckpoints(grpc::ServerContext* ctx,
                                                 const v1::ListCheckpointsRequest* req,
                                                 v1::ListCheckpointsResponse* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  return Answer(queries_->ListCheckpoints(*req), resp);
}

grpc::Status CheckpointdService::GetCheckpoint(grpc::ServerContext* ctx,
                                               const v1::GetCheckpointRequest* req,
                                               v1::CheckpointDetail* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  return Answer(queries_->GetCheckpoint(req->run_id(), req->step()), resp);
}

grpc::Status CheckpointdService::GetLineage(grpc::ServerContext* ctx, const v1::LineageRequest* req,
                                            v1::Lineage* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  return Answer(queries_->Lineage(req->uuid(), req->run_id()), resp);
}

grpc::ServerWriteReactor<v1::RunEvent>* CheckpointdService::WatchRun(
    grpc::CallbackServerContext* ctx, const v1::WatchRunRequest* req) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return WatchStreams::Refuse(st);
  // The slots live as long as the watch: released when gRPC is done with it.
  struct Slots {
    Slots(CheckpointdService& s, std::string_view peer)
        : global(&s.watch_streams_, s.limits_.max_watch_streams),
          peer(&s.peer_streams_, peer, s.limits_.max_streams_per_peer) {}
    StreamSlot global;
    PeerSlot peer;
  };
  auto slots = std::make_shared<Slots>(*this, ctx->peer());
  if (!slots->global.ok()) {
    return WatchStreams::Refuse(
        TooManyStreams("WatchRun", "server.max_watch_streams", limits_.max_watch_streams));
  }
  if (!slots->peer.ok()) {
    return WatchStreams::Refuse(
        TooManyPeerStreams(slots->peer.host(), limits_.max_streams_per_peer));
  }
  if (stopping_) {
    return WatchStreams::Refuse(
        grpc::Status(grpc::StatusCode::UNAVAILABLE, "the daemon is stopping"));
  }
  auto run = registry_->Get(req->run_id());
  if (!run.ok()) return WatchStreams::Refuse(ToGrpc(run.status()));
  return watches_.Start((*run)->Subscribe(watches_.OnChange()), limits_.watch_max_seconds,
                        std::move(slots));
}

grpc::Status CheckpointdService::FetchRemote(grpc::ServerContext* ctx,
                                             const v1::FetchRemoteRequest* req,
                                             v1::CheckpointInfo* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  std::optional<uint64_t> step, newer_than;
  if (req->has_step()) step = req->step();
  if (req->has_newer_than()) newer_than = req->newer_than();
  absl::StatusOr<replication::Recovered> got;
  if (!req->agree_attempt().empty()) {
    if (step || newer_than) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "agree_attempt: the ranks agree on the step; leave step and newer_than "
                          "unset");
    }
    const double timeout = req->has_agree_timeout_seconds() ? req->agree_timeout_seconds() : 300;
    if (!(timeout > 0 && timeout <= 3600)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "agree_timeout_seconds: give a wait above 0 and at most 3600 s");
    }
    got = replication::RecoverAgreed(registry_, peers_, replicator_, req->run_id(),
                                     req->agree_attempt(), timeout,
                                     [ctx] { return ctx->IsCancelled(); });
  } else {
    got = replication::Recover(registry_, peers_, replicator_, req->run_id(), step, newer_than);
  }
  if (!got.ok()) return ToGrpc(got.status());
  grpc::Status st = Answer(queries_->DescribeCheckpoint(req->run_id(), got->record.step), resp);
  resp->set_fetched_from(got->from);
  return st;
}

}  // namespace ckptd::rpc

namespace ckptd::rpc {

grpc::Status CheckpointdService::Pin(grpc::ServerContext* ctx, const v1::PinRequest* req,
                                     v1::CheckpointInfo* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  if (req->reason().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "reason: say why this checkpoint must stay (e.g. \"eval-2026-11\")");
  }
  auto run = registry_->Get(req->run_id());
  if (!run.ok()) return ToGrpc(run.status());
  if (auto r = registry_->Pin(**run, req->step(), req->reason()); !r.ok()) {
    return ToGrpc(r.status());
  }
  return Answer(queries_->DescribeCheckpoint(req->run_id(), req->step()), resp);
}

grpc::Status CheckpointdService::Unpin(grpc::ServerContext* ctx, const v1::UnpinRequest* req,
                                       v1::CheckpointInfo* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  auto run = registry_->Get(req->run_id());
  if (!run.ok()) return ToGrpc(run.status());
  if (absl::Status st = registry_->Unpin(**run, req->step()); !st.ok()) return ToGrpc(st);
  if (auto info = queries_->DescribeCheckpoint(req->run_id(), req->step()); info.ok()) {
    *resp = *std::move(info);
  }
  return grpc::Status::OK;
}

grpc::Status CheckpointdService::Retention(const v1::RetentionRequest& req, bool dry,
                                           v1::RetentionPlan* resp) {
  if (req.remote()) {
    if (replicator_ == nullptr) {
      return ToGrpc(absl::FailedPreconditionError(
          "the object-storage tier is off ([tier.s3] endpoint): there are no remote copies"));
    }
    auto plan = replicator_->PlanRemote(req.run_id(), !dry);
    if (!plan.ok()) return ToGrpc(plan.status());
    resp->set_policy(StrCat("remote copies: ", plan->policy));
    api::ToProto(plan->decisions, resp);
    for (uint64_t step : plan->deleted) resp->add_deleted(step);
    return grpc::Status::OK;
  }
  auto run = registry_->Get(req.run_id());
  if (!run.ok()) return ToGrpc(run.status());
  auto result = registry_->RunRetention(**run, dry);
  if (!result.ok()) return ToGrpc(result.status());
  resp->set_policy(result->policy);
  api::ToProto(result->plan, resp);
  for (uint64_t step : result->deleted) resp->add_deleted(step);
  resp->set_paused(result->paused);
  return grpc::Status::OK;
}

grpc::Status CheckpointdService::PlanRetention(grpc::ServerContext* ctx,
                                               const v1::RetentionRequest* req,
                                               v1::RetentionPlan* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  return Retention(*req, /*dry=*/true, resp);
}

grpc::Status CheckpointdService::ApplyRetention(grpc::ServerContext* ctx,
                                                const v1::RetentionRequest* req,
                                                v1::RetentionPlan* resp) {
  if (grpc::Status st = Authorize(ctx, req->run_id()); !st.ok()) return st;
  return Retention(*req, /*dry=*/false, resp);
}

}  // namespace ckptd::rpc
