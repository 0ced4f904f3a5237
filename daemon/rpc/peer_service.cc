// Replicas between daemons.
#include "daemon/rpc/peer_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <future>

#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/metrics/metrics.h"

namespace ckptd::rpc {
namespace {

constexpr size_t kReplicaChunk = 1 << 20;  // GetReplica's messages

grpc::Status PeerStatus(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

}  // namespace

grpc::Status PeerService::Authorize(grpc::ServerContext* ctx) const {
  if (token_.empty()) return grpc::Status::OK;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) {
    const std::string_view value(it->second.data(), it->second.size());
    if (auto token = BearerToken(value); token && ConstantTimeEqual(*token, token_)) {
      return grpc::Status::OK;
    }
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "this daemon takes replicas only from peers that send its [peers] "
                      "token_file's token ('authorization: Bearer <token>')");
}

grpc::Status PeerService::PutReplica(grpc::ServerContext* ctx,
                                     grpc::ServerReader<v1::ReplicaChunk>* reader,
                                     v1::ReplicaAck* resp) {
  if (grpc::Status st = Authorize(ctx); !st.ok()) return st;
  const double start = NowSeconds();
  v1::ReplicaChunk chunk;
  if (!reader->Read(&chunk) || !chunk.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "PutReplica: the first message must be the replica's header");
  }
  const v1::ReplicaHeader h = chunk.header();
  std::vector<replication::ReplicaFileSpec> files;
  for (const auto& f : h.files()) files.push_back({f.name(), f.size()});
  auto in =
      store_->Begin(h.run_id(), h.rank(), h.world_size(), h.step(), h.origin(), std::move(files));
  if (!in.ok()) return PeerStatus(in.status());
  while (reader->Read(&chunk)) {
    if (!chunk.has_data() && chunk.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "PutReplica: a second header; one replica per call");
    }
    if (absl::Status st = (*in)->Write(chunk.data()); !st.ok()) return PeerStatus(st);
  }
  if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  auto info = (*in)->Finish();
  if (!info.ok()) {
    spdlog::error("peers: replica run={} step={} from {}: {}", h.run_id(), h.step(), h.origin(),
                  info.status().message());
    return PeerStatus(info.status());
  }
  metrics::Metrics::Get().RecordReplicaIn(info->bytes);
  spdlog::info("peers: replica held run={} step={}{} from={} bytes={} seconds={:.3f}", h.run_id(),
               h.step(), h.world_size() ? StrCat(" rank=", h.rank()) : std::string(), h.origin(),
               info->bytes, NowSeconds() - start);
  resp->set_step(info->step);
  resp->set_bytes(info->bytes);
  return grpc::Status::OK;
}

grpc::Status PeerService::ListReplicas(grpc::ServerContext* ctx, const v1::ListReplicasRequest* req,
                                       v1::ListReplicasResponse* resp) {
  if (grpc::Status st = Authorize(ctx); !st.ok()) return st;
  for (const replication::ReplicaInfo& r : store_->List(req->run_id())) {
    v1::Replica* out = resp->add_replicas();
    out->set_run_id(r.run_id);
    out->set_step(r.step);
    out->set_origin(r.origin);
    out->set_bytes(r.bytes);
    out->set_content_digest(r.content_digest);
    out->set_rank(r.rank);
    out->set_world_size(r.world_size);
  }
  return grpc::Status::OK;
}

grpc::Status PeerService::GetReplica(grpc::ServerContext* ctx, const v1::GetReplicaRequest* req,
                                     grpc::ServerWriter<v1::ReplicaChunk>* writer) {
  if (grpc::Status st = Authorize(ctx); !st.ok()) return st;
  std::optional<uint32_t> rank;
  if (req->has_rank()) rank = req->rank();
  auto files = store_->Files(req->run_id(), rank, req->step());
  if (!files.ok()) return PeerStatus(files.status());
  // Open both first: an eviction from now on cannot take the bytes away.
  std::vector<std::unique_ptr<env::RandomAccessFile>> open;
  v1::ReplicaChunk head;
  v1::ReplicaHeader* h = head.mutable_header();
  h->set_run_id(req->run_id());
  h->set_step(req->step());
  if (rank) h->set_rank(*rank);
  for (const replication::ReplicaFileSpec& f : *files) {
    auto file = store_->env()->OpenForRead(f.name);
    if (!file.ok()) return PeerStatus(file.status());
    open.push_back(std::move(*file));
    v1::ReplicaFile* rf = h->add_files();
    rf->set_name(f.name.substr(f.name.rfind('/') + 1));
    rf->set_size(f.size);
  }
  if (!writer->Write(head)) return grpc::Status(grpc::StatusCode::CANCELLED, "reader went away");
  // Every digest is checked again beside the send, on another core: the
  // stream ends in DATA_LOSS (and the replica is dropped) when one fails.
  // The receiver checks them all too before it places a byte.
  std::future<absl::Status> checked = std::async(
      std::launch::async, [&] { return store_->Check(req->run_id(), rank, req->step(), *files); });
  grpc::Status sent = SendReplicaFiles(*files, open, writer);
  absl::Status check = checked.get();
  if (!check.ok()) return PeerStatus(check);
  return sent;
}

grpc::Status PeerService::SendReplicaFiles(
    const std::vector<replication::ReplicaFileSpec>& files,
    const std::vector<std::unique_ptr<env::RandomAccessFile>>& open,
    grpc::ServerWriter<v1::ReplicaChunk>* writer) {
  std::string buf(kReplicaChunk, '\0');
  for (size_t i = 0; i < open.size(); ++i) {
    for (uint64_t off = 0; off < files[i].size;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kReplicaChunk, files[i].size - off));
      auto got = open[i]->ReadUpTo(off, n, buf.data());
      if (!got.ok()) return PeerStatus(got.status());
      if (*got == 0) return grpc::Status(grpc::StatusCode::DATA_LOSS, "replica file shrank");
      v1::ReplicaChunk c;
      c.set_data(buf.data(), *got);
      if (!writer->Write(c)) return grpc::Status(grpc::StatusCode::CANCELLED, "reader went away");
      off += *got;
    }
  }
  return grpc::Status::OK;
}

}  // namespace ckptd::rpc
