// The only place that calls POSIX file and memory APIs. Everything above it
// takes an Env*, so tests can substitute a fault-injecting twin. Files and
// mappings are RAII objects; every failure is a Status naming the path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/base/byte_source.h"

namespace ckptd::env {

// A read-only file read with pread; concurrent ReadAt calls are safe.
class RandomAccessFile : public ByteSource {
 public:
  const std::string& path() const { return path_; }

 protected:
  explicit RandomAccessFile(std::string path) : path_(std::move(path)) {}

 private:
  std::string path_;
};

// A whole file mapped read-only; the mapping lives as long as the object.
// Only for files nobody truncates meanwhile (that would raise SIGBUS).
class MappedFile : public ByteSource {
 public:
  virtual std::string_view bytes() const = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // The process-wide POSIX implementation; never destroyed.
  static Env* Default();

  virtual absl::StatusOr<std::unique_ptr<RandomAccessFile>> OpenForRead(
      const std::string& path) = 0;
  virtual absl::StatusOr<std::unique_ptr<MappedFile>> MapForRead(const std::string& path) = 0;
};

}  // namespace ckptd::env
