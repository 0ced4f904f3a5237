// Peer replication: sending steps, and fetching them back.
#include "daemon/replication/peer_sender.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/metrics/metrics.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/file_names.h"

namespace ckptd::replication {
namespace {

constexpr size_t kSendChunk = 1 << 20;  // PutReplica's messages
constexpr double kListDeadline = 5;

absl::Status PeerError(const grpc::Status& st, std::string_view what) {
  if (st.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                      StrCat(what, ": ", st.error_message()));
}

std::chrono::system_clock::time_point DeadlineIn(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}

}  // namespace

PeerSender::PeerSender(env::Env* env, PeerOptions options)
    : env_(env), options_(std::move(options)) {
  for (const std::string& address : options_.peers) {
    auto p = std::make_unique<Peer>();
    p->address = address;
    p->stub = StubFor(address);
    peers_.push_back(std::move(p));
  }
}

PeerSender::~PeerSender() { Stop(); }

std::unique_ptr<v1::Peers::Stub> PeerSender::StubFor(const std::string& address) const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(4 << 20);
  args.SetMaxSendMessageSize(4 << 20);
  return v1::Peers::NewStub(grpc::CreateCustomChannel(address, options_.credentials, args));
}

void PeerSender::Authorize(grpc::ClientContext* ctx) const {
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
}

void PeerSender::Start() {
  for (auto& p : peers_) {
    Peer* peer = p.get();
    peer->worker = std::thread([this, peer] { Work(peer); });
  }
}

void PeerSender::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [peer, ctx] : active_) ctx->TryCancel();
  }
  cv_.SignalAll();
  for (auto& p : peers_) {
    if (p->worker.joinable()) p->worker.join();
  }
}

void PeerSender::OnTierCommitted(scheduler::Run& run, const storage::CheckpointRecord& record,
                                 scheduler::Tier tier) {
  if (peers_.empty()) return;
  Job job{.run_id = run.id(),
          .step = record.step,
          .rank = record.rank,
          .world_size = record.world_size};
  for (const std::string& path : {record.model_path, record.train_path}) {
    if (path.empty()) continue;
    auto file = env_->OpenForRead(path);
    auto size = env_->Stat(path);
    if (!file.ok() || !size.ok()) {
      spdlog::error("peers: run={} step={}: cannot open {} to replicate: {}", run.id(), record.step,
                    path, (!file.ok() ? file.status() : size.status()).message());
      return;
    }
    job.files.emplace_back(path.substr(path.rfind('/') + 1), size->size);
    job.open.push_back(std::move(*file));
  }
  absl::MutexLock lock(&mu_);
  uint64_t& newest = newest_[run.id()];
  newest = std::max(newest, record.step);
  for (auto& p : peers_) {
    auto [it, fresh] = queued_[p->address].insert_or_assign(run.id(), job);
    if (!fresh) metrics::Metrics::Get().CountReplicaSend(p->address, "superseded");
    UpdateLag(*p, run.id());
  }
  (void)tier;
  cv_.SignalAll();
}

void PeerSender::UpdateLag(const Peer& peer, const std::string& run_id) {
  const uint64_t newest = newest_[run_id];
  const auto& acked_by_peer = acked_[peer.address];
  auto acked = acked_by_peer.find(run_id);
  const uint64_t have = acked == acked_by_peer.end() ? 0 : acked->second;
  metrics::Metrics::Get().SetPeerLag(run_id, peer.address, newest > have ? newest - have : 0);
}

void PeerSender::Work(Peer* peer) {
  while (true) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      while (true) {
        if (stopping_) return;
        // The run whose step waited longest and whose backoff is over.
        const double now = NowSeconds();
        auto& queued = queued_[peer->address];
        auto ready = queued.end();
        double wake = 0;
        for (auto it = queued.begin(); it != queued.end(); ++it) {
          if (it->second.not_before <= now) {
            ready = it;
            break;
          }
          wake = wake == 0 ? it->second.not_before : std::min(wake, it->second.not_before);
        }
        if (ready != queued.end()) {
          job = ready->second;
          queued.erase(ready);
          break;
        }
        cv_.WaitWithTimeout(&mu_, absl::Seconds(wake == 0 ? 1.0 : std::max(0.01, wake - now)));
      }
    }
    const double start = NowSeconds();
    absl::Status st = Send(*peer, job);
    absl::MutexLock lock(&mu_);
    if (st.ok()) {
      uint64_t& acked = acked_[peer->address][job.run_id];
      acked = std::max(acked, job.step);
      UpdateLag(*peer, job.run_id);
      uint64_t bytes = 0;
      for (const auto& f : job.files) bytes += f.second;
      metrics::Metrics::Get().RecordReplicaOut(peer->address, bytes);
      spdlog::info("peers: replicated run={} step={} peer={} bytes={} seconds={:.3f}", job.run_id,
                   job.step, peer->address, bytes, NowSeconds() - start);
      continue;
    }
    metrics::Metrics::Get().CountReplicaSend(peer->address, "failed");
    spdlog::warn("peers: replicating run={} step={} to peer={} failed (try {}): {}", job.run_id,
                 job.step, peer->address, job.failures + 1, st.message());
    // Tried again after a backoff, unless a newer step took its place.
    if (!queued_[peer->address].contains(job.run_id) && !stopping_) {
      job.failures++;
      job.not_before = NowSeconds() + std::min(10.0, 0.2 * (1 << std::min(job.failures, 6)));
      queued_[peer->address].emplace(job.run_id, std::move(job));
    } else {
      metrics::Metrics::Get().CountReplicaSend(peer->address, "superseded");
    }
  }
}

