// Arena bookkeeping: tokens, ownership by run and connection.
#include "daemon/ingest/arena_registry.h"

#include <unistd.h>

#include <random>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/metrics/metrics.h"

namespace ckptd::ingest {

// 128 random bits as hex, from the kernel's CSPRNG.
std::string NewToken() {
  std::random_device rd;  // /dev/urandom (getrandom) on Linux
  std::string out;
  for (int i = 0; i < 4; ++i) out += fmt::format("{:08x}", rd());
  return out;
}

std::string ArenaRegistry::TokenFor(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  auto it = by_run_.find(run_id);
  if (it != by_run_.end()) return it->second;
  std::string token = NewToken();
  by_run_[run_id] = token;
  tokens_[token] = run_id;
  return token;
}

absl::StatusOr<std::string> ArenaRegistry::RunOfToken(std::string_view token) const {
  absl::MutexLock lock(&mu_);
  auto it = tokens_.find(std::string(token));
  if (it == tokens_.end()) {
    return absl::PermissionDeniedError(
        "unknown arena token: use the arena_token OpenRun returned for this run");
  }
  return it->second;
}

std::optional<gguf::Digest128> RegionDigests::Find(uint64_t offset, uint64_t bytes) const {
  absl::MutexLock lock(&mu_);
  auto it = digests_.find({offset, bytes});
  if (it == digests_.end()) return std::nullopt;
  return it->second;
}

void RegionDigests::Put(uint64_t offset, uint64_t bytes, const gguf::Digest128& digest) {
  absl::MutexLock lock(&mu_);
  if (digests_.size() < kMaxEntries) digests_.emplace(std::pair{offset, bytes}, digest);
}

absl::StatusOr<std::shared_ptr<Arena>> ArenaRegistry::Register(std::string_view token, int fd,
                                                               const Peer& peer) {
  std::string run_id;
  {
    absl::MutexLock lock(&mu_);
    auto it = tokens_.find(std::string(token));
    if (it == tokens_.end()) {
      ::close(fd);
      return absl::PermissionDeniedError(
          "unknown arena token: use the arena_token OpenRun returned for this run");
    }
    if (arenas_.size() >= max_arenas_) {
      ::close(fd);
      return absl::ResourceExhaustedError(
          StrCat("the daemon already holds ", arenas_.size(),
                 " arenas (shm.max_arenas); close unused ones or raise the limit"));
    }
    run_id = it->second;
  }
  auto memory = env::SharedMemory::Adopt(fd);
  if (!memory.ok()) return memory.status();
  auto arena = std::make_shared<Arena>();
  arena->run_id = run_id;
  arena->uid = peer.uid;
  arena->pid = peer.pid;
  arena->memory = std::move(*memory);
  if (arena->memory->immutable()) arena->digests = std::make_unique<RegionDigests>();
  absl::MutexLock lock(&mu_);
  arena->id = next_id_++;
  arenas_[arena->id] = {arena, peer.connection};
  metrics::Metrics::Get().AddArenas(1);
  return arena;
}

template <typename T>
absl::StatusOr<std::shared_ptr<T>> ArenaRegistry::Lookup(const std::map<uint64_t, Owned<T>>& items,
                                                         uint64_t id, const std::string& run_id,
                                                         std::string_view what,
                                                         std::string_view unknown) {
  auto it = items.find(id);
  if (it == items.end()) return absl::NotFoundError(StrCat(what, " ", id, " ", unknown));
  if (it->second.item->run_id != run_id) {
    return absl::PermissionDeniedError(StrCat(what, " ", id, " belongs to run '",
                                              it->second.item->run_id, "', not '", run_id, "'"));
  }
  return it->second.item;
}

absl::StatusOr<std::shared_ptr<Arena>> ArenaRegistry::Get(uint64_t id,
                                                          const std::string& run_id) const {
  absl::MutexLock lock(&mu_);
  return Lookup<Arena>(arenas_, id, run_id, "arena",
                       "is not registered (its connection closed, or it never was); register it "
                       "on the arena socket and use the id of the OK reply");
}

absl::StatusOr<std::shared_ptr<Attachment>> ArenaRegistry::Attach(std::string_view token,
                                                                  const Peer& peer, uint64_t probe,
                                                                  uint64_t probe_len) {
  constexpr uint64_t kMaxProbe = 4096;
  if (probe_len == 0 || probe_len > kMaxProbe) {
    return absl::InvalidArgumentError(
        StrCat("ATTACH: the probe range must be 1 to ", kMaxProbe, " bytes"));
  }
  auto attachment = std::make_shared<Attachment>();
  CKPTD_ASSIGN_OR_RETURN(attachment->run_id, RunOfToken(token));
  auto memory = env::ProcessMemory::Open(peer.pid);
  if (!memory.ok()) return memory.status();
  std::string scratch(probe_len, '\0');
  if (absl::Status st = (*memory)->Read(probe, probe_len, scratch.data()); !st.ok()) {
    return absl::Status(st.code(), StrCat("ATTACH probe: ", st.message()));
  }
  attachment->key = NewToken();
  attachment->uid = peer.uid;
  attachment->pid = peer.pid;
  attachment->memory = std::move(*memory);
  absl::MutexLock lock(&mu_);
  attachment->id = next_id_++;
  attachments_[attachment->id] = {attachment, peer.connection};
  return attachment;
}

absl::StatusOr<std::shared_ptr<Attachment>> ArenaRegistry::GetAttachment(
    uint64_t id, const std::string& run_id, std::string_view key) const {
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(
      std::shared_ptr<Attachment> attachment,
      Lookup<Attachment>(attachments_, id, run_id, "attachment",
                         "is not known (its connection closed, or it never was); ATTACH on the "
                         "arena socket and use the id of the OK reply"));
  if (attachment->key != key) {
    return absl::PermissionDeniedError(
        StrCat("attachment ", id,
               ": wrong attachment_key; only the process that attached may save from its memory"));
  }
  return attachment;
}

void ArenaRegistry::DropConnection(uint64_t connection) {
  absl::MutexLock lock(&mu_);
  std::erase_if(attachments_, [&](const auto& kv) {
    if (kv.second.connection != connection) return false;
    kv.second.item->connected = false;
    return true;
  });
  const size_t dropped =
      std::erase_if(arenas_, [&](const auto& kv) { return kv.second.connection == connection; });
  metrics::Metrics::Get().AddArenas(-static_cast<int64_t>(dropped));
}

size_t ArenaRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return arenas_.size();
}

}  // namespace ckptd::ingest
