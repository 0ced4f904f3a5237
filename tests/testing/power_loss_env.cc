// Power-loss simulation over tracked directories.
#include "tests/testing/power_loss_env.h"

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/posix_error.h"

namespace ckptd::testing {

// Counts appends, patches, syncs and closes; records the data a Sync made durable.
class PowerLossFile final : public env::WritableFile {
 public:
  PowerLossFile(std::unique_ptr<env::WritableFile> base, PowerLossEnv* env, int node)
      : base_(std::move(base)), env_(env), node_(node) {}

  absl::Status Append(std::string_view data) override {
    if (!env_->Powered()) return env_->PowerOff("append " + path());
    return base_->Append(data);
  }
  absl::Status WriteAt(uint64_t offset, std::string_view data) override {
    if (!env_->Powered()) return env_->PowerOff("write " + path());
    return base_->WriteAt(offset, data);
  }
  absl::Status Sync() override {
    if (!env_->Powered()) return env_->PowerOff("fdatasync " + path());
    CKPTD_TRY(base_->Sync());
    env_->Synced(node_, path());
    return absl::OkStatus();
  }
  absl::Status Close() override {
    if (!env_->Powered()) return env_->PowerOff("close " + path());
    return base_->Close();
  }
  uint64_t size() const override { return base_->size(); }
  bool direct() const override { return base_->direct(); }
  const std::string& path() const override { return base_->path(); }

