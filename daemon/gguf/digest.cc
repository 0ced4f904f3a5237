// XXH3-128 tensor digests, the canonical content digest and its uuid.
#include "daemon/gguf/digest.h"

#include <xxhash.h>

#include "daemon/base/strings.h"

namespace ckptd::gguf {
namespace {

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // digests are written lowercase: an upper-case digit is a changed byte
}

}  // namespace

std::string DigestHex(const Digest128& d) { return fmt::format("{:016x}{:016x}", d.high, d.low); }

absl::StatusOr<Digest128> ParseDigestHex(std::string_view hex) {
  if (hex.size() != 32) {
    return absl::InvalidArgumentError(
        StrCat("digest '", hex, "' has ", hex.size(), " hex digits, expected 32"));
  }
  Digest128 d;
  for (size_t i = 0; i < 32; ++i) {
    int v = HexValue(hex[i]);
    if (v < 0) return absl::InvalidArgumentError(StrCat("digest '", hex, "' is not lowercase hex"));
    uint64_t& half = i < 16 ? d.high : d.low;
    half = (half << 4) | static_cast<uint64_t>(v);
  }
  return d;
}

std::string ContentDigestString(const Digest128& d) {
  return StrCat(kContentDigestPrefix, DigestHex(d));
}

absl::StatusOr<Digest128> ParseContentDigestString(std::string_view s) {
  if (!s.starts_with(kContentDigestPrefix)) {
    return absl::InvalidArgumentError(
        StrCat("content digest '", s, "' does not start with '", kContentDigestPrefix, "'"));
  }
  return ParseDigestHex(s.substr(kContentDigestPrefix.size()));
}

std::string UuidFromDigest(const Digest128& d) {
  uint64_t hi = d.high;
  uint64_t lo = d.low;
  hi = (hi & ~uint64_t{0xf000}) | 0x8000;                      // version 8
  lo = (lo & ~(uint64_t{0xc} << 60)) | (uint64_t{0x8} << 60);  // variant 10xx
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xffff,
                     hi & 0xffff, lo >> 48, lo & 0xffffffffffffULL);
}

TensorHasher::TensorHasher() : state_(XXH3_createState()) { Reset(); }
TensorHasher::~TensorHasher() {
  if (state_ != nullptr) XXH3_freeState(state_);
}
TensorHasher::TensorHasher(TensorHasher&& other) noexcept : state_(other.state_) {
  other.state_ = nullptr;
}
TensorHasher& TensorHasher::operator=(TensorHasher&& other) noexcept {
  std::swap(state_, other.state_);
  return *this;
}

void TensorHasher::Reset() { XXH3_128bits_reset(state_); }
void TensorHasher::Update(const void* data, size_t n) { XXH3_128bits_update(state_, data, n); }
Digest128 TensorHasher::Finish() const {
  XXH128_hash_t h = XXH3_128bits_digest(state_);
  return {h.low64, h.high64};
}

void ContentDigestBuilder::AddTensor(std::string_view name, TensorType type,
                                     std::span<const uint64_t> ne, uint64_t nbytes,
                                     const Digest128& tensor_digest) {
  PutU64(&stream_, name.size());
  stream_.append(name);
  PutU32(&stream_, static_cast<uint32_t>(type));
  PutU32(&stream_, static_cast<uint32_t>(ne.size()));
  for (uint64_t n : ne) PutU64(&stream_, n);
  PutU64(&stream_, nbytes);
  PutU64(&stream_, tensor_digest.low);
  PutU64(&stream_, tensor_digest.high);
}

Digest128 ContentDigestBuilder::Finish() const {
  XXH128_hash_t h = XXH3_128bits(stream_.data(), stream_.size());
  return {h.low64, h.high64};
}

}  // namespace ckptd::gguf
