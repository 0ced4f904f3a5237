// The file system model behind powercut_fs, in the spirit of Jepsen's
// LazyFS: every write, create, rename, link and unlink lands in a volatile
// tree and becomes durable only by the matching fsync/fdatasync (of the
// file for its bytes, of the directory for its entries). A power cut throws
// the volatile tree away and keeps the durable one. Not thread-safe: the
// FUSE glue calls it from one thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace ckptd::powercut {

using Ino = uint64_t;
constexpr Ino kRootIno = 1;

struct Node {
  enum class Kind { kFile, kDir, kLink };
  Kind kind = Kind::kFile;
  mode_t mode = 0644;
  std::string data;                    // a file's bytes
  std::map<std::string, Ino> entries;  // a directory's names
  std::string target;                  // a symlink's target
  int64_t mtime_ns = 0;
};

// One directory operation as its name changes: rename is two changes
// applied together, as a journaling file system applies it.
struct NameChange {
  Ino dir;
  std::string name;
  std::optional<Ino> ino;  // nullopt: the name goes away
};
using DirOp = std::vector<NameChange>;

// What a power cut keeps of what was never synced.
enum class CutMode {
  kDropUnsynced,  // nothing: the durable tree as the last fsyncs left it
  kAnySubset,     // each un-synced directory operation and file's bytes
                  // independently, in any order, files possibly torn
};

struct CutStats {
  uint64_t ops_dropped = 0;
  uint64_t ops_kept = 0;
  uint64_t files_dropped = 0;  // files whose un-synced bytes were lost
  uint64_t files_torn = 0;     // part old, part new bytes
};

class LazyTree {
 public:
  LazyTree();

  // Path lookup in the volatile tree ("/" is the root); nullopt: no such name.
  std::optional<Ino> Lookup(const std::string& path) const;
  const Node* Get(Ino ino) const;
  Node* GetMutable(Ino ino);  // for writes to a file's bytes and attributes

  // Directory operations: POSIX errno on failure (0 on success).
  int Create(Ino dir, const std::string& name, Node node, Ino* out);
  int Unlink(Ino dir, const std::string& name, bool want_dir);
  int Rename(Ino from_dir, const std::string& from, Ino to_dir, const std::string& to,
             bool noreplace);
  int Link(Ino ino, Ino dir, const std::string& name);

  // Durability: a file's bytes and size; a directory's operations so far.
  void SyncFile(Ino ino);
  void SyncDir(Ino dir);

  // A power cut: the volatile tree becomes what survived.
  CutStats Cut(CutMode mode, std::mt19937_64& rng);

  // Open handles keep an unlinked inode alive until they close.
  void Ref(Ino ino) { ++refs_[ino]; }
  void Unref(Ino ino);
  uint64_t pending_ops() const { return pending_.size(); }
  uint64_t unsynced_files() const;

 private:
  static std::map<Ino, Node>::iterator Durable(std::map<Ino, Node>& nodes, Ino ino,
                                               const Node& like);
  void Apply(const DirOp& op, std::map<Ino, Node>& to);
  bool Touches(const DirOp& op, Ino dir) const;
  void Collect();  // forgets inodes no tree or handle can reach

  std::map<Ino, Node> vol_;
  std::map<Ino, Node> dur_;
  std::vector<DirOp> pending_;  // directory operations not yet durable, in order
  std::unordered_map<Ino, int> refs_;
  Ino next_ino_ = kRootIno + 1;
};

}  // namespace ckptd::powercut
