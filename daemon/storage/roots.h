// Where a run may live: a trainer names a run directory, and only a
// directory strictly inside one of the configured roots is accepted, with
// every symlink of its existing part resolved (so no link leads out) and no
// "." or ".." in the part still to be created. Security-critical; pure over Env.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"

namespace ckptd::storage {

// The absolute run directory for `requested` (or <first root>/<run_id> when
// empty). `roots` must be absolute and resolved. INVALID_ARGUMENT for a
// relative path, one that cannot be resolved, has "."/".." after its last existing
// directory, contains NUL, or is a root itself; PERMISSION_DENIED for one
// that resolves outside every root.
absl::StatusOr<std::string> ResolveRunDir(env::Env* env, const std::vector<std::string>& roots,
                                          const std::string& run_id, const std::string& requested);

// A run directory belongs to one run: its id is recorded in the directory
// (kRunOwnerFile) at the first OpenRun.
// The owner recorded in `dir`, or "" when it has none (new, or older than
// the marker).
std::string RunOwner(env::Env* env, const std::string& dir);
absl::Status WriteRunOwner(env::Env* env, const std::string& dir, const std::string& run_id);
// FAILED_PRECONDITION, naming the owner, when `dir` (resolved, inside one of
// `roots`) is owned by another run or lies inside another run's directory
// (an ancestor below the root has an owner marker or a weights/ folder).
absl::Status CheckRunDirFree(env::Env* env, const std::vector<std::string>& roots,
                             const std::string& run_id, const std::string& dir);

// A run's settings as its lifecycle keeps them (kRunSettingsFile), written
// atomically; reading one a run never stored is NOT_FOUND.
absl::Status WriteRunSettings(env::Env* env, const std::string& dir, std::string_view text);
absl::StatusOr<std::string> ReadRunSettings(env::Env* env, const std::string& dir);

}  // namespace ckptd::storage
