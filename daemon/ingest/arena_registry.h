// The shared-memory arenas trainers registered, by id. An arena belongs to
// one run (the token's) and to the socket connection that registered it: when
// that connection closes (the trainer exited or was killed), the registry
// forgets the arena. A queued save holds its own shared_ptr, so the memfd
// stays open exactly until no save needs it. Thread-safe.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/env/process_memory.h"
#include "daemon/env/shared_memory.h"
#include "daemon/gguf/digest.h"

namespace ckptd::ingest {

// The digests of regions of an immutable arena (sealed against writes):
// its bytes can never change, so a region's digest, once computed from its
// bytes, holds for every later save that names the same region, which then
// need not read it again. At most kMaxEntries regions; beyond, regions are
// hashed as usual. Thread-safe.
class RegionDigests {
 public:
  static constexpr size_t kMaxEntries = 1 << 16;
  std::optional<gguf::Digest128> Find(uint64_t offset, uint64_t bytes) const;
  void Put(uint64_t offset, uint64_t bytes, const gguf::Digest128& digest);

 private:
  mutable absl::Mutex mu_;
  std::map<std::pair<uint64_t, uint64_t>, gguf::Digest128> digests_ ABSL_GUARDED_BY(mu_);
};

struct Arena {
  uint64_t id = 0;
  std::string run_id;
  uid_t uid = 0;  // the registering peer, from SO_PEERCRED
  pid_t pid = 0;
  std::unique_ptr<env::SharedMemory> memory;
  // Set only for an immutable memory (SharedMemory::immutable()).
  std::unique_ptr<RegionDigests> digests;
};

// A trainer process attached for pointer saves: while the connection that
// attached it is open, the daemon may read the memory ranges its saves name
// (process_vm_readv), and nothing else. The pidfd inside pins the process.
struct Attachment {
  uint64_t id = 0;
  std::string run_id;
  std::string key;  // told only to the attaching connection; SavePointers must present it
  uid_t uid = 0;
  pid_t pid = 0;
  std::unique_ptr<env::ProcessMemory> memory;
  std::atomic<bool> connected{true};  // cleared when its connection closes
};

struct Peer {
  pid_t pid = 0;
  uid_t uid = 0;
  uint64_t connection = 0;  // the ArenaServer's connection number
};

// 128 random bits as 32 hex digits (arena tokens, hot-copy keys).
std::string NewToken();

class ArenaRegistry {
 public:
  explicit ArenaRegistry(size_t max_arenas) : max_arenas_(max_arenas) {}

  // The run's token (created on first use, stable for the daemon's lifetime).
  std::string TokenFor(const std::string& run_id);
  // The run a token belongs to; PERMISSION_DENIED for an unknown token.
  absl::StatusOr<std::string> RunOfToken(std::string_view token) const;
  // Checks the token, adopts the fd (checking its seals) and files the arena
  // under the peer's connection. Takes ownership of fd in every case.
  absl::StatusOr<std::shared_ptr<Arena>> Register(std::string_view token, int fd, const Peer& peer);
  // NOT_FOUND for an unknown id, PERMISSION_DENIED for another run's arena.
  absl::StatusOr<std::shared_ptr<Arena>> Get(uint64_t id, const std::string& run_id) const;
  // Checks the token, pins the peer's process (SO_PEERCRED pid) and reads
  // [probe, probe + probe_len) from it, so a daemon that may not read the
  // trainer's memory says so now (PERMISSION_DENIED naming the setting).
  absl::StatusOr<std::shared_ptr<Attachment>> Attach(std::string_view token, const Peer& peer,
                                                     uint64_t probe, uint64_t probe_len);
  // NOT_FOUND once its connection closed (or never attached), PERMISSION_DENIED for
  // another run's or a wrong key (another process cannot save from this one's memory).
  absl::StatusOr<std::shared_ptr<Attachment>> GetAttachment(uint64_t id, const std::string& run_id,
                                                            std::string_view key) const;
  // The connection closed: forget its arenas and attachments (saves keep
  // arenas alive; an attachment's reads fail from now on).
  void DropConnection(uint64_t connection);
  size_t size() const;

 private:
  // What a connection registered, with that connection's number.
  template <typename T>
  struct Owned {
    std::shared_ptr<T> item;
    uint64_t connection = 0;
  };
  // The item `id` of `run_id`: NOT_FOUND (with `unknown`) or PERMISSION_DENIED.
  template <typename T>
  static absl::StatusOr<std::shared_ptr<T>> Lookup(const std::map<uint64_t, Owned<T>>& items,
                                                   uint64_t id, const std::string& run_id,
                                                   std::string_view what, std::string_view unknown);
  const size_t max_arenas_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::string> tokens_ ABSL_GUARDED_BY(mu_);  // token -> run id
  std::map<std::string, std::string> by_run_ ABSL_GUARDED_BY(mu_);  // run id -> token
  std::map<uint64_t, Owned<Arena>> arenas_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Owned<Attachment>> attachments_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace ckptd::ingest
