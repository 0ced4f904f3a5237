// Small-file helpers built on Env: the one commit recipe for state files.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/env.h"

namespace ckptd::env {

std::string TempName(std::string_view final_name) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return fmt::format(".{}{}{:016x}", final_name, kTempMarker, rng());
}

absl::Status WriteFileAtomically(Env* env, const std::string& path, std::string_view data) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp = StrCat(dir, "/", TempName(name));
  auto write = [&]() -> absl::Status {
    CKPTD_ASSIGN_OR_RETURN(auto file, env->NewWritableFile(tmp, DirectIo::kOff));
    CKPTD_TRY(file->Append(data));
    CKPTD_TRY(file->Sync());
    CKPTD_TRY(file->Close());
    CKPTD_TRY(env->RenameFile(tmp, path));
    return env->SyncDir(dir);
  };
  absl::Status st = write();
  if (!st.ok()) (void)env->RemoveFile(tmp);
  return st;
}

absl::StatusOr<std::string> ReadWholeFile(Env* env, const std::string& path) {
  CKPTD_ASSIGN_OR_RETURN(auto file, env->OpenForRead(path));
  std::string out(file->size(), '\0');
  CKPTD_TRY(file->ReadAt(0, out.size(), out.data()));
  return out;
}

DirectReadSource::DirectReadSource(std::unique_ptr<RandomAccessFile> file)
    : file_(std::move(file)) {}

DirectReadSource::~DirectReadSource() { std::free(buf_); }

absl::Status DirectReadSource::ReadAt(uint64_t offset, size_t n, void* dst) const {
  const uint64_t align = file_->direct_alignment();
  if (align == 0) return file_->ReadAt(offset, n, dst);  // buffered (tmpfs)
  if (offset > size() || n > size() - offset) {
    return absl::OutOfRangeError(StrCat(file_->path(), ": read of ", n, " bytes at ", offset,
                                        " past its ", size(), " bytes"));
  }
  absl::MutexLock lock(&mu_);
  if (buf_ == nullptr) {
    buf_ = static_cast<char*>(std::aligned_alloc(align, kBufferBytes));
    if (buf_ == nullptr) return absl::ResourceExhaustedError("no memory for a read buffer");
  }
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    const uint64_t start = offset / align * align;
    const size_t skip = static_cast<size_t>(offset - start);
    const size_t want = static_cast<size_t>(
        std::min<uint64_t>(kBufferBytes, (skip + n + align - 1) / align * align));
    CKPTD_ASSIGN_OR_RETURN(size_t got, file_->ReadUpTo(start, want, buf_));
    if (got <= skip) {
      return absl::DataLossError(
          StrCat(file_->path(), ": ended at ", start + got, " while reading at ", offset));
    }
    const size_t take = std::min(n, got - skip);
    std::memcpy(out, buf_ + skip, take);
    out += take;
    offset += take;
    n -= take;
  }
  return absl::OkStatus();
}

}  // namespace ckptd::env
