// Bounds-checked GGUF reader and content verifier. Reads only the header
// unless asked to verify; every malformed input is a DataLoss status naming
// what is wrong and where, never an out-of-bounds read or a crash.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/base/byte_source.h"
#include "daemon/gguf/digest.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/sha1.h"
#include "daemon/gguf/value.h"

namespace ckptd::gguf {

struct GgufFile {
  uint32_t version = 0;
  Metadata metadata;
  std::vector<TensorInfo> tensors;  // in file order
  uint32_t alignment = kDefaultAlignment;
  uint64_t header_bytes = 0;  // up to the end of the tensor table
  uint64_t data_offset = 0;
  uint64_t file_size = 0;
};

// Parses and validates the header and tensor table of `src`. Besides the
// format's rules it caps arrays at 2^24 elements and key/value and tensor
// counts at 2^20, so memory stays bounded by what real models need.
absl::StatusOr<GgufFile> ReadHeader(const ByteSource& src);

struct VerifyReport {
  ContentDigest computed;
  std::string stored_content_digest;
  bool metadata_covered = false;  // the file carries a metadata digest (and it matched)
};

// The per-tensor digests stored in ckpt.tensor_digests, in file order; empty
// when the file stores none. DATA_LOSS when the list does not match the
// tensor table in length or an entry is not a digest (naming the tensor).
absl::StatusOr<std::vector<Digest128>> StoredTensorDigests(const GgufFile& file);

// A tensor that another file holds too: the same name, type, shape and
// size, and the digest that file records for it.
struct SameTensor {
  size_t index = 0;  // in the tensors asked about
  size_t other = 0;  // in the other file
  Digest128 digest;  // the other file's
};
// The tensors of `tensors` (a layout's or a file's) that `other` holds with
// a recorded digest, in order; none when `other` records no readable digests.
// What may be shared or copied from `other` starts here; the callers add
// their own offset rules and the proof that the bytes are equal.
std::vector<SameTensor> TensorsAlsoIn(std::span<const TensorInfo> tensors, const GgufFile& other);

// Checks ckpt.metadata_digest against the header as parsed (header-only,
// no data read). true: covered and it matches; false: the file has no
// metadata digest (written before ckptd recorded one); DATA_LOSS: it does
// not match, is not a digest, or a key one bit away from its name stands
// where it should be (a damaged key name must not pass for an old file).
absl::StatusOr<bool> CheckMetadataDigest(const GgufFile& file);

// Re-reads all tensor data and checks it against the stored digests:
//   FailedPrecondition  the file carries no ckpt.content_digest (not ckptd's)
//   DataLoss            a mismatch; names the first mismatching tensor when
//                       per-tensor digests are stored; a metadata digest that
//                       does not match; a padding byte that is not zero
absl::StatusOr<VerifyReport> Verify(const ByteSource& src, const GgufFile& file);

// Verify's checks made on a file's bytes as they go past in file order, for
// a caller that holds them anyway (a download) and need not read them back:
// each tensor's digest as the tensor ends, zero padding as it arrives, then
// the content digest and uuid. Errors are Verify's. `file` (parsed from
// the same bytes) must outlive the verifier. Not thread-safe.
class DataVerifier {
 public:
  // `from`: the offset of the first byte Update will see, 0 or at most
  // file.header_bytes (the header's bytes were parsed, so they are skipped).
  static absl::StatusOr<std::unique_ptr<DataVerifier>> Start(const GgufFile& file,
                                                             uint64_t from = 0);
  // The file's next bytes; DataLoss at the first that differs, or for
  // bytes past the file's end.
  absl::Status Update(std::string_view bytes);
  // After the last byte. A gguf-hash uuid over a tensor table that is not
  // in file order cannot be computed from the stream: it is read from
  // `src`, and without one that is FailedPrecondition.
  absl::StatusOr<VerifyReport> Finish(const ByteSource* src = nullptr);

 private:
  DataVerifier(const GgufFile& file, uint64_t from);
  // Closes every tensor that ends at or before `pos`, checking its digest.
  absl::Status EndTensorsAt(uint64_t pos);

  const GgufFile& file_;
  uint64_t pos_;
  Digest128 want_;
  VerifyReport report_;
  const std::vector<Value>* stored_ = nullptr;  // per-tensor digests, when usable
  std::vector<size_t> order_;                   // tensor indices by offset
  size_t next_ = 0;                             // in order_: the tensor not yet ended
  TensorHasher hasher_;
  std::unique_ptr<Sha1> sha1_;  // for a gguf-hash uuid
  bool sha1_needs_table_order_ = false;
};

}  // namespace ckptd::gguf
