// powercut_fs: a FUSE file system that keeps un-synced writes, creates,
// renames and unlinks in a volatile layer (LazyTree) and forgets them at a
// power cut, for running the real ckptd on a file system that loses what a
// real one may lose.
//
//   powercut_fs MOUNTPOINT [--seed N] [--capacity BYTES]
//
// Writing to MOUNTPOINT/.powercut (hidden from listings) controls it:
//   "cut"      drop everything not synced;
//   "cut any"  keep a random subset of the un-synced directory operations
//              and file bytes, in any order, files possibly torn.
// Reading it gives counters, one "name value" per line. Handles opened
// before a cut answer EIO afterwards. O_DIRECT is refused at open with
// EINVAL, as tmpfs does. Single-threaded (-s): requests run in order.
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fcntl.h>
#include <fuse3/fuse.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "tests/powercut/lazy_tree.h"

namespace ckptd::powercut {
namespace {

constexpr const char* kControl = "/.powercut";
constexpr uint64_t kControlFh = ~uint64_t{0};

struct Handle {
  Ino ino;
  uint64_t epoch;
};

struct Counters {
  uint64_t cuts = 0, fsyncs = 0, fsyncdirs = 0, refused_direct = 0, stale_handle_calls = 0;
  uint64_t ops_dropped = 0, files_dropped = 0, files_torn = 0, ops_kept = 0;
};

struct Fs {
  LazyTree tree;
  std::unordered_map<uint64_t, Handle> handles;
  uint64_t next_fh = 1;
  uint64_t epoch = 0;
  uint64_t capacity = uint64_t{64} << 30;
  std::mt19937_64 rng;
  Counters counters;
};
Fs* fs = nullptr;

int64_t NowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::pair<std::string, std::string> Split(const std::string& path) {
  const size_t slash = path.rfind('/');
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

// The inode a call is about: its handle's when it has one, else its path's.
int Resolve(const char* path, const fuse_file_info* fi, Ino* ino) {
  if (fi != nullptr && fi->fh != 0 && fi->fh != kControlFh) {
    auto it = fs->handles.find(fi->fh);
    if (it == fs->handles.end() || it->second.epoch != fs->epoch) {
      ++fs->counters.stale_handle_calls;
      return -EIO;  // opened before a power cut
    }
    *ino = it->second.ino;
    return fs->tree.Get(*ino) == nullptr ? -EIO : 0;
  }
  if (path == nullptr) return -EIO;
  auto found = fs->tree.Lookup(path);
  if (!found) return -ENOENT;
  *ino = *found;
  return 0;
}

int ResolveParent(const char* path, Ino* dir, std::string* name) {
  auto [parent, base] = Split(path);
  auto found = fs->tree.Lookup(parent);
  if (!found) return -ENOENT;
  if (fs->tree.Get(*found)->kind != Node::Kind::kDir) return -ENOTDIR;
  *dir = *found;
  *name = base;
  return 0;
}

uint64_t Open(Ino ino) {
  const uint64_t fh = fs->next_fh++;
  fs->handles[fh] = {ino, fs->epoch};
  fs->tree.Ref(ino);
  return fh;
}

void Close(uint64_t fh) {
  auto it = fs->handles.find(fh);
  if (it == fs->handles.end()) return;
  if (it->second.epoch == fs->epoch) fs->tree.Unref(it->second.ino);
  fs->handles.erase(it);
}

std::string ControlText() {
  const Counters& c = fs->counters;
  std::string out;
  auto line = [&](const char* k, uint64_t v) {
    out += std::string(k) + " " + std::to_string(v) + "\n";
  };
  line("cuts", c.cuts);
  line("fsyncs", c.fsyncs);
  line("fsyncdirs", c.fsyncdirs);
  line("pending_ops", fs->tree.pending_ops());
  line("unsynced_files", fs->tree.unsynced_files());
  line("ops_dropped", c.ops_dropped);
  line("ops_kept", c.ops_kept);
  line("files_dropped", c.files_dropped);
  line("files_torn", c.files_torn);
  line("refused_direct", c.refused_direct);
  line("stale_handle_calls", c.stale_handle_calls);
  return out;
}

int ControlWrite(std::string cmd) {
  while (!cmd.empty() && (cmd.back() == '\n' || cmd.back() == ' ')) cmd.pop_back();
  CutMode mode;
  if (cmd == "cut") {
    mode = CutMode::kDropUnsynced;
  } else if (cmd == "cut any") {
    mode = CutMode::kAnySubset;
  } else {
    return -EINVAL;
  }
  const CutStats s = fs->tree.Cut(mode, fs->rng);
  ++fs->epoch;
  ++fs->counters.cuts;
  fs->counters.ops_dropped += s.ops_dropped;
  fs->counters.ops_kept += s.ops_kept;
  fs->counters.files_dropped += s.files_dropped;
  fs->counters.files_torn += s.files_torn;
  return 0;
}

void FillStat(Ino ino, const Node& n, struct stat* st) {
  *st = {};
  st->st_ino = ino;
  switch (n.kind) {
    case Node::Kind::kDir:
      st->st_mode = S_IFDIR | n.mode;
      st->st_nlink = 2;
      break;
    case Node::Kind::kLink:
      st->st_mode = S_IFLNK | 0777;
      st->st_nlink = 1;
      st->st_size = static_cast<off_t>(n.target.size());
      break;
    case Node::Kind::kFile:
      st->st_mode = S_IFREG | n.mode;
      st->st_nlink = 1;
      st->st_size = static_cast<off_t>(n.data.size());
      break;
  }
  st->st_uid = ::getuid();
  st->st_gid = ::getgid();
  st->st_blksize = 4096;
  st->st_blocks = (st->st_size + 511) / 512;
  const timespec t{static_cast<time_t>(n.mtime_ns / 1'000'000'000), n.mtime_ns % 1'000'000'000};
  st->st_atim = st->st_mtim = st->st_ctim = t;
}

void* Init(fuse_conn_info*, fuse_config* cfg) {
  cfg->use_ino = 1;
  cfg->nullpath_ok = 1;
  cfg->hard_remove = 1;
  cfg->entry_timeout = 0;
  cfg->attr_timeout = 0;
  cfg->negative_timeout = 0;
  cfg->kernel_cache = 0;
  return nullptr;
}

int GetAttr(const char* path, struct stat* st, fuse_file_info* fi) {
  if ((path != nullptr && strcmp(path, kControl) == 0) || (fi != nullptr && fi->fh == kControlFh)) {
    *st = {};
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    return 0;
  }
  Ino ino;
  if (int r = Resolve(path, fi, &ino); r != 0) return r;
  FillStat(ino, *fs->tree.Get(ino), st);
  return 0;
}

int OpenFile(const char* path, fuse_file_info* fi) {
  if (strcmp(path, kControl) == 0) {
    fi->fh = kControlFh;
    fi->direct_io = 1;
    return 0;
  }
  if (fi->flags & O_DIRECT) {
    ++fs->counters.refused_direct;
    return -EINVAL;
  }
  Ino ino;
  if (int r = Resolve(path, nullptr, &ino); r != 0) return r;
  if (fs->tree.Get(ino)->kind == Node::Kind::kDir) return -EISDIR;
  fi->fh = Open(ino);
  fi->keep_cache = 0;  // the kernel drops its cached pages: a cut may change them
  return 0;
}

int CreateFile(const char* path, mode_t mode, fuse_file_info* fi) {
  if (fi->flags & O_DIRECT) {
    ++fs->counters.refused_direct;
    return -EINVAL;
  }
  Ino dir;
  std::string name;
  if (int r = ResolveParent(path, &dir, &name); r != 0) return r;
  Node n;
  n.mode = mode & 07777;
  n.mtime_ns = NowNs();
  Ino ino;
  if (int r = fs->tree.Create(dir, name, std::move(n), &ino); r != 0) return -r;
  fi->fh = Open(ino);
  return 0;
}

int Read(const char*, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  if (fi->fh == kControlFh) {
    const std::string text = ControlText();
    if (static_cast<size_t>(off) >= text.size()) return 0;
    const size_t n = std::min(size, text.size() - static_cast<size_t>(off));
    memcpy(buf, text.data() + off, n);
    return static_cast<int>(n);
  }
  Ino ino;
  if (int r = Resolve(nullptr, fi, &ino); r != 0) return r;
  const std::string& data = fs->tree.Get(ino)->data;
  if (static_cast<size_t>(off) >= data.size()) return 0;
  const size_t n = std::min(size, data.size() - static_cast<size_t>(off));
  memcpy(buf, data.data() + off, n);
  return static_cast<int>(n);
}

uint64_t UsedBytes();

int Write(const char*, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  if (fi->fh == kControlFh) {
    const int r = ControlWrite(std::string(buf, size));
    return r != 0 ? r : static_cast<int>(size);
  }
  Ino ino;
  if (int r = Resolve(nullptr, fi, &ino); r != 0) return r;
  Node* n = fs->tree.GetMutable(ino);
  const size_t end = static_cast<size_t>(off) + size;
  if (end > n->data.size()) {
    if (UsedBytes() + (end - n->data.size()) > fs->capacity) return -ENOSPC;
    n->data.resize(end);
  }
  memcpy(n->data.data() + off, buf, size);
  n->mtime_ns = NowNs();
  return static_cast<int>(size);
}

int Truncate(const char* path, off_t size, fuse_file_info* fi) {
  if (path != nullptr && strcmp(path, kControl) == 0) return 0;  // `echo cut >`
  Ino ino;
  if (int r = Resolve(path, fi, &ino); r != 0) return r;
  Node* n = fs->tree.GetMutable(ino);
  if (n->kind != Node::Kind::kFile) return -EISDIR;
  n->data.resize(static_cast<size_t>(size));
  n->mtime_ns = NowNs();
  return 0;
}

int Release(const char*, fuse_file_info* fi) {
  if (fi->fh != kControlFh) Close(fi->fh);
  return 0;
}

int Fsync(const char*, int, fuse_file_info* fi) {
  if (fi->fh == kControlFh) return 0;
  Ino ino;
  if (int r = Resolve(nullptr, fi, &ino); r != 0) return r;
  fs->tree.SyncFile(ino);
  ++fs->counters.fsyncs;
  return 0;
}

int OpenDir(const char* path, fuse_file_info* fi) {
  Ino ino;
  if (int r = Resolve(path, nullptr, &ino); r != 0) return r;
  if (fs->tree.Get(ino)->kind != Node::Kind::kDir) return -ENOTDIR;
  fi->fh = Open(ino);
  return 0;
}

int ReadDir(const char* path, void* buf, fuse_fill_dir_t fill, off_t, fuse_file_info* fi,
            fuse_readdir_flags) {
  Ino ino;
  if (int r = Resolve(path, fi, &ino); r != 0) return r;
  fill(buf, ".", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  fill(buf, "..", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  // Copied: the filler may not call back in, but keep the tree untouched.
  const auto entries = fs->tree.Get(ino)->entries;
  for (const auto& [name, child] : entries) {
    if (fill(buf, name.c_str(), nullptr, 0, static_cast<fuse_fill_dir_flags>(0)) != 0) break;
  }
  return 0;
}

int ReleaseDir(const char*, fuse_file_info* fi) {
  Close(fi->fh);
  return 0;
}

int FsyncDir(const char*, int, fuse_file_info* fi) {
  Ino ino;
  if (int r = Resolve(nullptr, fi, &ino); r != 0) return r;
  fs->tree.SyncDir(ino);
  ++fs->counters.fsyncdirs;
  return 0;
}

int MakeNode(const char* path, Node n) {
  Ino dir;
  std::string name;
  if (int r = ResolveParent(path, &dir, &name); r != 0) return r;
  n.mtime_ns = NowNs();
  return -fs->tree.Create(dir, name, std::move(n), nullptr);
}

int MkDir(const char* path, mode_t mode) {
  Node n;
  n.kind = Node::Kind::kDir;
  n.mode = mode & 07777;
  return MakeNode(path, std::move(n));
}

int Symlink(const char* target, const char* path) {
  Node n;
  n.kind = Node::Kind::kLink;
  n.target = target;
  return MakeNode(path, std::move(n));
}

int ReadLink(const char* path, char* buf, size_t size) {
  Ino ino;
  if (int r = Resolve(path, nullptr, &ino); r != 0) return r;
  const Node* n = fs->tree.Get(ino);
  if (n->kind != Node::Kind::kLink) return -EINVAL;
  const size_t len = std::min(size - 1, n->target.size());
  memcpy(buf, n->target.data(), len);
  buf[len] = '\0';
  return 0;
}

int Remove(const char* path, bool want_dir) {
  Ino dir;
  std::string name;
  if (int r = ResolveParent(path, &dir, &name); r != 0) return r;
  return -fs->tree.Unlink(dir, name, want_dir);
}
int UnlinkFile(const char* path) { return Remove(path, false); }
int RmDir(const char* path) { return Remove(path, true); }

int Rename(const char* from, const char* to, unsigned int flags) {
  if (flags & ~static_cast<unsigned>(RENAME_NOREPLACE)) return -EINVAL;
  Ino from_dir, to_dir;
  std::string from_name, to_name;
  if (int r = ResolveParent(from, &from_dir, &from_name); r != 0) return r;
  if (int r = ResolveParent(to, &to_dir, &to_name); r != 0) return r;
  return -fs->tree.Rename(from_dir, from_name, to_dir, to_name, flags & RENAME_NOREPLACE);
}

int Link(const char* from, const char* to) {
  Ino ino, dir;
  std::string name;
  if (int r = Resolve(from, nullptr, &ino); r != 0) return r;
  if (int r = ResolveParent(to, &dir, &name); r != 0) return r;
  return -fs->tree.Link(ino, dir, name);
}

int ChMod(const char* path, mode_t mode, fuse_file_info* fi) {
  Ino ino;
  if (int r = Resolve(path, fi, &ino); r != 0) return r;
  fs->tree.GetMutable(ino)->mode = mode & 07777;
  return 0;
}

int ChOwn(const char* path, uid_t, gid_t, fuse_file_info* fi) {
  Ino ino;
  return Resolve(path, fi, &ino);  // one owner: the mounting user
}

int UTimeNs(const char* path, const timespec tv[2], fuse_file_info* fi) {
  Ino ino;
  if (int r = Resolve(path, fi, &ino); r != 0) return r;
  fs->tree.GetMutable(ino)->mtime_ns = tv[1].tv_nsec == UTIME_OMIT ? fs->tree.Get(ino)->mtime_ns
                                       : tv[1].tv_nsec == UTIME_NOW
                                           ? NowNs()
                                           : tv[1].tv_sec * 1'000'000'000 + tv[1].tv_nsec;
  return 0;
}

uint64_t UsedBytes() {
  uint64_t used = 0;
  std::vector<Ino> stack{kRootIno};
  while (!stack.empty()) {
    const Node* n = fs->tree.Get(stack.back());
    stack.pop_back();
    if (n == nullptr) continue;
    used += n->data.size();
    for (const auto& [name, child] : n->entries) stack.push_back(child);
  }
  return used;
}

int StatFs(const char*, struct statvfs* st) {
  *st = {};
  st->f_bsize = st->f_frsize = 4096;
  st->f_blocks = fs->capacity / 4096;
  const uint64_t used = (UsedBytes() + 4095) / 4096;
  st->f_bfree = st->f_bavail = st->f_blocks > used ? st->f_blocks - used : 0;
  st->f_files = st->f_ffree = st->f_favail = 1 << 20;
  st->f_namemax = 255;
  return 0;
}

fuse_operations Operations() {
  fuse_operations ops{};
  ops.init = Init;
  ops.getattr = GetAttr;
  ops.open = OpenFile;
  ops.create = CreateFile;
  ops.read = Read;
  ops.write = Write;
  ops.truncate = Truncate;
  ops.release = Release;
  ops.fsync = Fsync;
  ops.opendir = OpenDir;
  ops.readdir = ReadDir;
  ops.releasedir = ReleaseDir;
  ops.fsyncdir = FsyncDir;
  ops.mkdir = MkDir;
  ops.symlink = Symlink;
  ops.readlink = ReadLink;
  ops.unlink = UnlinkFile;
  ops.rmdir = RmDir;
  ops.rename = Rename;
  ops.link = Link;
  ops.chmod = ChMod;
  ops.chown = ChOwn;
  ops.utimens = UTimeNs;
  ops.statfs = StatFs;
  return ops;
}

}  // namespace
}  // namespace ckptd::powercut

int main(int argc, char** argv) {
  using namespace ckptd::powercut;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MOUNTPOINT [--seed N] [--capacity BYTES]\n", argv[0]);
    return 2;
  }
  Fs state;
  uint64_t seed = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--seed") {
      seed = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (flag == "--capacity") {
      state.capacity = std::strtoull(argv[i + 1], nullptr, 10);
    } else {
      std::fprintf(stderr, "%s: unknown option %s\n", argv[0], flag.c_str());
      return 2;
    }
  }
  state.rng.seed(seed);
  fs = &state;
  std::string opts = "fsname=powercut,subtype=powercut";
  std::vector<char*> fuse_argv = {argv[0],
                                  argv[1],
                                  const_cast<char*>("-f"),
                                  const_cast<char*>("-s"),
                                  const_cast<char*>("-o"),
                                  opts.data()};
  const fuse_operations ops = Operations();
  return fuse_main(static_cast<int>(fuse_argv.size()), fuse_argv.data(), &ops, nullptr);
}
