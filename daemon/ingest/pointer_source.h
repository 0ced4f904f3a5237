// The pointer path's source: tensors in the trainer's own memory, named by
// address, read with process_vm_readv through an attachment (the trainer's
// connection on the arena socket) into one reused buffer. Reads only the
// ranges named, only from the attached process, only while its connection
// is open. Thread-compatible.
#pragma once

#include <memory>
#include <vector>

#include "daemon/ingest/arena_registry.h"
#include "daemon/ingest/tensor_source.h"

namespace ckptd::ingest {

struct PointerRange {
  uint64_t address = 0;
  uint64_t bytes = 0;
};

class PointerSource final : public TensorSource {
 public:
  static constexpr size_t kBufferBytes = 4 << 20;  // the daemon's memory per pointer save

  PointerSource(std::shared_ptr<const Attachment> attachment, std::vector<PointerRange> ranges)
      : attachment_(std::move(attachment)), ranges_(std::move(ranges)) {}
  std::string_view transport() const override { return "pointer"; }
  // INVALID_ARGUMENT naming the tensor for a range that faults, ABORTED when
  // the trainer's connection closed or the process exited mid-read.
  absl::Status CopyTo(const ByteWriter& write) override;
  bool can_hash_tensors() const override { return true; }
  absl::StatusOr<std::optional<gguf::Digest128>> HashTensor(size_t i) override;

 private:
  std::shared_ptr<const Attachment> attachment_;
  std::vector<PointerRange> ranges_;
};

}  // namespace ckptd::ingest
