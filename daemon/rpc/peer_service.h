// The Peers service ([peers] listen): replicas in (PutReplica), listed and
// read back (ListReplicas, GetReplica), over its own listener with its own
// credentials. With a token, every call must carry it ("authorization:
// Bearer <token>"), compared in constant time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ckptd/v1/ckptd.grpc.pb.h"
#include "daemon/replication/replica_store.h"

namespace ckptd::rpc {

class PeerService final : public v1::Peers::Service {
 public:
  // `store` must outlive the service; `token` "" = none required.
  PeerService(replication::ReplicaStore* store, std::string token)
      : store_(store), token_(std::move(token)) {}

  grpc::Status PutReplica(grpc::ServerContext* ctx, grpc::ServerReader<v1::ReplicaChunk>* reader,
                          v1::ReplicaAck* resp) override;
  grpc::Status ListReplicas(grpc::ServerContext* ctx, const v1::ListReplicasRequest* req,
                            v1::ListReplicasResponse* resp) override;
  grpc::Status GetReplica(grpc::ServerContext* ctx, const v1::GetReplicaRequest* req,
                          grpc::ServerWriter<v1::ReplicaChunk>* writer) override;

 private:
  grpc::Status Authorize(grpc::ServerContext* ctx) const;
  // Streams the open files' bytes in kReplicaChunk messages.
  static grpc::Status SendReplicaFiles(
      const std::vector<replication::ReplicaFileSpec>& files,
      const std::vector<std::unique_ptr<env::RandomAccessFile>>& open,
      grpc::ServerWriter<v1::ReplicaChunk>* writer);
  replication::ReplicaStore* store_;
  const std::string token_;
};

}  // namespace ckptd::rpc