 private:
  std::unique_ptr<env::WritableFile> base_;
  PowerLossEnv* env_;
  int node_;
};

namespace {

std::string DirOf(const std::string& path, std::string* name) {
  size_t slash = path.rfind('/');
  *name = path.substr(slash + 1);
  return path.substr(0, slash);
}

}  // namespace

bool PowerLossEnv::Powered() {
  ++calls_;
  return cut_after_ == 0 || calls_ <= cut_after_;
}

absl::Status PowerLossEnv::PowerOff(const std::string& what) const {
  return env::MarkIoError(absl::UnavailableError(StrCat(what, ": simulated power loss")));
}

PowerLossEnv::Dir* PowerLossEnv::Find(const std::string& path, std::string* name) {
  auto it = dirs_.find(DirOf(path, name));
  return it == dirs_.end() ? nullptr : &it->second;
}

void PowerLossEnv::Synced(int node, const std::string& path) {
  if (node == 0) return;
  auto data = env::ReadWholeFile(target(), path);
  nodes_[node].durable_data = data.ok() ? *data : "";
}

size_t PowerLossEnv::pending() const {
  size_t n = 0;
  for (const auto& [path, dir] : dirs_) n += dir.pending.size();
  return n;
}

absl::Status PowerLossEnv::Track(const std::string& dir_path) {
  Dir& dir = dirs_[dir_path];
  dir = Dir{};
  CKPTD_ASSIGN_OR_RETURN(std::vector<std::string> names, target()->ListDir(dir_path));
  for (const std::string& name : names) {
    const std::string path = StrCat(dir_path, "/", name);
    CKPTD_ASSIGN_OR_RETURN(env::FileStat st, target()->Stat(path));
    if (st.is_dir) continue;
    Node node;
    if (st.is_symlink) {
      CKPTD_ASSIGN_OR_RETURN(node.link_target, target()->ReadLink(path));
    } else {
      CKPTD_ASSIGN_OR_RETURN(node.durable_data, env::ReadWholeFile(target(), path));
    }
    const int id = next_node_++;
    nodes_[id] = std::move(node);
    dir.durable[name] = dir.current[name] = id;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<env::WritableFile>> PowerLossEnv::NewWritableFile(
    const std::string& path, env::DirectIo direct) {
  std::string name;
  Dir* dir = Find(path, &name);
  if (dir == nullptr) return target()->NewWritableFile(path, direct);
  if (!Powered()) return PowerOff("open " + path);
  CKPTD_ASSIGN_OR_RETURN(auto file, target()->NewWritableFile(path, direct));
  const int id = next_node_++;
  nodes_[id] = Node{};
  dir->current[name] = id;
  dir->pending.push_back({Change::Kind::kLink, name, "", id});
  return std::unique_ptr<env::WritableFile>(new PowerLossFile(std::move(file), this, id));
}

absl::Status PowerLossEnv::RenameFile(const std::string& from, const std::string& to) {
  std::string from_name, to_name;
  Dir* dir = Find(from, &from_name);
  if (dir == nullptr || Find(to, &to_name) != dir) return target()->RenameFile(from, to);
  if (!Powered()) return PowerOff("rename " + to);
  CKPTD_TRY(target()->RenameFile(from, to));
  dir->current[to_name] = dir->current[from_name];
  dir->current.erase(from_name);
  dir->pending.push_back({Change::Kind::kRename, from_name, to_name, 0});
  return absl::OkStatus();
}

absl::Status PowerLossEnv::Symlink(const std::string& link_target, const std::string& link) {
  std::string name;
  Dir* dir = Find(link, &name);
  if (dir == nullptr) return target()->Symlink(link_target, link);
  if (!Powered()) return PowerOff("symlink " + link);
  CKPTD_TRY(target()->Symlink(link_target, link));
  const int id = next_node_++;
  nodes_[id] = Node{.link_target = link_target};
  dir->current[name] = id;
  dir->pending.push_back({Change::Kind::kLink, name, "", id});
  return absl::OkStatus();
}

absl::Status PowerLossEnv::SyncDir(const std::string& path) {
  auto it = dirs_.find(path);
  if (it == dirs_.end()) return target()->SyncDir(path);
  if (!Powered()) return PowerOff("fsync " + path);
  it->second.durable = it->second.current;
  it->second.pending.clear();
  return absl::OkStatus();  // durability is modelled; the real fsync adds nothing
}

absl::Status PowerLossEnv::RemoveFile(const std::string& path) {
  std::string name;
  Dir* dir = Find(path, &name);
  if (dir == nullptr) return target()->RemoveFile(path);
  if (!Powered()) return PowerOff("unlink " + path);
  CKPTD_TRY(target()->RemoveFile(path));
  dir->current.erase(name);
  dir->pending.push_back({Change::Kind::kUnlink, name, "", 0});
  return absl::OkStatus();
}

absl::Status PowerLossEnv::Crash(const std::function<bool(size_t)>& keep) {
  size_t index = 0;
  for (auto& [path, dir] : dirs_) {
    std::map<std::string, int> survived = dir.durable;
    for (const Change& c : dir.pending) {
      if (!keep(index++)) continue;
      switch (c.kind) {
        case Change::Kind::kLink:
          survived[c.name] = c.node;
          break;
        case Change::Kind::kRename:
          if (auto it = survived.find(c.name); it != survived.end()) {
            survived[c.to] = it->second;
            survived.erase(c.name);
          }
          break;
        case Change::Kind::kUnlink:
          survived.erase(c.name);
          break;
      }
    }
    // Rewrite the real directory to the surviving state.
    CKPTD_ASSIGN_OR_RETURN(std::vector<std::string> names, target()->ListDir(path));
    for (const std::string& name : names) {
      const std::string file = StrCat(path, "/", name);
      CKPTD_ASSIGN_OR_RETURN(env::FileStat st, target()->Stat(file));
      if (!st.is_dir) CKPTD_TRY(target()->RemoveFile(file));
    }
    for (const auto& [name, id] : survived) {
      const Node& node = nodes_[id];
      const std::string file = StrCat(path, "/", name);
      if (node.link_target) {
        CKPTD_TRY(target()->Symlink(*node.link_target, file));
        continue;
      }
      CKPTD_ASSIGN_OR_RETURN(auto out, target()->NewWritableFile(file, env::DirectIo::kOff));
      CKPTD_TRY(out->Append(node.durable_data));
      CKPTD_TRY(out->Sync());
      CKPTD_TRY(out->Close());
    }
    dir.durable = dir.current = survived;
    dir.pending.clear();
  }
  cut_after_ = 0;
  return absl::OkStatus();
}

}  // namespace ckptd::testing
