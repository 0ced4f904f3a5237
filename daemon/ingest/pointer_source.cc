// Pointer source: process_vm_readv into one buffer, then the writer.
#include "daemon/ingest/pointer_source.h"

#include "daemon/base/status.h"
#include "daemon/base/strings.h"

namespace ckptd::ingest {

absl::StatusOr<std::optional<gguf::Digest128>> PointerSource::HashTensor(size_t i) {
  if (i >= ranges_.size()) return std::optional<gguf::Digest128>();
  gguf::TensorHasher hasher;
  const PointerRange& r = ranges_[i];
  std::string buffer(std::min<uint64_t>(r.bytes, kBufferBytes), '\0');
  for (uint64_t at = 0; at < r.bytes; at += buffer.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), r.bytes - at));
    if (absl::Status st = attachment_->memory->Read(r.address + at, n, buffer.data()); !st.ok()) {
      return absl::Status(st.code(), StrCat("tensors[", i, "]: ", st.message()));
    }
    hasher.Update(buffer.data(), n);
  }
  return std::optional<gguf::Digest128>(hasher.Finish());
}

absl::Status PointerSource::CopyTo(const ByteWriter& write) {
  uint64_t largest = 0;
  for (const PointerRange& r : ranges_) largest = std::max(largest, r.bytes);
  std::string buffer(std::min<uint64_t>(largest, kBufferBytes), '\0');
  for (size_t i = 0; i < ranges_.size(); ++i) {
    const PointerRange& r = ranges_[i];
    for (uint64_t at = 0; at < r.bytes; at += buffer.size()) {
      if (!attachment_->connected) {
        return absl::AbortedError(
            StrCat("the trainer (pid ", attachment_->pid,
                   ") closed its arena-socket connection mid-save; nothing was committed"));
      }
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), r.bytes - at));
      if (absl::Status st = attachment_->memory->Read(r.address + at, n, buffer.data()); !st.ok()) {
        return absl::Status(st.code(), StrCat("tensors[", i, "]: ", st.message()));
      }
      CKPTD_TRY(write(std::string_view(buffer.data(), n)));
    }
  }
  return absl::OkStatus();
}

}  // namespace ckptd::ingest
