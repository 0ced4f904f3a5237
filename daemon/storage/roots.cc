// Confinement of run directories to the configured roots.
#include "daemon/storage/roots.h"

#include <fmt/ranges.h>

#include "daemon/base/strings.h"

namespace ckptd::storage {

absl::StatusOr<std::string> ResolveRunDir(env::Env* env, const std::vector<std::string>& roots,
                                          const std::string& run_id, const std::string& requested) {
  if (requested.empty()) return StrCat(roots.front(), "/", run_id);
  if (requested.find('\0') != std::string::npos || requested.size() > 4096) {
    return absl::InvalidArgumentError("run_dir is not a usable path");
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

}  // namespace ckptd::storage
