// The stream path's source: tensor bytes as chunks of a Save stream. The
// transport adapts itself to ChunkStream (rpc/ wraps a gRPC ServerReader
// with its idle watchdog); a callback reactor can later implement it as a
// bounded queue it fills and the session drains.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "daemon/ingest/tensor_source.h"

namespace ckptd::ingest {

class ChunkStream {
 public:
  virtual ~ChunkStream() = default;
  // The next chunk into *chunk: true, or false at the stream's clean end.
  // Errors: a message that is not data (INVALID_ARGUMENT), the client went
  // away or stalled (CANCELLED).
  virtual absl::StatusOr<bool> Next(std::string* chunk) = 0;
};

class StreamSource final : public TensorSource {
 public:
  explicit StreamSource(ChunkStream* stream) : stream_(stream) {}
  std::string_view transport() const override { return "grpc-stream"; }
  absl::Status CopyTo(const ByteWriter& write) override;

 private:
  ChunkStream* stream_;
};

}  // namespace ckptd::ingest