absl::Status PeerSender::Send(Peer& peer, const Job& job) {
  uint64_t total = 0;
  for (const auto& f : job.files) total += f.second;
  grpc::ClientContext ctx;
  Authorize(&ctx);
  ctx.set_deadline(DeadlineIn(30 + static_cast<double>(total) / options_.bytes_per_second_floor));
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError("stopping");
    active_[peer.address] = &ctx;
  }
  struct Done {
    PeerSender* sender;
    const std::string& address;
    ~Done() {
      absl::MutexLock lock(&sender->mu_);
      sender->active_.erase(address);
    }
  } done{this, peer.address};
  v1::ReplicaAck ack;
  std::unique_ptr<grpc::ClientWriter<v1::ReplicaChunk>> w = peer.stub->PutReplica(&ctx, &ack);
  v1::ReplicaChunk head;
  v1::ReplicaHeader* h = head.mutable_header();
  h->set_run_id(job.run_id);
  h->set_step(job.step);
  h->set_origin(options_.self);
  h->set_rank(job.rank);
  h->set_world_size(job.world_size);
  for (const auto& [name, size] : job.files) {
    v1::ReplicaFile* f = h->add_files();
    f->set_name(name);
    f->set_size(size);
  }
  bool ok = w->Write(head);
  std::string buf(kSendChunk, '\0');
  for (size_t i = 0; ok && i < job.open.size(); ++i) {
    for (uint64_t off = 0; ok && off < job.files[i].second;) {
      const size_t n =
          static_cast<size_t>(std::min<uint64_t>(kSendChunk, job.files[i].second - off));
      auto got = job.open[i]->ReadUpTo(off, n, buf.data());
      if (!got.ok() || *got == 0) {
        ctx.TryCancel();
        (void)w->Finish();
        return got.ok() ? absl::DataLossError(StrCat(job.files[i].first, " shrank")) : got.status();
      }
      v1::ReplicaChunk c;
      c.set_data(buf.data(), *got);
      ok = w->Write(c);
      off += *got;
    }
  }
  if (ok) w->WritesDone();
  return PeerError(w->Finish(), StrCat("PutReplica to ", peer.address));
}

std::vector<PeerStep> PeerSender::Holders(const std::string& run_id, std::optional<RankPart> part,
                                          std::vector<std::string>* notes) const {
  std::vector<PeerStep> out;
  for (const std::string& node : options_.nodes) {
    if (node == options_.self) continue;
    auto stub = StubFor(node);
    grpc::ClientContext ctx;
    Authorize(&ctx);
    ctx.set_deadline(DeadlineIn(kListDeadline));
    v1::ListReplicasRequest req;
    req.set_run_id(run_id);
    v1::ListReplicasResponse resp;
    grpc::Status st = stub->ListReplicas(&ctx, req, &resp);
    if (!st.ok()) {
      notes->push_back(StrCat("peer ", node, ": ", st.error_message()));
      continue;
    }
    bool any = false;
    for (const v1::Replica& r : resp.replicas()) {
      if (r.run_id() != run_id || (r.world_size() > 0) != part.has_value() ||
          (part && r.rank() != part->rank)) {
        continue;
      }
      out.push_back({r.step(), node});
      any = true;
    }
    if (!any) {
      notes->push_back(StrCat("peer ", node, ": no replica of run '", run_id, "'",
                              part ? StrCat(" rank ", part->rank) : std::string()));
    }
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const PeerStep& a, const PeerStep& b) { return a.step > b.step; });
  return out;
}

