// Confinement of run directories to the configured roots.
#include "daemon/storage/roots.h"

#include <fmt/ranges.h>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/storage/file_names.h"

namespace ckptd::storage {

absl::StatusOr<std::string> ResolveRunDir(env::Env* env, const std::vector<std::string>& roots,
                                          const std::string& run_id, const std::string& requested) {
  if (requested.empty()) return StrCat(roots.front(), "/", run_id);
  if (requested.find('\0') != std::string::npos || requested.size() > 4096) {
    return absl::InvalidArgumentError(
        "run_dir contains a NUL byte or is longer than 4096 bytes; give an absolute path inside a "
        "root");
  }
  if (!requested.starts_with('/')) {
    return absl::InvalidArgumentError(
        StrCat("run_dir '", requested, "' is relative; give an absolute path inside a root"));
  }
  // Resolve the deepest existing ancestor (symlinks included); the rest must
  // be plain new names.
  std::string existing = requested;
  std::vector<std::string> tail;
  while (true) {
    auto real = env->RealPath(existing);
    if (real.ok()) {
      existing = *real;
      break;
    }
    size_t slash = existing.find_last_of('/');
    if (slash == std::string::npos || slash == 0) {
      return absl::InvalidArgumentError(StrCat("run_dir '", requested, "' cannot be resolved"));
    }
    tail.insert(tail.begin(), existing.substr(slash + 1));
    existing = existing.substr(0, slash);
  }
  std::string resolved = existing;
  for (const std::string& part : tail) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          StrCat("run_dir '", requested, "' has '", part, "' after its last existing directory"));
    }
    resolved += "/" + part;
  }
  for (const std::string& root : roots) {
    if (resolved == root) {
      return absl::InvalidArgumentError(StrCat("run_dir '", requested, "' is the root ", root,
                                               " itself; name a directory inside it (e.g. ", root,
                                               "/", run_id, ")"));
    }
    if (resolved.starts_with(root + "/")) return resolved;
  }
  return absl::PermissionDeniedError(StrCat("run_dir '", requested, "' resolves to ", resolved,
                                            ", outside the configured roots (",
                                            fmt::format("{}", fmt::join(roots, ", ")),
                                            "); add a root to storage.roots or pick a directory "
                                            "inside one"));
}

std::string RunOwner(env::Env* env, const std::string& dir) {
  auto text = env::ReadWholeFile(env, StrCat(dir, "/", kRunOwnerFile));
  if (!text.ok()) return "";
  std::string id = *text;
  while (!id.empty() && (id.back() == '\n' || id.back() == '\r')) id.pop_back();
  return id;
}

absl::Status WriteRunOwner(env::Env* env, const std::string& dir, const std::string& run_id) {
  return env::WriteFileAtomically(env, StrCat(dir, "/", kRunOwnerFile), StrCat(run_id, "\n"));
}

absl::Status CheckRunDirFree(env::Env* env, const std::vector<std::string>& roots,
                             const std::string& run_id, const std::string& dir) {
  const std::string owner = RunOwner(env, dir);
  if (!owner.empty() && owner != run_id) {
    return absl::FailedPreconditionError(
        StrCat("run_dir ", dir, " belongs to run '", owner, "' (", dir, "/", kRunOwnerFile,
               "); a directory holds one run: pick another run_dir, or open run '", owner,
               "' to continue it"));
  }
  std::string root;
  for (const std::string& r : roots) {
    if (dir.starts_with(r + "/")) root = r;
  }
  if (root.empty()) return absl::OkStatus();  // ResolveRunDir refuses it
  for (size_t slash = dir.find('/', root.size() + 1); slash != std::string::npos;
       slash = dir.find('/', slash + 1)) {
    const std::string ancestor = dir.substr(0, slash);
    std::string holder = RunOwner(env, ancestor);
    if (holder.empty()) {
      auto st = env->Stat(StrCat(ancestor, "/", kWeightsDir));
      if (!st.ok() || !st->is_dir) continue;
      holder = ancestor.substr(ancestor.find_last_of('/') + 1);
    }
    return absl::FailedPreconditionError(
        StrCat("run_dir ", dir, " is inside ", ancestor, ", the directory of run '", holder,
               "'; runs do not nest: pick a directory outside it"));
  }
  return absl::OkStatus();
}

absl::Status WriteRunSettings(env::Env* env, const std::string& dir, std::string_view text) {
  return env::WriteFileAtomically(env, StrCat(dir, "/", kRunSettingsFile), text);
}

absl::StatusOr<std::string> ReadRunSettings(env::Env* env, const std::string& dir) {
  return env::ReadWholeFile(env, StrCat(dir, "/", kRunSettingsFile));
}

}  // namespace ckptd::storage
