// The stream path's source: tensor bytes as chunks of a Save stream. The
// transport adapts itself to ChunkStream (rpc/ wraps a gRPC ServerReader of
// raw messages with its idle watchdog, handing each message's payload over
// as views into gRPC's own buffers); a callback reactor can later implement
// it as a bounded queue it fills and the session drains.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "daemon/ingest/tensor_source.h"

namespace ckptd::ingest {

class ChunkStream {
 public:
  virtual ~ChunkStream() = default;
  // Hands the next message's bytes to `write`, in one or more pieces valid
  // only during each call: true, or false at the stream's clean end.
  // Errors: a message that is not data (INVALID_ARGUMENT), the client went
  // away or stalled (CANCELLED), or write's own.
  virtual absl::StatusOr<bool> Next(const ByteWriter& write) = 0;
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
