// Save stream data messages: the wire form `0x12 varint(len) payload`.
#include "daemon/rpc/save_frames.h"

namespace ckptd::rpc {
namespace {

constexpr uint8_t kDataTag = (2 << 3) | 2;  // field 2 (`data`), length-delimited
constexpr int kMaxVarintBytes = 10;
constexpr uint64_t kMaxPayload = INT32_MAX;  // protobuf's limit on a length-delimited field

// Reads the message's bytes across slice boundaries.
class SliceCursor {
 public:
  explicit SliceCursor(std::span<const std::string_view> slices) : slices_(slices) { SkipEmpty(); }

  bool at_end() const { return slice_ == slices_.size(); }
  std::optional<uint8_t> Byte() {
    if (at_end()) return std::nullopt;
    const auto b = static_cast<uint8_t>(slices_[slice_][offset_]);
    if (++offset_ == slices_[slice_].size()) {
      ++slice_;
      offset_ = 0;
      SkipEmpty();
    }
    return b;
  }
  // The rest of the message as views.
  std::vector<std::string_view> Rest(uint64_t* total) {
    std::vector<std::string_view> out;
    *total = 0;
    for (; !at_end(); ++slice_, offset_ = 0) {
      std::string_view v = slices_[slice_].substr(offset_);
      if (v.empty()) continue;
      out.push_back(v);
      *total += v.size();
    }
    return out;
  }

 private:
  void SkipEmpty() {
    while (slice_ < slices_.size() && slices_[slice_].empty()) ++slice_;
  }
  std::span<const std::string_view> slices_;
  size_t slice_ = 0;
  size_t offset_ = 0;
};

}  // namespace

std::optional<std::vector<std::string_view>> DataPayload(
    std::span<const std::string_view> message) {
  SliceCursor at(message);
  if (at.Byte() != kDataTag) return std::nullopt;
  uint64_t size = 0;
  for (int i = 0;; ++i) {
    if (i == kMaxVarintBytes) return std::nullopt;
    std::optional<uint8_t> b = at.Byte();
    if (!b) return std::nullopt;
    if (i == kMaxVarintBytes - 1 && *b > 1) return std::nullopt;  // beyond 64 bits
    size |= static_cast<uint64_t>(*b & 0x7f) << (7 * i);
    if ((*b & 0x80) == 0) break;
  }
  if (size > kMaxPayload) return std::nullopt;  // protobuf refuses it
  uint64_t rest = 0;
  std::vector<std::string_view> payload = at.Rest(&rest);
  if (rest != size) return std::nullopt;
  return payload;
}

std::string EncodeDataPrefix(uint64_t size) {
  std::string out(1, static_cast<char>(kDataTag));
  do {
    uint8_t b = size & 0x7f;
    size >>= 7;
    if (size != 0) b |= 0x80;
    out.push_back(static_cast<char>(b));
  } while (size != 0);
  return out;
}

}  // namespace ckptd::rpc
