// LazyTree: the volatile and durable trees and what moves between them.
#include "tests/powercut/lazy_tree.h"

#include <errno.h>

#include <algorithm>
#include <set>
#include <sstream>

namespace ckptd::powercut {

namespace {

Node Directory() {
  Node n;
  n.kind = Node::Kind::kDir;
  n.mode = 0755;
  return n;
}

// Everything reachable from the root of `nodes`, added to `out`.
void Reach(const std::map<Ino, Node>& nodes, Ino from, std::set<Ino>& out) {
  if (!out.insert(from).second) return;
  auto it = nodes.find(from);
  if (it == nodes.end()) return;
  for (const auto& [name, child] : it->second.entries) Reach(nodes, child, out);
}

}  // namespace

LazyTree::LazyTree() {
  vol_[kRootIno] = Directory();
  dur_[kRootIno] = Directory();
}

std::optional<Ino> LazyTree::Lookup(const std::string& path) const {
  Ino at = kRootIno;
  std::istringstream parts(path);
  for (std::string part; std::getline(parts, part, '/');) {
    if (part.empty() || part == ".") continue;
    const Node* dir = Get(at);
    if (dir == nullptr || dir->kind != Node::Kind::kDir) return std::nullopt;
    auto it = dir->entries.find(part);
    if (it == dir->entries.end()) return std::nullopt;
    at = it->second;
  }
  return at;
}

const Node* LazyTree::Get(Ino ino) const {
  auto it = vol_.find(ino);
  return it == vol_.end() ? nullptr : &it->second;
}

Node* LazyTree::GetMutable(Ino ino) {
  auto it = vol_.find(ino);
  return it == vol_.end() ? nullptr : &it->second;
}

int LazyTree::Create(Ino dir, const std::string& name, Node node, Ino* out) {
  Node* d = GetMutable(dir);
  if (d == nullptr) return ENOENT;
  if (d->kind != Node::Kind::kDir) return ENOTDIR;
  if (d->entries.contains(name)) return EEXIST;
  const Ino ino = next_ino_++;
  vol_[ino] = std::move(node);
  vol_[dir].entries[name] = ino;
  pending_.push_back({{dir, name, ino}});
  if (out != nullptr) *out = ino;
  return 0;
}

int LazyTree::Unlink(Ino dir, const std::string& name, bool want_dir) {
  Node* d = GetMutable(dir);
  if (d == nullptr || !d->entries.contains(name)) return ENOENT;
  const Node& victim = vol_.at(d->entries.at(name));
  const bool is_dir = victim.kind == Node::Kind::kDir;
  if (want_dir && !is_dir) return ENOTDIR;
  if (!want_dir && is_dir) return EISDIR;
  if (is_dir && !victim.entries.empty()) return ENOTEMPTY;
  d->entries.erase(name);
  pending_.push_back({{dir, name, std::nullopt}});
  Collect();
  return 0;
}

int LazyTree::Rename(Ino from_dir, const std::string& from, Ino to_dir, const std::string& to,
                     bool noreplace) {
  Node* fd = GetMutable(from_dir);
  Node* td = GetMutable(to_dir);
  if (fd == nullptr || td == nullptr || !fd->entries.contains(from)) return ENOENT;
  if (td->kind != Node::Kind::kDir) return ENOTDIR;
  const Ino ino = fd->entries.at(from);
  if (from_dir == to_dir && from == to) return 0;
  if (auto it = td->entries.find(to); it != td->entries.end()) {
    if (noreplace) return EEXIST;
    const Node& old = vol_.at(it->second);
    const bool src_dir = vol_.at(ino).kind == Node::Kind::kDir;
    const bool dst_dir = old.kind == Node::Kind::kDir;
    if (src_dir && !dst_dir) return ENOTDIR;
    if (!src_dir && dst_dir) return EISDIR;
    if (dst_dir && !old.entries.empty()) return ENOTEMPTY;
  }
  fd->entries.erase(from);
  td->entries[to] = ino;
  pending_.push_back({{from_dir, from, std::nullopt}, {to_dir, to, ino}});
  Collect();
  return 0;
}

int LazyTree::Link(Ino ino, Ino dir, const std::string& name) {
  const Node* n = Get(ino);
  Node* d = GetMutable(dir);
  if (n == nullptr || d == nullptr) return ENOENT;
  if (n->kind == Node::Kind::kDir) return EPERM;
  if (d->entries.contains(name)) return EEXIST;
  d->entries[name] = ino;
  pending_.push_back({{dir, name, ino}});
  return 0;
}

std::map<Ino, Node>::iterator LazyTree::Durable(std::map<Ino, Node>& nodes, Ino ino,
                                                const Node& like) {
  auto it = nodes.find(ino);
  if (it != nodes.end()) return it;
  // An inode the durable tree has never seen: its name arrived before its
  // bytes (a file never fsynced is empty after the cut, as on ext4/XFS).
  Node n;
  n.kind = like.kind;
  n.mode = like.mode;
  n.target = like.target;  // a symlink's target is written with its inode
  n.mtime_ns = like.mtime_ns;
  return nodes.emplace(ino, std::move(n)).first;
}

void LazyTree::SyncFile(Ino ino) {
  const Node* n = Get(ino);
  if (n == nullptr) return;
  if (n->kind == Node::Kind::kDir) return SyncDir(ino);
  auto it = Durable(dur_, ino, *n);
  it->second.data = n->data;
  it->second.mode = n->mode;
  it->second.mtime_ns = n->mtime_ns;
}

bool LazyTree::Touches(const DirOp& op, Ino dir) const {
  return std::any_of(op.begin(), op.end(), [dir](const NameChange& c) { return c.dir == dir; });
}

void LazyTree::Apply(const DirOp& op, std::map<Ino, Node>& to) {
  static const Node kGoneDir = Directory();
  for (const NameChange& c : op) {
    auto vd = vol_.find(c.dir);
    auto d = Durable(to, c.dir, vd == vol_.end() ? kGoneDir : vd->second);
    if (!c.ino) {
      d->second.entries.erase(c.name);
      continue;
    }
    Durable(to, *c.ino, vol_.at(*c.ino));
    d->second.entries[c.name] = *c.ino;
  }
}

void LazyTree::SyncDir(Ino dir) {
  std::vector<DirOp> rest;
  for (DirOp& op : pending_) {
    if (Touches(op, dir)) {
      Apply(op, dur_);
    } else {
      rest.push_back(std::move(op));
    }
  }
  pending_ = std::move(rest);
  Collect();
}

CutStats LazyTree::Cut(CutMode mode, std::mt19937_64& rng) {
  CutStats stats;
  for (const DirOp& op : pending_) {
    if (mode == CutMode::kAnySubset && rng() % 2 == 0) {
      Apply(op, dur_);
      ++stats.ops_kept;
    } else {
      ++stats.ops_dropped;
    }
  }
  pending_.clear();
  for (auto& [ino, d] : dur_) {
    auto v = vol_.find(ino);
    if (d.kind != Node::Kind::kFile || v == vol_.end() || v->second.data == d.data) continue;
    const std::string& now = v->second.data;
    const uint64_t pick = mode == CutMode::kAnySubset ? rng() % 3 : 0;
    if (pick == 0) {
      ++stats.files_dropped;
    } else if (pick == 1) {
      d.data = now;  // written back before the cut
    } else {
      // Torn: the new bytes, but for one 4 KiB-aligned range of the old.
      const size_t blocks = now.size() / 4096 + 1;
      const size_t a = rng() % blocks * 4096;
      const size_t b = std::min(now.size(), a + (rng() % blocks + 1) * 4096);
      std::string torn = now;
      for (size_t i = a; i < b; ++i) torn[i] = i < d.data.size() ? d.data[i] : '\0';
      d.data = std::move(torn);
      ++stats.files_torn;
    }
  }
  vol_ = dur_;
  refs_.clear();
  Collect();
  return stats;
}

void LazyTree::Unref(Ino ino) {
  auto it = refs_.find(ino);
  if (it == refs_.end()) return;
  if (--it->second == 0) {
    refs_.erase(it);
    Collect();
  }
}

uint64_t LazyTree::unsynced_files() const {
  uint64_t n = 0;
  for (const auto& [ino, v] : vol_) {
    if (v.kind != Node::Kind::kFile) continue;
    auto d = dur_.find(ino);
    n += d == dur_.end() ? !v.data.empty() : d->second.data != v.data;
  }
  return n;
}

void LazyTree::Collect() {
  std::set<Ino> live;
  Reach(vol_, kRootIno, live);
  for (const auto& [ino, n] : refs_) live.insert(ino);
  for (const DirOp& op : pending_) {
    for (const NameChange& c : op) {
      live.insert(c.dir);
      if (c.ino) live.insert(*c.ino);
    }
  }
  std::erase_if(vol_, [&](const auto& kv) { return !live.contains(kv.first); });
  // The durable tree keeps what it reaches and what may yet become durable.
  std::set<Ino> durable;
  Reach(dur_, kRootIno, durable);
  std::erase_if(dur_, [&](const auto& kv) {
    return !durable.contains(kv.first) && !live.contains(kv.first);
  });
}

}  // namespace ckptd::powercut
