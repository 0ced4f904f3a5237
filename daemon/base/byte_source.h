// Random read access to an immutable byte range (a file, a mapping, a
// buffer). Implementations are thread-compatible: concurrent ReadAt calls
// are safe when the implementation says so.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/status.h"
#include "daemon/base/strings.h"

namespace ckptd {

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // Reads exactly n bytes at offset into dst; fails (never short-reads)
  // when [offset, offset + n) is not inside the source.
  virtual absl::Status ReadAt(uint64_t offset, size_t n, void* dst) const = 0;
};

// A ByteSource over memory the caller keeps alive.
class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::string_view bytes) : bytes_(bytes) {}
  uint64_t size() const override { return bytes_.size(); }
  absl::Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset > bytes_.size() || n > bytes_.size() - offset) {
      return absl::OutOfRangeError(StrCat("read of ", n, " bytes at offset ", offset,
                                          " past the end (", bytes_.size(), " bytes)"));
    }
    if (n > 0) std::memcpy(dst, bytes_.data() + offset, n);
    return absl::OkStatus();
  }

 private:
  std::string_view bytes_;
};

}  // namespace ckptd
