// Small-file helpers built on Env: the one commit recipe for state files.
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

}  // namespace ckptd::env
