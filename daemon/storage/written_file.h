// A file written under a temp name for a commit to rename, and the
// gguf::Sink that writes onto an env::WritableFile. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "daemon/env/env.h"
#include "daemon/gguf/writer.h"

namespace ckptd::storage {

struct WrittenFile {
  std::string temp_path;
  std::string final_name;
  uint64_t bytes = 0;
  uint64_t zero_copy_bytes = 0;  // written from the source's memory (WritableFile::AppendStable)
  uint64_t shared_bytes = 0;     // shared with the clone source (WritableFile::AppendClone)
  bool direct = false;           // written with O_DIRECT to the end
  gguf::ContentDigest digest;
};

class FileSink final : public gguf::Sink {
 public:
  // `clone_source`: the file AppendClone shares from (none: it cannot).
  explicit FileSink(env::WritableFile* file, const env::RandomAccessFile* clone_source = nullptr)
      : file_(file), clone_source_(clone_source) {}
  absl::Status Append(std::string_view bytes) override { return file_->Append(bytes); }
  absl::Status AppendStable(std::string_view bytes) override { return file_->AppendStable(bytes); }
  absl::Status WriteAt(uint64_t offset, std::string_view bytes) override {
    return file_->WriteAt(offset, bytes);
  }
  absl::Status AppendClone(uint64_t src_offset, uint64_t n) override {
    if (clone_source_ == nullptr) return gguf::Sink::AppendClone(src_offset, n);
    return file_->AppendClone(*clone_source_, src_offset, n);
  }

 private:
  env::WritableFile* file_;
  const env::RandomAccessFile* clone_source_;
};

}  // namespace ckptd::storage
