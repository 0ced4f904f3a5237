// Streams a planned GGUF file into a Sink: header first (digest slots as
// placeholders), then tensor data in layout order with alignment padding,
// hashing as it goes; Finish() rewrites the header with the real digests.
// The writer knows nothing of files: a Sink may be memory, a file or a test
// double. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/gguf/digest.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/sha1.h"

namespace ckptd::gguf {

class Sink {
 public:
  virtual ~Sink() = default;
  // Appends bytes at the current end.
  virtual absl::Status Append(std::string_view bytes) = 0;
  // Append for bytes that stay valid and unchanged until the file is
  // finished: a sink may keep (and write from) them instead of copying.
  virtual absl::Status AppendStable(std::string_view bytes) { return Append(bytes); }
  // Overwrites bytes already appended (used once, for the header).
  virtual absl::Status WriteAt(uint64_t offset, std::string_view bytes) = 0;
  // Appends `n` bytes that equal bytes [src_offset, src_offset + n) of the
  // sink's clone source by sharing them (WritableFile::AppendClone).
  // UNIMPLEMENTED, with nothing appended, where the sink cannot.
  virtual absl::Status AppendClone(uint64_t src_offset, uint64_t n) {
    (void)src_offset, (void)n;
    return absl::UnimplementedError("this sink cannot share bytes");
  }
};

// A tensor whose bytes another file (the sink's clone source) may hold
// already: [src_offset, src_offset + length) is the tensor there with its
// zero padding, `length` the tensor's bytes padded to the alignment here
// too, and `digest` its digest there. When the bytes written hash to it,
// the sink shares that range instead of writing them.
struct CloneCandidate {
  uint64_t src_offset = 0;
  uint64_t length = 0;
  Digest128 digest;
};

// Keeps everything in memory; for tests and small files.
class StringSink final : public Sink {
 public:
  absl::Status Append(std::string_view bytes) override;
  absl::Status WriteAt(uint64_t offset, std::string_view bytes) override;
  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

class Writer {
 public:
  // `sink` must outlive the writer.
  Writer(Layout layout, Sink* sink);

  absl::Status WriteHeader();
  // Appends tensor bytes in layout order. A call may end mid-tensor or span
  // several tensors; bytes beyond the last tensor are an error. `stable`:
  // the bytes stay valid and unchanged until the sink's file is finished
  // (Sink::AppendStable), so they need not be copied.
  absl::Status WriteData(std::string_view bytes, bool stable = false);
  // Fails unless every tensor is complete; pads, computes the digests and,
  // when the layout reserved digest slots, rewrites the header with them.
  absl::StatusOr<ContentDigest> Finish();

  // Before any data: per tensor in layout order, where its bytes may be
  // shared from (nullopt: written). A candidate's bytes must come stable
  // (WriteData's `stable`): they are held back, hashed, and then either
  // shared or written where they lie; bytes that come unstable are written
  // as they come. The digests recorded are those of the bytes given, always.
  void SetCloneCandidates(std::vector<std::optional<CloneCandidate>> candidates) {
    clones_ = std::move(candidates);
  }
  // Before any data: per tensor in layout order, the digest its bytes are
  // proved to have (bytes that cannot change, hashed before); such a
  // tensor is not hashed again, and when it is also a clone candidate with
  // that digest it is shared before its bytes arrive (stable or not), which
  // are then only counted. nullopt: hashed.
  void SetKnownDigests(std::vector<std::optional<Digest128>> known) { known_ = std::move(known); }
  // Bytes (padding included) shared rather than written.
  uint64_t shared_bytes() const { return shared_bytes_; }
  // The sink said it cannot share (AppendClone UNIMPLEMENTED).
  bool sink_refused_sharing() const { return !sink_shares_; }
  // Tensor bytes whose digest was known rather than computed.
  uint64_t known_bytes() const { return known_bytes_; }

  // Replaces a metadata value before Finish() rewrites the header; the new
  // value must encode to exactly the same size (a fixed-width slot).
  absl::Status SetSlot(std::string_view key, Value value);

  const Layout& layout() const { return layout_; }
  uint64_t bytes_written() const { return position_; }
  // Index of the tensor the next WriteData byte belongs to.
  size_t current_tensor() const { return tensor_; }

 private:
  absl::Status Pad();
  void CloseTensor(const Digest128& digest);
  // The held-back bytes of a candidate tensor, written where they lie.
  absl::Status WriteHeldBack();
  // A candidate tensor complete: shared when it hashes to its candidate's
  // digest and the sink can share, written otherwise.
  absl::Status SettleCandidate(const CloneCandidate& candidate, const Digest128& digest);

  Layout layout_;
  Sink* sink_;
  bool header_written_ = false;
  bool finished_ = false;
  bool slots_set_ = false;
  uint64_t position_ = 0;  // bytes appended to the sink
  size_t tensor_ = 0;      // tensor being filled
  uint64_t tensor_filled_ = 0;
  TensorHasher hasher_;
  std::vector<std::optional<CloneCandidate>> clones_;
  std::vector<std::optional<Digest128>> known_;
  uint64_t known_bytes_ = 0;
  bool cloned_ahead_ = false;           // the current tensor was shared before its bytes came
  bool holding_ = false;                // the current tensor's bytes are held back
  std::vector<std::string_view> held_;  // ... these
  bool sink_shares_ = true;             // false once the sink said it cannot
  uint64_t shared_bytes_ = 0;
  std::unique_ptr<GgufHashWorker> gguf_hash_;  // when layout.uuid_scheme is kGgufHash
  ContentDigest digest_;
};

// Writes the digest values into a layout's metadata (slots must exist).
void FillDigestSlots(const ContentDigest& digest, Layout* layout);

}  // namespace ckptd::gguf
