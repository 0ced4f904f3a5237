// The daemon's configuration: one documented struct. Values come from the
// built-in defaults (the dev setup `make run` uses), then a TOML file, then
// CKPTD_* environment variables, then the command line; each value records
// where it came from. Errors read "path:line: message"; unknown keys are
// errors. config/ckptd.example.toml documents every key.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/policy/retention.h"
#include "daemon/policy/schedule.h"

namespace ckptd::config {

struct Config {
  // [server]
  std::string listen = "unix:./ckpt-runs/ckptd.sock";  // "unix:PATH" or "HOST:PORT"
  // The Unix sockets' (API and arenas) permissions, set after bind: trainers
  // in the socket's group may connect. "" = the daemon's own group.
  uint32_t socket_mode = 0660;
  std::string socket_group;
  uint64_t max_message_bytes = 16 << 20;    // gRPC max receive/send message size
  uint64_t memory_quota_bytes = 512 << 20;  // gRPC ResourceQuota
  uint32_t max_threads = 64;                // gRPC sync server threads
  double shutdown_deadline_seconds = 60;    // SIGTERM: in-flight saves get this long
  double save_idle_timeout_seconds = 120;  // a Save stream silent this long is cancelled; 0 = never
  uint64_t max_tensors_per_save = 100000;  // tensors one save (or OpenRun) may declare
  uint64_t max_metadata_bytes = uint64_t{64} << 20;  // metadata one save or OpenRun may carry
  uint32_t max_watch_streams = 0;  // concurrent WatchRun streams (no thread each); 0 = 1024
  uint32_t max_save_streams = 0;   // concurrent Save + CloseRun streams; 0 = max_threads / 2
  // Calls that wait holding a thread: WaitSaved's wait, SavePointers' read.
  // Beyond it WaitSaved answers at once and SavePointers is refused;
  // 0 = max_threads / 4.
  uint32_t max_waiting_calls = 0;
  double watch_max_seconds = 3600;  // a WatchRun stream ends after this long
  // Memory clients decide the size of: save headers and metadata in flight,
  // open runs' settings (see rpc::MemoryBudget).
  uint64_t memory_budget_bytes = uint64_t{256} << 20;
  // A run idle this long (no OpenRun, ShouldSave or save: closed, or its
  // trainer went away) drops its settings from memory and the budget; its
  // next save reads them back from the run directory. 0 = never.
  double unload_idle_runs_seconds = 900;
  uint32_t max_streams_per_peer = 64;  // WatchRun + Save streams per TCP host; 0 = no limit
  // A HOST:PORT listen serves TLS with this certificate chain and key (PEM
  // files); with tls_client_ca, clients must present a certificate it signed.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  bool insecure = false;    // a HOST:PORT listen without TLS: only when set (logs a warning)
  std::string tokens_file;  // bearer tokens per run-id prefix (needs TLS); "" = none
  // [storage]
  std::vector<std::string> roots = {"./ckpt-runs"};  // runs live in <root>/<run_id>
  std::string direct_io = "auto";                    // "auto" | "off"
  bool share_unchanged = true;          // reflink tensors equal to the previous checkpoint's
  uint32_t alignment = 4096;            // GGUF general.alignment
  std::string uuid_scheme = "content";  // "content" | "gguf-hash"
  // The scrubber: committed files re-read and every digest checked at this
  // rate (0 = off), files changed in the last scrub_min_age_seconds skipped.
  uint64_t scrub_bytes_per_second = uint64_t{16} << 20;
  double scrub_min_age_seconds = 300;
  // [export]: named export profiles (<dir>/<name>.toml) beyond the built-ins
  std::string export_profiles_dir;
  // [schedule]: the default for runs that do not send their own
  policy::Schedule schedule{.every_steps = 1000};
  // [retention]: the default for runs that do not send their own
  policy::RetentionPolicy retention;        // all rules off: keep everything
  double retention_interval_seconds = 300;  // also applied after every commit
  // [disk_guard]: free space to keep on a run's filesystem after a save
  policy::DiskGuard disk_guard{.min_free_bytes = 0, .min_free_percent = 1};
  // [shm]: shared-memory saves (memfd arenas registered over a second socket)
  bool shm_enabled = true;
  std::string shm_socket;                   // "" = the listen socket's path + ".arenas" (Unix only)
  uint32_t shm_max_arenas = 256;            // registered arenas, all trainers together
  uint32_t shm_max_pending_saves = 8;       // queued shared-memory saves per run
  double shm_staging_timeout_seconds = 30;  // a progressive save stuck this long fails
  // Hot restore: keep each run's newest committed shm save in memory (its
  // arena's memfd) after the trainer is gone, up to this many bytes in all.
  bool shm_keep_last_in_memory = false;
  uint64_t shm_keep_in_memory_max_bytes = uint64_t{8} << 30;
  // Peers that may register arenas besides the daemon's own uid and root.
  std::vector<uint64_t> shm_allowed_uids;
  // [http]: JSON API, /metrics, /healthz, /readyz, status page; "" = off
  std::string http_listen = "127.0.0.1:9477";
  std::string http_token_file;  // a read token every request but /healthz, /readyz needs; "" = none
  std::string http_tls_cert;    // PEM chain and key: the listener serves HTTPS only
  std::string http_tls_key;
  uint32_t http_max_connections_per_peer = 0;  // 0 = a quarter of the 64 connections
  double http_header_timeout_seconds = 10;     // a request arrives within twice this
  double http_idle_timeout_seconds = 30;       // a kept-alive connection idle this long closes
  // [tier.s3]: copy every committed checkpoint to an S3-compatible store
  // (tier/uploader.h); "" endpoint = off. Credentials come from the
  // environment (CKPTD_S3_ACCESS_KEY, CKPTD_S3_SECRET_KEY) or the file named
  // here (access key on the first line, secret key on the second), never
  // from this struct, so they are never printed.
  std::string s3_endpoint;
  std::string s3_bucket;
  std::string s3_prefix;
  std::string s3_region = "us-east-1";
  std::string s3_credentials_file;
  std::string s3_ca_file;  // PEM CAs for an https endpoint ("" = the system's)
  // tier.s3.sign_payload: "auto" (false) signs the body's SHA-256 over http
  // and sends UNSIGNED-PAYLOAD over https; "always" (true) signs it everywhere.
  bool s3_sign_payload_always = false;
  uint64_t s3_part_size = uint64_t{16} << 20;
  uint64_t s3_parallel_parts = 4;
  bool s3_part_copy = true;  // unchanged ranges copied inside the store (UploadPartCopy)
  uint64_t s3_max_memory_bytes = uint64_t{64} << 20;
  double s3_stall_timeout_seconds = 30;  // a request moving no byte this long is retried
  bool s3_retention_same = false;        // tier.s3.retention: "keep_all" (false) | "same"
  // [memory]: the memory tier, a directory on tmpfs holding each run's last
  // memory steps (schedule.memory_every_steps) as complete checkpoints.
  // "" = off: runs asking for memory steps are refused.
  std::string memory_root;
  uint32_t memory_keep_last = 2;  // memory steps kept per run (a run's schedule may say otherwise)
  uint64_t memory_max_bytes = 0;  // all runs' memory steps together; 0 = tmpfs's size
  // [peers]: memory steps replicated to peer daemons' memory. "" listen =
  // off. Peers are the next `replicas` nodes after this one in `nodes`.
  std::string peers_listen;              // HOST:PORT replicas arrive on
  std::vector<std::string> peers_nodes;  // every node's peers.listen, in ring order
  std::string peers_self;                // this node in nodes; "" = peers.listen
  uint32_t peers_replicas = 1;           // k: 1 or 2
  uint64_t peers_max_bytes = 0;          // replicas held for peers, all runs (> 0 when on)
  uint32_t peers_keep_last = 2;          // replicas held per run
  bool peers_insecure = false;           // plaintext between peers
  std::string peers_tls_cert;            // this node's certificate chain (server and client)
  std::string peers_tls_key;
  std::string peers_tls_ca;      // the CA that signs every node's certificate
  std::string peers_token_file;  // a token peers send and require; "" = none
  // [log]
  std::string log_level = "info";  // trace | debug | info | warn | error | off