absl::StatusOr<uint64_t> PeerSender::Fetch(const std::string& peer, const std::string& run_id,
                                           std::optional<RankPart> part, uint64_t step,
                                           const std::string& weights_dir) const {
  const double start = NowSeconds();
  auto stub = StubFor(peer);
  grpc::ClientContext ctx;
  Authorize(&ctx);
  ctx.set_deadline(DeadlineIn(600));
  v1::GetReplicaRequest req;
  req.set_run_id(run_id);
  req.set_step(step);
  if (part) req.set_rank(part->rank);
  std::unique_ptr<grpc::ClientReader<v1::ReplicaChunk>> r = stub->GetReplica(&ctx, req);
  v1::ReplicaChunk chunk;
  std::vector<std::string> temps;
  auto cleanup = [&] {
    for (const std::string& t : temps) (void)env_->RemoveFile(t);
  };
  if (!r->Read(&chunk) || !chunk.has_header()) {
    ctx.TryCancel();
    absl::Status st = PeerError(r->Finish(), StrCat("GetReplica from ", peer));
    return st.ok() ? absl::DataLossError(StrCat("peer ", peer, " sent no replica header")) : st;
  }
  const v1::ReplicaHeader h = chunk.header();
  const std::string model_name = part ? storage::SplitFileName(step, part->rank, part->world_size)
                                      : storage::ModelFileName(step);
  const std::string train_name =
      part ? storage::PartTrainFileName(step, part->rank, part->world_size)
           : storage::TrainFileName(step);
  if (h.files_size() < 1 || h.files_size() > 2 || h.files(0).name() != model_name ||
      (h.files_size() == 2 && h.files(1).name() != train_name)) {
    ctx.TryCancel();
    (void)r->Finish();
    return absl::DataLossError(StrCat("peer ", peer, " sent files other than step ", step, "'s"));
  }
  std::vector<std::unique_ptr<env::WritableFile>> out;
  uint64_t total = 0;
  for (const auto& f : h.files()) {
    const std::string temp = StrCat(weights_dir, "/.peer.", f.name(), ".", storage::NewSaveId());
    auto w = env_->NewWritableFile(temp, env::DirectIo::kOff);
    if (!w.ok()) {
      cleanup();
      ctx.TryCancel();
      (void)r->Finish();
      return w.status();
    }
    temps.push_back(temp);
    out.push_back(std::move(*w));
    total += f.size();
  }
  size_t file = 0;
  uint64_t in_file = 0;
  absl::Status st;
  while (st.ok() && r->Read(&chunk)) {
    std::string_view bytes = chunk.data();
    while (st.ok() && !bytes.empty()) {
      if (file >= out.size()) {
        st = absl::DataLossError(StrCat("peer ", peer, " sent more bytes than its files' sizes"));
        break;
      }
      const size_t n =
          static_cast<size_t>(std::min<uint64_t>(h.files(file).size() - in_file, bytes.size()));
      st = out[file]->Append(bytes.substr(0, n));
      in_file += n;
      bytes.remove_prefix(n);
      if (in_file == h.files(file).size()) {
        ++file;
        in_file = 0;
      }
    }
  }
  if (!st.ok()) ctx.TryCancel();
  const double received = NowSeconds();
  absl::Status finished = PeerError(r->Finish(), StrCat("GetReplica from ", peer));
  if (st.ok()) st = finished;
  if (st.ok() && file < out.size()) {
    st = absl::DataLossError(StrCat("peer ", peer, " ended the replica early"));
  }
  for (auto& w : out) {
    if (st.ok()) st = w->Sync();
    absl::Status closed = w->Close();
    if (st.ok()) st = closed;
  }
  const double synced = NowSeconds();
  if (st.ok()) {
    // Every digest checked before anything is placed.
    auto record = storage::VerifyStepFiles(env_, step, temps[0], temps.size() > 1 ? temps[1] : "");
    if (!record.ok()) {
      st =
          absl::DataLossError(StrCat("the replica of run '", run_id, "' step ", step, " from peer ",
                                     peer, " failed its check: ", record.status().message()));
    }
  }
  if (!st.ok()) {
    cleanup();
    return st;
  }
  if (temps.size() > 1) CKPTD_TRY(env_->RenameFile(temps[1], StrCat(weights_dir, "/", train_name)));
  CKPTD_TRY(env_->RenameFile(temps[0], StrCat(weights_dir, "/", model_name)));
  CKPTD_TRY(env_->SyncDir(weights_dir));
  const double end = NowSeconds();
  spdlog::info(
      "peers: fetched run={} step={} from peer={} bytes={} seconds={:.3f} (received {:.3f}, "
      "synced {:.3f}, checked and placed {:.3f})",
      run_id, step, peer, total, end - start, received - start, synced - received, end - synced);
  return step;
}

}  // namespace ckptd::replication
