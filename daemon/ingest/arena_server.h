// The arena socket: a Unix SOCK_SEQPACKET socket beside the gRPC one, where
// trainers pass memfds with SCM_RIGHTS (gRPC cannot carry fds). Protocol,
// one datagram each way per registration:
//   client: "REGISTER <token>" with exactly one fd attached
//   daemon: "OK <arena_id> <size>"  or  "ERR <CODE> <message>"
// and for pointer saves (the daemon reads the trainer's own memory):
//   client: "ATTACH <token> <probe address> <probe length>", no fd
//   daemon: "OK <attachment_id> 0 <key>" once a read of the probe range
//   worked; SavePointers names the attachment with its id and key
// and for hot restore ([shm] keep_last_in_memory):
//   client: "HOT <run_id> <step>", no fd
//   daemon: "OK <size>" with a read-only fd of the in-memory copy of that
//   step attached (where each tensor lies in it: RunInfo.in_memory), or
//   "ERR NOT_FOUND ..." when the daemon keeps no copy of that step. A read
//   needs no token: the peer-uid gate below is the boundary (the token ties
//   registrations, which write into a run, to that run)
// A connection may register several arenas; they stay registered until it
// closes. Peers must run as the daemon's uid, as root, or as one of
// `allowed_uids` (SO_PEERCRED). One
// thread polls every connection; bounded connections and message sizes.
#pragma once

#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "daemon/env/env.h"
#include "daemon/ingest/arena_protocol.h"
#include "daemon/ingest/arena_registry.h"
#include "daemon/ingest/hot_copies.h"

namespace ckptd::ingest {

class ArenaServer {
 public:
  static constexpr size_t kMaxConnections = 1024;

  // `hot` (may be null): the in-memory copies HOT hands out.
  // `max_connections`: at most kMaxConnections; the daemon derives it from
  // its open-file limit (env::ConnectionCap).
  ArenaServer(std::string path, ArenaRegistry* registry, std::vector<uint64_t> allowed_uids = {},
              HotCopies* hot = nullptr, size_t max_connections = kMaxConnections)
      : path_(std::move(path)),
        registry_(registry),
        allowed_uids_(std::move(allowed_uids)),
        hot_(hot),
        max_connections_(std::min(max_connections, kMaxConnections)) {}
  ~ArenaServer();  // Stop()

  // Binds (replacing a stale socket file) and starts the polling thread.
  absl::Status Start(env::Env* env);
  void Stop();
  const std::string& path() const { return path_; }

 private:
  struct Connection {
    int fd = -1;
    Peer peer;
    absl::Status refused;  // set for a peer whose uid may not register: told on its first message
  };
  void Loop();
  void Accept();
  // False when the connection is done (closed by the peer, or broken).
  bool Serve(Connection& c);
  template <typename Refuse>
  bool ServeAttach(Connection& c, const ArenaRequest& r, const Refuse& refuse);
  bool ServeHot(Connection& c, const ArenaRequest& r);

  std::string path_;
  ArenaRegistry* registry_;
  std::vector<uint64_t> allowed_uids_;
  HotCopies* hot_;
  int listen_fd_ = -1;
  // A descriptor held in reserve: when accept fails with EMFILE, it is
  // closed to accept and close the waiting peer (so poll does not spin on
  // it), then taken again.
  int spare_fd_ = -1;
  const size_t max_connections_;
  int wake_[2] = {-1, -1};  // pipe: Stop() wakes the poll
  std::thread thread_;
  std::map<int, Connection> connections_;  // by fd; touched only by the thread
  uint64_t next_connection_ = 1;
};

}  // namespace ckptd::ingest
