// Where a save's tensor bytes come from. Every transport is a TensorSource
// feeding the one SaveSession (ARCHITECTURE.md, "One save"):
//   StreamSource   chunks of a Save stream (any producer: a gRPC reader now,
//                  a callback reactor's bounded queue later)
//   ArenaSource    windows of the trainer's sealed memfd arenas (shm path)
//   PointerSource  the trainer's own memory, read with process_vm_readv
// A source hands every planned tensor's bytes, in plan order and any
// chunking, to the session's writer, and knows nothing of GGUF layout.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/gguf/digest.h"

namespace ckptd::ingest {

// Takes the next bytes of the save; an error stops the source.
using ByteWriter = std::function<absl::Status(std::string_view)>;

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  // Recorded as ckpt.transport: "grpc-stream", "shm", "pointer".
  virtual std::string_view transport() const = 0;
  // True when the bytes handed to `write` stay valid and unchanged until the
  // save has ended (committed or failed), so the writer may write them to
  // disk straight from that memory instead of copying them (the arena's
  // pages). False: each chunk is valid only during its `write` call.
  virtual bool stable() const { return false; }
  // Delivers every byte to `write`, or fails with the source's own error
  // (client gone, stalled staging, unreadable range) or write's.
  virtual absl::Status CopyTo(const ByteWriter& write) = 0;
  // Per planned tensor, the digest its bytes are proved to have without
  // reading them (bytes that can never change, hashed by an earlier save);
  // nullopt, or an empty vector: hash them. Called before CopyTo.
  virtual std::vector<std::optional<gguf::Digest128>> KnownDigests() const { return {}; }
  // Before CopyTo, for a source whose bytes are not stable(): the digest of
  // planned tensor `i`'s bytes as they are now, read for that alone, so a
  // save can tell that a tensor equals the previous checkpoint's before its
  // bytes arrive (the pointer path: a second read of the trainer's memory,
  // which does not change while a pointer save reads it). nullopt: this
  // source cannot; can_hash_tensors() says so before any call.
  virtual bool can_hash_tensors() const { return false; }
  virtual absl::StatusOr<std::optional<gguf::Digest128>> HashTensor(size_t i) {
    (void)i;
    return std::optional<gguf::Digest128>();
  }
  // After every byte was delivered: the digest of each planned tensor's
  // bytes, for the source to remember where its bytes cannot change.
  virtual void Learn(std::span<const gguf::Digest128> digests) { (void)digests; }
};

}  // namespace ckptd::ingest
