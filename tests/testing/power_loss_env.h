// An Env that simulates power loss, stricter than leveldb's
// FaultInjectionTestEnv: it tracks, for the directories it is told to watch,
// what a crash would leave on disk, and can rewrite them to that state.
//
//  - File data is durable only as of the file's last Sync() (fdatasync); a
//    file never synced comes back empty.
//  - Directory entries (create, rename, symlink, unlink) are durable only
//    after a SyncDir() of their directory. The entries changed since then are
//    "pending", and a crash may have persisted any subset of them (applied in
//    order), as a file system without ordering guarantees may.
//
// Tests count the mutating calls of a save, cut the power after call K
// (every later mutating call fails and changes nothing), then Crash() with
// each subset of the pending entries and check the invariants. Reads pass
// through. Not thread-safe: one save at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "daemon/env/env.h"

namespace ckptd::testing {

class PowerLossEnv : public env::EnvWrapper {
 public:
  explicit PowerLossEnv(env::Env* base) : EnvWrapper(base) {}

  // Starts watching `dir`: everything in it now counts as durable.
  absl::Status Track(const std::string& dir);

  // Cuts the power after `n` more mutating calls (0: never).
  void CutPowerAfter(uint64_t n) { cut_after_ = n == 0 ? 0 : calls_ + n; }
  uint64_t calls() const { return calls_; }
  bool power_lost() const { return cut_after_ != 0 && calls_ >= cut_after_; }
  // Directory entries changed since the last SyncDir, over all tracked dirs.
  size_t pending() const;

  // Rewrites every tracked directory to what survives the crash: the durable
  // entries plus the pending changes for which keep(i) is true, each file with
  // its last synced data. The env is usable again afterwards (power restored,
  // everything on disk durable).
  absl::Status Crash(const std::function<bool(size_t)>& keep);

  absl::StatusOr<std::unique_ptr<env::WritableFile>> NewWritableFile(const std::string& path,
                                                                     env::DirectIo direct) override;
  absl::Status RenameFile(const std::string& from, const std::string& to) override;
  absl::Status Symlink(const std::string& target, const std::string& link) override;
  absl::Status SyncDir(const std::string& dir) override;
  absl::Status RemoveFile(const std::string& path) override;

 private:
  friend class PowerLossFile;
  struct Node {
    std::optional<std::string> link_target;  // a symlink
    std::string durable_data;                // as of the last Sync
  };
  struct Change {
    enum class Kind { kLink, kRename, kUnlink } kind;
    std::string name, to;  // kLink: name -> node; kRename: name -> to
    int node = 0;
  };
  struct Dir {
    std::map<std::string, int> durable, current;
    std::vector<Change> pending;
  };

  // Counts a mutating call; false when the power is (now) off.
  bool Powered();
  absl::Status PowerOff(const std::string& what) const;
  Dir* Find(const std::string& path, std::string* name);
  void Synced(int node, const std::string& path);

  std::map<std::string, Dir> dirs_;
  std::map<int, Node> nodes_;
  int next_node_ = 1;
  uint64_t calls_ = 0;
  uint64_t cut_after_ = 0;
};

}  // namespace ckptd::testing
