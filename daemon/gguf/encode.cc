// GGUF header encoder.
#include "daemon/gguf/encode.h"

#include <bit>
#include <cassert>
#include <cstring>
#include <stdexcept>

namespace ckptd::gguf {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF writer assumes little-endian");

template <typename T>
void Put(std::string* out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out->append(buf, sizeof(T));
}

void PutString(std::string* out, std::string_view s) {
  Put<uint64_t>(out, s.size());
  out->append(s);
}

}  // namespace

void AppendValue(std::string* out, const Value& v) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          PutString(out, x);
        } else if constexpr (std::is_same_v<T, Array>) {
          Put<uint32_t>(out, static_cast<uint32_t>(x.element_type));
          Put<uint64_t>(out, x.items.size());
          for (const Value& item : x.items) AppendValue(out, item);
        } else if constexpr (std::is_same_v<T, bool>) {
          Put<uint8_t>(out, x ? 1 : 0);
        } else {
          Put<T>(out, x);
        }
      },
      v.storage());
}

bool IsDigestSlot(std::string_view key) {
  return key == kKeyUuid || key == kKeyContentDigest || key == kKeyTensorDigests ||
         key == kKeyMetadataDigest;
}

Digest128 MetadataDigest(uint32_t version, const Metadata& metadata,
                         const std::vector<TensorInfo>& tensors) {
  TensorHasher hasher;
  std::string out;
  Put<uint32_t>(&out, kMagic);
  Put<uint32_t>(&out, version);
  Put<uint64_t>(&out, tensors.size());
  Put<uint64_t>(&out, metadata.size());
  for (const auto& [key, value] : metadata.entries()) {
    PutString(&out, key);
    Put<uint32_t>(&out, static_cast<uint32_t>(value.type()));
    if (!IsDigestSlot(key)) AppendValue(&out, value);
    if (out.size() >= (1 << 20)) {
      hasher.Update(out.data(), out.size());
      out.clear();
    }
  }
  for (const TensorInfo& t : tensors) {
    PutString(&out, t.name);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t n : t.ne) Put<uint64_t>(&out, n);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.type));
    Put<uint64_t>(&out, t.offset);
  }
  hasher.Update(out.data(), out.size());
  return hasher.Finish();
}

std::string EncodeHeader(const Layout& layout) {
  std::string out;
  out.reserve(layout.data_offset);
  Put<uint32_t>(&out, kMagic);
  Put<uint32_t>(&out, kVersion);
  Put<uint64_t>(&out, layout.tensors.size());
  Put<uint64_t>(&out, layout.metadata.size());
  for (const auto& [key, value] : layout.metadata.entries()) {
    PutString(&out, key);
    Put<uint32_t>(&out, static_cast<uint32_t>(value.type()));
    AppendValue(&out, value);
  }
  for (const TensorInfo& t : layout.tensors) {
    PutString(&out, t.name);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t n : t.ne) Put<uint64_t>(&out, n);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.type));
    Put<uint64_t>(&out, t.offset);
  }
  // The planner and the encoder must agree to the byte; a mismatch is a bug.
  if (out.size() != layout.header_bytes) {
    throw std::logic_error("gguf: encoded header size differs from the planned size");
  }
  out.resize(layout.data_offset, '\0');
  return out;
}

}  // namespace ckptd::gguf