  // "server.listen" -> "default", "/etc/ckptd.toml:12", "env CKPTD_LISTEN", "--listen"
  std::map<std::string, std::string> sources;
};

// The stream caps in force: the configured ones, or derived from max_threads.
uint32_t EffectiveMaxWatchStreams(const Config& c);
uint32_t EffectiveMaxSaveStreams(const Config& c);
uint32_t EffectiveMaxWaitingCalls(const Config& c);

struct CommandLine {
  std::optional<std::string> listen;
  std::vector<std::string> roots;
  std::optional<std::string> log_level;
  std::optional<std::string> http_listen;
  bool insecure = false;  // --insecure
};

// Loads `file` (none when empty) over the defaults, then the environment
// (CKPTD_LISTEN, CKPTD_ROOTS colon-separated, CKPTD_LOG_LEVEL), then the
// command line, and validates the result.
absl::StatusOr<Config> LoadConfig(const std::string& file,
                                  const std::map<std::string, std::string>& environment,
                                  const CommandLine& cli);

// `toml_text` alone over the defaults (no environment, no command line),
// validated; errors name `source`. For tools and the config fuzzer.
absl::StatusOr<Config> ParseConfig(std::string_view toml_text, const std::string& source);

// The effective configuration as TOML, each value commented with its source;
// it loads back as the same configuration.
std::string Describe(const Config& config);
// Every key the loader knows, "section.name", sorted.
std::vector<std::string> Keys();

// The arena socket's path: shm.socket, or derived from a unix: listen
// address; "" when shm is off or the API listens on TCP only.
std::string ArenaSocketPath(const Config& config);

// What is wrong with `value` as HOST:PORT ("" when nothing): a scheme
// ("tcp://"), no port, a port outside 1-65535 (0 allowed with port_zero),
// an IPv6 host without brackets.
std::string HostPortProblem(std::string_view value, bool port_zero);
// The id of the group `name`, or -1 when there is none.
int64_t GroupId(const std::string& name);

}  // namespace ckptd::config
