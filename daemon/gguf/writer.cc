// Streaming GGUF writer.
#include "daemon/gguf/writer.h"

#include <algorithm>
#include <stdexcept>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/gguf/encode.h"

namespace ckptd::gguf {
namespace {

constexpr char kZeros[256] = {};

}  // namespace

absl::Status StringSink::Append(std::string_view bytes) {
  data_.append(bytes);
  return absl::OkStatus();
}

absl::Status StringSink::WriteAt(uint64_t offset, std::string_view bytes) {
  if (offset > data_.size() || bytes.size() > data_.size() - offset) {
    return absl::OutOfRangeError("StringSink::WriteAt past the end");
  }
  data_.replace(offset, bytes.size(), bytes);
  return absl::OkStatus();
}

void FillDigestSlots(const ContentDigest& digest, Layout* layout) {
  std::vector<Value> per_tensor;
  per_tensor.reserve(digest.tensors.size());
  for (const Digest128& d : digest.tensors) per_tensor.push_back(Value::String(DigestHex(d)));
  layout->metadata.Set(std::string(kKeyUuid), Value::String(digest.uuid));
  layout->metadata.Set(std::string(kKeyContentDigest),
                       Value::String(ContentDigestString(digest.content)));
  layout->metadata.Set(std::string(kKeyTensorDigests),
                       Value::MakeArray(ValueType::kString, std::move(per_tensor)));
  // Last: every other value is final by now (slots set by SetSlot included).
  if (layout->metadata.Find(kKeyMetadataDigest) != nullptr) {
    layout->metadata.Set(std::string(kKeyMetadataDigest),
                         Value::String(ContentDigestString(
                             MetadataDigest(kVersion, layout->metadata, layout->tensors))));
  }
}

Writer::Writer(Layout layout, Sink* sink) : layout_(std::move(layout)), sink_(sink) {
  digest_.tensors.reserve(layout_.tensors.size());
  if (layout_.uuid_scheme == UuidScheme::kGgufHash) gguf_hash_ = std::make_unique<GgufHashWorker>();
}

absl::Status Writer::WriteHeader() {
  if (header_written_) return absl::FailedPreconditionError("GGUF header already written");
  std::string header = EncodeHeader(layout_);
  CKPTD_TRY(sink_->Append(header));
  position_ = header.size();
  header_written_ = true;
  // Zero-byte tensors cannot exist (dims are >= 1), so tensor 0 is open.
  return absl::OkStatus();
}

absl::Status Writer::Pad() {
  uint64_t aligned = 0;
  AlignUp(position_, layout_.alignment, &aligned);
  while (position_ < aligned) {
    size_t n = std::min<uint64_t>(aligned - position_, sizeof(kZeros));
    CKPTD_TRY(sink_->Append(std::string_view(kZeros, n)));
    position_ += n;
  }
  return absl::OkStatus();
}

void Writer::CloseTensor(const Digest128& digest) {
  digest_.tensors.push_back(digest);
  hasher_.Reset();
  ++tensor_;
  tensor_filled_ = 0;
}

absl::Status Writer::WriteHeldBack() {
  holding_ = false;
  for (std::string_view bytes : held_) {
    CKPTD_TRY(sink_->AppendStable(bytes));
    position_ += bytes.size();
  }
  held_.clear();
  return absl::OkStatus();
}

absl::Status Writer::SettleCandidate(const CloneCandidate& candidate, const Digest128& digest) {
  if (digest == candidate.digest) {
    absl::Status shared = sink_->AppendClone(candidate.src_offset, candidate.length);
    if (shared.ok()) {
      holding_ = false;
      held_.clear();
      position_ += candidate.length;
      shared_bytes_ += candidate.length;
      CloseTensor(digest);
      return absl::OkStatus();
    }
    if (!absl::IsUnimplemented(shared)) return shared;
    sink_shares_ = false;  // written from here on, without holding bytes back
  }
  CKPTD_TRY(WriteHeldBack());
  CloseTensor(digest);
  return Pad();
}

absl::Status Writer::WriteData(std::string_view bytes, bool stable) {
  if (!header_written_ || finished_) {
    return absl::FailedPreconditionError("GGUF data written outside header..finish");
  }
  while (!bytes.empty()) {
    if (tensor_ >= layout_.tensors.size()) {
      return absl::InvalidArgumentError(
          StrCat(bytes.size(), " bytes of data past the last tensor"));
    }
    const TensorInfo& t = layout_.tensors[tensor_];
    if (tensor_filled_ == 0 && position_ != layout_.data_offset + t.offset) {
      throw std::logic_error("gguf: tensor data position differs from its planned offset");
    }
    size_t n = std::min<uint64_t>(bytes.size(), t.nbytes - tensor_filled_);
    const CloneCandidate* candidate =
        sink_shares_ && tensor_ < clones_.size() && clones_[tensor_] ? &*clones_[tensor_] : nullptr;
    const Digest128* known =
        tensor_ < known_.size() && known_[tensor_] ? &*known_[tensor_] : nullptr;
    absl::Status appended;
    if (tensor_filled_ == 0) {
      holding_ = candidate != nullptr;
      cloned_ahead_ = false;
      if (candidate != nullptr && known != nullptr && *known == candidate->digest) {
        // Proved equal before its bytes arrive: shared now, its bytes only counted.
        holding_ = false;
        appended = sink_->AppendClone(candidate->src_offset, candidate->length);
        if (appended.ok()) {
          cloned_ahead_ = true;
          position_ += candidate->length;
          shared_bytes_ += candidate->length;
        } else if (absl::IsUnimplemented(appended)) {
          sink_shares_ = false;
          appended = absl::OkStatus();
        }
      }
    }
    // Bytes the caller may reuse cannot wait for the tensor's digest.
    if (appended.ok() && holding_ && !stable) appended = WriteHeldBack();
    // SHA-1 (when asked for) runs on its worker while this thread writes.
    if (gguf_hash_) gguf_hash_->Submit(bytes.data(), n);
    if (cloned_ahead_) {
      // Nothing to write: the clone holds these bytes.
    } else if (appended.ok() && holding_) {
      held_.push_back(bytes.substr(0, n));
    } else if (appended.ok()) {
      appended =
          stable ? sink_->AppendStable(bytes.substr(0, n)) : sink_->Append(bytes.substr(0, n));
      position_ += n;
    }
    if (!appended.ok()) {
      if (gguf_hash_) gguf_hash_->Wait();
      return appended;
    }
    if (known == nullptr) hasher_.Update(bytes.data(), n);
    tensor_filled_ += n;
    bytes.remove_prefix(n);
    if (tensor_filled_ == t.nbytes) {
      const Digest128 digest = known != nullptr ? *known : hasher_.Finish();
      if (known != nullptr) known_bytes_ += t.nbytes;
      if (cloned_ahead_) {
        cloned_ahead_ = false;
        CloseTensor(digest);  // the clone's length covered the padding
      } else if (holding_) {
        absl::Status settled = SettleCandidate(*candidate, digest);
        if (!settled.ok()) {
          if (gguf_hash_) gguf_hash_->Wait();
          return settled;
        }
      } else {
        CloseTensor(digest);
        CKPTD_TRY(Pad());
      }
    }
  }
  if (gguf_hash_) gguf_hash_->Wait();  // the caller's bytes are free again
  return absl::OkStatus();
}

absl::Status Writer::SetSlot(std::string_view key, Value value) {
  const Value* old = layout_.metadata.Find(key);
  if (old == nullptr || EncodedValueSize(*old) != EncodedValueSize(value) ||
      old->type() != value.type()) {
    return absl::InvalidArgumentError(
        StrCat("metadata slot '", key, "' is missing or has another type or size"));
  }
  layout_.metadata.Set(std::string(key), std::move(value));
  slots_set_ = true;
  return absl::OkStatus();
}

absl::StatusOr<ContentDigest> Writer::Finish() {
  if (!header_written_ || finished_) {
    return absl::FailedPreconditionError("GGUF writer finished twice or before its header");
  }
  if (tensor_ < layout_.tensors.size()) {
    const TensorInfo& t = layout_.tensors[tensor_];
    return absl::FailedPreconditionError(
        StrCat("tensor '", t.name, "' has ", tensor_filled_, " of ", t.nbytes, " bytes; ",
               layout_.tensors.size() - tensor_, " tensor(s) incomplete"));
  }
  if (position_ != layout_.file_size) {
    throw std::logic_error("gguf: file size differs from the planned size");
  }
  ContentDigestBuilder builder;
  for (size_t i = 0; i < layout_.tensors.size(); ++i) {
    const TensorInfo& t = layout_.tensors[i];
    builder.AddTensor(t.name, t.type, t.ne, t.nbytes, digest_.tensors[i]);
  }
  digest_.content = builder.Finish();
  digest_.uuid = gguf_hash_ ? gguf_hash_->FinishUuid() : UuidFromDigest(digest_.content);
  finished_ = true;
  if (layout_.has_digest_slots) FillDigestSlots(digest_, &layout_);
  // Rewrites the header when it holds slots (digests, or values set later).
  if (layout_.has_digest_slots || slots_set_) CKPTD_TRY(sink_->WriteAt(0, EncodeHeader(layout_)));
  return digest_;
}

}  // namespace ckptd::gguf
