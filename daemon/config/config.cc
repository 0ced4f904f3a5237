// TOML config loader with per-value provenance.
#include "daemon/config/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <grp.h>
#include <toml++/toml.h>

#include <charconv>
#include <functional>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/policy/peers.h"

namespace ckptd::config {
namespace {

using Setter = std::function<absl::Status(const toml::node&, const std::string& where)>;

// One config key: how a TOML value sets it and how --print-config shows it
// (as TOML, so the printed config loads back as the same config).
struct Field {
  Setter set;
  std::function<std::string()> print;
};

template <typename T>
std::string List(const std::vector<T>& v, bool quote) {
  std::vector<std::string> items;
  items.reserve(v.size());
  for (const auto& x : v) items.push_back(quote ? fmt::format("\"{}\"", x) : fmt::format("{}", x));
  return fmt::format("[{}]", fmt::join(items, ", "));
}

std::string TypeName(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    default:
      return "a date/time";
  }
}

absl::Status TypeError(const std::string& where, const std::string& want, const toml::node& n) {
  return absl::InvalidArgumentError(StrCat(where, ": expected ", want, ", got ", TypeName(n)));
}

Field String(std::string* out) {
  return {[out](const toml::node& n, const std::string& where) -> absl::Status {
            if (!n.is_string()) return TypeError(where, "a string", n);
            *out = n.as_string()->get();
            return absl::OkStatus();
          },
          [out] { return fmt::format("\"{}\"", *out); }};
}

template <typename T>
Field Unsigned(T* out) {
  return {[out](const toml::node& n, const std::string& where) -> absl::Status {
            if (!n.is_integer()) return TypeError(where, "an integer", n);
            int64_t v = n.as_integer()->get();
            if (v < 0 || static_cast<uint64_t>(v) > std::numeric_limits<T>::max()) {
              return absl::InvalidArgumentError(StrCat(where, ": ", v, " is out of range"));
            }
            *out = static_cast<T>(v);
            return absl::OkStatus();
          },
          [out] { return std::to_string(*out); }};
}

Field Seconds(double* out) {
  return {[out](const toml::node& n, const std::string& where) -> absl::Status {
            if (!n.is_number()) return TypeError(where, "a number", n);
            *out = n.is_integer() ? static_cast<double>(n.as_integer()->get())
                                  : n.as_floating_point()->get();
            if (*out < 0)
              return absl::InvalidArgumentError(StrCat(where, ": must not be negative"));
            return absl::OkStatus();
          },
          [out] { return fmt::format("{:g}", *out); }};
}

// File permission bits as an octal string ("0660"), as chmod writes them.
Field Mode(uint32_t* out) {
  return {[out](const toml::node& n, const std::string& where) -> absl::Status {
            if (!n.is_string()) return TypeError(where, "an octal string like \"0660\"", n);
            const std::string text = n.as_string()->get();
            uint32_t v = 0;
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v, 8);
            if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v > 0777) {
              return absl::InvalidArgumentError(StrCat(
                  where, ": '", text, "' is not a mode like \"0660\" (octal, at most 0777)"));
            }
            *out = v;
            return absl::OkStatus();
          },
          [out] { return fmt::format("\"{:04o}\"", *out); }};
}

Field Bool(bool* out) {
  return {[out](const toml::node& n, const std::string& where) -> absl::Status {
            if (!n.is_boolean()) return TypeError(where, "a boolean", n);
            *out = n.as_boolean()->get();
            return absl::OkStatus();
          },
          [out] { return std::string(*out ? "true" : "false"); }};
}

Field StringList(std::vector<std::string>* out) {
  return {[out](const toml::node& n, const std::string& where) -> absl::Status {
            if (!n.is_array()) return TypeError(where, "an array of strings", n);
            out->clear();
            for (const toml::node& item : *n.as_array()) {
              if (!item.is_string()) return TypeError(where, "an array of strings", item);
              out->push_back(item.as_string()->get());
            }
            return absl::OkStatus();
          },
          [out] { return List(*out, /*quote=*/true); }};
}

// An array of non-negative integers (steps, uids).
Field StepList(std::vector<uint64_t>* out) {
  return {[out](const toml::node& n, const std::string& where) -> absl::Status {
            if (!n.is_array()) return TypeError(where, "an array of non-negative integers", n);
            out->clear();
            for (const toml::node& item : *n.as_array()) {
              if (!item.is_integer() || item.as_integer()->get() < 0) {
                return TypeError(where, "an array of non-negative integers", item);
              }
              out->push_back(static_cast<uint64_t>(item.as_integer()->get()));
            }
            return absl::OkStatus();
          },
          [out] { return List(*out, /*quote=*/false); }};
}

template <typename E>
Field Enum(E* out, std::vector<std::pair<std::string, E>> names) {
  auto print = [out, names] {
    for (const auto& [name, value] : names) {
      if (value == *out) return fmt::format("\"{}\"", name);
    }
    return std::string("\"?\"");
  };
  Setter set = [out, names](const toml::node& n, const std::string& where) -> absl::Status {
    if (!n.is_string()) return TypeError(where, "a string", n);
    std::vector<std::string> allowed;
    for (const auto& [name, value] : names) {
      if (name == n.as_string()->get()) {
        *out = value;
        return absl::OkStatus();
      }
      allowed.push_back("\"" + name + "\"");
    }
    return absl::InvalidArgumentError(StrCat(where, ": '", n.as_string()->get(), "' is not ",
                                             fmt::format("{}", fmt::join(allowed, " or "))));
  };
  return {std::move(set), std::move(print)};
}

// Every key the config knows: parsing, defaults' provenance, --print-config
// and the example-config test all come from this one table.
std::map<std::string, Field> Fields(Config* c) {
  return {
      {"server.listen", String(&c->listen)},
      {"server.socket_mode", Mode(&c->socket_mode)},
      {"server.socket_group", String(&c->socket_group)},
      {"server.max_message_bytes", Unsigned(&c->max_message_bytes)},
      {"server.memory_quota_bytes", Unsigned(&c->memory_quota_bytes)},
      {"server.max_threads", Unsigned(&c->max_threads)},
      {"server.shutdown_deadline_seconds", Seconds(&c->shutdown_deadline_seconds)},
      {"server.save_idle_timeout_seconds", Seconds(&c->save_idle_timeout_seconds)},
      {"server.max_tensors_per_save", Unsigned(&c->max_tensors_per_save)},
      {"server.max_metadata_bytes", Unsigned(&c->max_metadata_bytes)},
      {"server.max_watch_streams", Unsigned(&c->max_watch_streams)},
      {"server.max_save_streams", Unsigned(&c->max_save_streams)},
      {"server.max_waiting_calls", Unsigned(&c->max_waiting_calls)},
      {"server.watch_max_seconds", Seconds(&c->watch_max_seconds)},
      {"server.memory_budget_bytes", Unsigned(&c->memory_budget_bytes)},
      {"server.unload_idle_runs_seconds", Seconds(&c->unload_idle_runs_seconds)},
      {"server.max_streams_per_peer", Unsigned(&c->max_streams_per_peer)},
      {"server.tls_cert", String(&c->tls_cert)},
      {"server.tls_key", String(&c->tls_key)},
      {"server.tls_client_ca", String(&c->tls_client_ca)},
      {"server.insecure", Bool(&c->insecure)},
      {"server.tokens_file", String(&c->tokens_file)},
      {"storage.roots", StringList(&c->roots)},
      {"storage.direct_io", String(&c->direct_io)},
      {"storage.share_unchanged", Bool(&c->share_unchanged)},
      {"storage.alignment", Unsigned(&c->alignment)},
      {"storage.scrub_bytes_per_second", Unsigned(&c->scrub_bytes_per_second)},
      {"storage.scrub_min_age_seconds", Seconds(&c->scrub_min_age_seconds)},
      {"storage.uuid_scheme", String(&c->uuid_scheme)},
      {"export.profiles_dir", String(&c->export_profiles_dir)},
      {"schedule.every_steps", Unsigned(&c->schedule.every_steps)},
      {"schedule.every_seconds", Seconds(&c->schedule.every_seconds)},
      {"schedule.at_steps", StepList(&c->schedule.at_steps)},
      {"schedule.final_on_close", Bool(&c->schedule.final_on_close)},
      {"schedule.memory_every_steps", Unsigned(&c->schedule.memory_every_steps)},
      {"schedule.memory_keep_last", Unsigned(&c->schedule.memory_keep_last)},
      {"schedule.memory_auto", Bool(&c->schedule.memory_auto)},
      {"schedule.memory_overhead_budget", Seconds(&c->schedule.memory_overhead_budget)},
      {"memory.root", String(&c->memory_root)},
      {"memory.keep_last", Unsigned(&c->memory_keep_last)},
      {"memory.max_bytes", Unsigned(&c->memory_max_bytes)},
      {"peers.listen", String(&c->peers_listen)},
      {"peers.nodes", StringList(&c->peers_nodes)},
      {"peers.self", String(&c->peers_self)},
      {"peers.replicas", Unsigned(&c->peers_replicas)},
      {"peers.max_bytes", Unsigned(&c->peers_max_bytes)},
      {"peers.keep_last", Unsigned(&c->peers_keep_last)},
      {"peers.insecure", Bool(&c->peers_insecure)},
      {"peers.tls_cert", String(&c->peers_tls_cert)},
      {"peers.tls_key", String(&c->peers_tls_key)},
      {"peers.tls_ca", String(&c->peers_tls_ca)},
      {"peers.token_file", String(&c->peers_token_file)},
      {"log.level", String(&c->log_level)},
      {"shm.enabled", Bool(&c->shm_enabled)},
      {"shm.socket", String(&c->shm_socket)},
      {"shm.max_arenas", Unsigned(&c->shm_max_arenas)},
      {"shm.max_pending_saves", Unsigned(&c->shm_max_pending_saves)},
      {"shm.staging_timeout_seconds", Seconds(&c->shm_staging_timeout_seconds)},
      {"shm.allowed_uids", StepList(&c->shm_allowed_uids)},
      {"shm.keep_last_in_memory", Bool(&c->shm_keep_last_in_memory)},
      {"shm.keep_in_memory_max_bytes", Unsigned(&c->shm_keep_in_memory_max_bytes)},
      {"http.listen", String(&c->http_listen)},
      {"http.token_file", String(&c->http_token_file)},
      {"http.tls_cert", String(&c->http_tls_cert)},
      {"http.tls_key", String(&c->http_tls_key)},
      {"http.max_connections_per_peer", Unsigned(&c->http_max_connections_per_peer)},
      {"http.header_timeout_seconds", Seconds(&c->http_header_timeout_seconds)},
      {"http.idle_timeout_seconds", Seconds(&c->http_idle_timeout_seconds)},
      {"tier.s3.endpoint", String(&c->s3_endpoint)},
      {"tier.s3.bucket", String(&c->s3_bucket)},
      {"tier.s3.prefix", String(&c->s3_prefix)},
      {"tier.s3.region", String(&c->s3_region)},
      {"tier.s3.credentials_file", String(&c->s3_credentials_file)},
      {"tier.s3.ca_file", String(&c->s3_ca_file)},
      {"tier.s3.sign_payload",
       Enum(&c->s3_sign_payload_always, {{"auto", false}, {"always", true}})},
      {"tier.s3.part_size", Unsigned(&c->s3_part_size)},
      {"tier.s3.parallel_parts", Unsigned(&c->s3_parallel_parts)},
      {"tier.s3.part_copy", Bool(&c->s3_part_copy)},
      {"tier.s3.max_memory_bytes", Unsigned(&c->s3_max_memory_bytes)},
      {"tier.s3.stall_timeout_seconds", Seconds(&c->s3_stall_timeout_seconds)},
      {"tier.s3.retention", Enum(&c->s3_retention_same, {{"keep_all", false}, {"same", true}})},
      {"retention.keep_last", Unsigned(&c->retention.keep_last)},
      {"retention.keep_every_steps", Unsigned(&c->retention.keep_every_steps)},
      {"retention.keep_best", Unsigned(&c->retention.keep_best)},
      {"retention.metric", String(&c->retention.metric)},
      {"retention.mode", Enum(&c->retention.mode, {{"min", policy::MetricMode::kMin},
                                                   {"max", policy::MetricMode::kMax}})},
      {"retention.missing_metric",
       Enum(&c->retention.missing_metric,
            {{"ignore", policy::MissingMetric::kIgnore}, {"keep", policy::MissingMetric::kKeep}})},
      {"retention.keep_time_interval_seconds", Seconds(&c->retention.keep_time_interval_seconds)},
      {"retention.keep_time_window_seconds", Seconds(&c->retention.keep_time_window_seconds)},
      {"retention.max_bytes", Unsigned(&c->retention.max_bytes)},
      {"retention.interval_seconds", Seconds(&c->retention_interval_seconds)},
      {"disk_guard.min_free_bytes", Unsigned(&c->disk_guard.min_free_bytes)},
      {"disk_guard.min_free_percent", Seconds(&c->disk_guard.min_free_percent)},
      {"disk_guard.on_full",
       Enum(&c->disk_guard.on_full,
            {{"refuse", policy::OnFull::kRefuse}, {"prune_oldest", policy::OnFull::kPruneOldest}})},
  };
}

// `text` (nullopt: read the file at `path`) over `c`; errors name `path`.
absl::Status LoadToml(const std::string& path, std::optional<std::string_view> text, Config* c) {
  toml::table root;
  try {
    root = text ? toml::parse(*text, path) : toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    if (e.source().begin.line == 0) {
      return absl::InvalidArgumentError(StrCat(path, ": ", e.description()));
    }
    return absl::InvalidArgumentError(
        StrCat(path, ":", e.source().begin.line, ": ", e.description()));
  }
  auto fields = Fields(c);
  for (const auto& [section, node] : root) {
    std::string at = StrCat(path, ":", node.source().begin.line);
    if (!node.is_table()) {
      return absl::InvalidArgumentError(
          StrCat(at, ": unknown key '", section.str(),
                 "': keys belong in [server], [storage], "
                 "[schedule], [retention], [disk_guard], [shm], [http], "
                 "[export], [tier.s3] or [log]"));
    }
    // Keys, with [a.b] tables flattened to "a.b.key".
    std::function<absl::Status(const toml::table&, const std::string&)> walk =
        [&](const toml::table& table, const std::string& prefix) -> absl::Status {
      for (const auto& [key, value] : table) {
        std::string name = StrCat(prefix, ".", key.str());
        std::string where = StrCat(path, ":", value.source().begin.line);
        auto it = fields.find(name);
        if (it == fields.end() && value.is_table()) {
          CKPTD_TRY(walk(*value.as_table(), name));
          continue;
        }
        if (it == fields.end()) {
          return absl::InvalidArgumentError(
              StrCat(where, ": unknown key '", name, "' (see config/ckptd.example.toml)"));
        }
        CKPTD_TRY(it->second.set(value, StrCat(where, ": ", name)));
        c->sources[name] = where;
      }
      return absl::OkStatus();
    };
    CKPTD_TRY(walk(*node.as_table(), std::string(section.str())));
  }
  return absl::OkStatus();
}

absl::Status Validate(const Config& c) {
  auto bad = [&](const std::string& key, const std::string& msg) {
    return absl::InvalidArgumentError(StrCat(c.sources.at(key), ": ", key, ": ", msg));
  };
  if (c.listen.empty() || (c.listen.starts_with("unix:") && c.listen.size() == 5)) {
    return bad("server.listen", StrCat("'", c.listen, "' is not unix:PATH or HOST:PORT"));
  }
  if (!c.listen.starts_with("unix:")) {
    if (std::string problem = HostPortProblem(c.listen, /*port_zero=*/true); !problem.empty()) {
      return bad("server.listen", StrCat(problem, "; or unix:PATH for a Unix socket"));
    }
  }
  if (!c.socket_group.empty() && GroupId(c.socket_group) < 0) {
    return bad("server.socket_group",
               StrCat("no group named '", c.socket_group, "' on this system (getent group)"));
  }
  const bool tcp = !c.listen.starts_with("unix:");
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return bad(c.tls_cert.empty() ? "server.tls_cert" : "server.tls_key",
               "server.tls_cert and server.tls_key go together (a PEM certificate chain and its "
               "private key)");
  }
  if (!c.tls_cert.empty() && !tcp) {
    return bad("server.tls_cert",
               StrCat("TLS is for a HOST:PORT listen; server.listen is the Unix socket '", c.listen,
                      "', which file permissions protect"));
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return bad("server.tls_client_ca", "client certificates need TLS: set server.tls_cert too");
  }
  if (tcp && c.tls_cert.empty() && !c.insecure) {
    return bad("server.listen",
               StrCat("'", c.listen,
                      "' is TCP without TLS: set server.tls_cert and server.tls_key, or "
                      "server.insecure = true (or --insecure) to serve plaintext, which anyone "
                      "who can reach the port can use to read and overwrite checkpoints"));
  }
  if (!c.tokens_file.empty() && c.tls_cert.empty()) {
    return bad("server.tokens_file",
               "bearer tokens need TLS (server.tls_cert): in plaintext anyone on the path can "
               "read them");
  }
  if (c.roots.empty()) return bad("storage.roots", "at least one root is needed");
  for (const std::string& r : c.roots) {
    if (r.empty()) return bad("storage.roots", "a root is an empty path");
  }
  if ((c.schedule.memory_every_steps > 0 || c.schedule.memory_auto) && c.memory_root.empty()) {
    return bad(c.schedule.memory_auto ? "schedule.memory_auto" : "schedule.memory_every_steps",
               "memory steps need the memory tier: set [memory] root to a directory on tmpfs "
               "(e.g. /dev/shm/ckptd)");
  }
  if (!c.memory_root.empty()) {
    for (const std::string& r : c.roots) {
      const std::string a = r.ends_with('/') ? r : r + "/";
      const std::string b = c.memory_root.ends_with('/') ? c.memory_root : c.memory_root + "/";
      if (a.starts_with(b) || b.starts_with(a)) {
        return bad("memory.root", StrCat("'", c.memory_root, "' overlaps storage.roots '", r,
                                         "'; the memory tier needs its own directory on tmpfs"));
      }
    }
  }
  if (c.memory_keep_last == 0) return bad("memory.keep_last", "must be at least 1");
  if (!c.peers_listen.empty()) {
    if (std::string problem = HostPortProblem(c.peers_listen, /*port_zero=*/false);
        !problem.empty()) {
      return bad("peers.listen", problem);
    }
    if (c.memory_root.empty()) {
      return bad("peers.listen", "replicas are held in the memory tier: set [memory] root");
    }
    if (c.peers_max_bytes == 0) {
      return bad("peers.max_bytes", "how much RAM replicas for peers may hold (bytes, > 0)");
    }
    if (c.peers_keep_last == 0) return bad("peers.keep_last", "must be at least 1");
    if (c.peers_tls_cert.empty() != c.peers_tls_key.empty()) {
      return bad(c.peers_tls_cert.empty() ? "peers.tls_cert" : "peers.tls_key",
                 "peers.tls_cert and peers.tls_key go together");
    }
    if (c.peers_tls_cert.empty() && !c.peers_insecure) {
      return bad("peers.listen",
                 "peers talk over TCP: set peers.tls_cert, peers.tls_key and peers.tls_ca, or "
                 "peers.insecure = true on a network you trust");
    }
    if (!c.peers_tls_cert.empty() && c.peers_tls_ca.empty()) {
      return bad("peers.tls_ca", "the CA that signs every node's certificate (mutual TLS)");
    }
    if (!c.peers_token_file.empty() && c.peers_tls_cert.empty()) {
      return bad("peers.token_file",
                 "a token needs TLS (peers.tls_cert): in plaintext anyone on "
                 "the path can read it");
    }
  }
  if (!c.peers_nodes.empty()) {
    if (c.peers_listen.empty()) {
      return bad("peers.nodes", "this node needs peers.listen to take part in the ring");
    }
    const std::string self = c.peers_self.empty() ? c.peers_listen : c.peers_self;
    if (auto ring = policy::RingPeers(c.peers_nodes, self, c.peers_replicas); !ring.ok()) {
      return bad("peers.nodes", std::string(ring.status().message()));
    }
  }
  if (c.direct_io != "auto" && c.direct_io != "off") {
    return bad("storage.direct_io", StrCat("'", c.direct_io, "' is not \"auto\" or \"off\""));
  }
  if (c.uuid_scheme != "content" && c.uuid_scheme != "gguf-hash") {
    return bad("storage.uuid_scheme",
               StrCat("'", c.uuid_scheme, "' is not \"content\" or \"gguf-hash\""));
  }
  if (c.alignment == 0 || (c.alignment & (c.alignment - 1)) != 0 || c.alignment > (1u << 20)) {
    return bad("storage.alignment", StrCat(c.alignment, " is not a power of two up to 1 MiB"));
  }
  if (c.max_message_bytes < (64u << 10) || c.max_message_bytes > (1u << 30)) {
    return bad("server.max_message_bytes", "must be between 64 KiB and 1 GiB");
  }
  if (c.max_threads < 4) return bad("server.max_threads", "must be at least 4");
  if (c.max_tensors_per_save == 0) return bad("server.max_tensors_per_save", "must be at least 1");
  if (uint64_t{EffectiveMaxSaveStreams(c)} + EffectiveMaxWaitingCalls(c) + 2 > c.max_threads) {
    return bad(
        "server.max_save_streams",
        StrCat(EffectiveMaxSaveStreams(c), " and server.max_waiting_calls (",
               EffectiveMaxWaitingCalls(c), ") must leave at least 2 of server.max_threads (",
               c.max_threads, ") for unary calls"));
  }
  if (c.watch_max_seconds <= 0) return bad("server.watch_max_seconds", "must be above 0");
  if (c.http_header_timeout_seconds <= 0)
    return bad("http.header_timeout_seconds", "must be above 0");
  if (c.http_idle_timeout_seconds <= 0) return bad("http.idle_timeout_seconds", "must be above 0");
  if (c.memory_budget_bytes < (1u << 20))
    return bad("server.memory_budget_bytes", "must be at least 1 MiB");
  if (c.unload_idle_runs_seconds < 0)
    return bad("server.unload_idle_runs_seconds", "must be 0 (never) or above");
  if (c.shm_max_arenas == 0) return bad("shm.max_arenas", "must be at least 1");
  if (c.shm_max_pending_saves == 0) return bad("shm.max_pending_saves", "must be at least 1");
  if (c.shm_staging_timeout_seconds <= 0)
    return bad("shm.staging_timeout_seconds", "must be above 0");
  if (c.disk_guard.min_free_percent > 90)
    return bad("disk_guard.min_free_percent", "must be at most 90");
  if (c.retention.metric.empty()) return bad("retention.metric", "must name a metric");
  if (!c.http_listen.empty()) {
    if (std::string problem = HostPortProblem(c.http_listen, /*port_zero=*/true);
        !problem.empty()) {
      return bad("http.listen", StrCat(problem, "; or \"\" for off"));
    }
  }
  if (c.http_tls_cert.empty() != c.http_tls_key.empty()) {
    return bad(c.http_tls_cert.empty() ? "http.tls_cert" : "http.tls_key",
               "http.tls_cert and http.tls_key go together: set both for HTTPS, or neither");
  }
  if (!c.s3_endpoint.empty()) {
    if (!c.s3_endpoint.starts_with("http://") && !c.s3_endpoint.starts_with("https://")) {
      return bad("tier.s3.endpoint",
                 StrCat("'", c.s3_endpoint, "' is not http://HOST[:PORT] or https://HOST[:PORT]"));
    }
    if (c.s3_bucket.empty()) {
      return bad("tier.s3.endpoint", "needs tier.s3.bucket: the bucket checkpoints go to");
    }
  }
  if (!c.s3_ca_file.empty() && !c.s3_endpoint.starts_with("https://")) {
    return bad("tier.s3.ca_file",
               "verifies an https:// endpoint's certificate; tier.s3.endpoint is not https://");
  }
  if (std::string problem = KeyPrefixProblem(c.s3_prefix); !problem.empty()) {
    return bad("tier.s3.prefix", StrCat("'", Printable(c.s3_prefix), "' ", problem,
                                        "; a key prefix such as \"ckpt/cluster-a\""));
  }
  if (c.s3_part_size < (uint64_t{5} << 20) || c.s3_part_size > (uint64_t{5} << 30)) {
    return bad("tier.s3.part_size", "S3 parts are 5 MiB (5242880) to 5 GiB");
  }
  if (c.s3_parallel_parts < 1 || c.s3_parallel_parts > 64) {
    return bad("tier.s3.parallel_parts", "must be 1 to 64");
  }
  if (c.s3_max_memory_bytes < c.s3_part_size) {
    return bad("tier.s3.max_memory_bytes",
               StrCat("must hold at least one part (tier.s3.part_size = ", c.s3_part_size, ")"));
  }
  if (c.s3_stall_timeout_seconds < 1) {
    return bad("tier.s3.stall_timeout_seconds",
               "must be at least 1: a request moving no byte that long is retried");
  }
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
  if (std::find(std::begin(kLevels), std::end(kLevels), c.log_level) == std::end(kLevels)) {
    return bad("log.level",
               StrCat("'", c.log_level, "' is not one of trace, debug, info, warn, error, off"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string HostPortProblem(std::string_view v, bool port_zero) {
  const std::string quoted = StrCat("'", v, "'");
  if (size_t scheme = v.find("://"); scheme != std::string_view::npos) {
    return StrCat(quoted, " has a scheme (", v.substr(0, scheme),
                  "://); write HOST:PORT, e.g. 0.0.0.0:9476");
  }
  const size_t colon = v.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return StrCat(quoted, " is not HOST:PORT, e.g. 127.0.0.1:9476 or [::1]:9476");
  }
  const std::string_view host = v.substr(0, colon), port = v.substr(colon + 1);
  if (host.find(':') != std::string_view::npos && !(host.front() == '[' && host.back() == ']')) {
    return StrCat(quoted, ": an IPv6 host goes in brackets, e.g. [::1]:9476");
  }
  uint32_t p = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p > 65535 ||
      (p == 0 && !port_zero)) {
    return StrCat(quoted, ": the port must be a number from ", port_zero ? "0" : "1", " to 65535",
                  port_zero ? " (0 picks a free one)" : "");
  }
  return "";
}

int64_t GroupId(const std::string& name) {
  std::vector<char> buf(16384);
  group g{};
  group* found = nullptr;
  if (::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return -1;
  }
  return found->gr_gid;
}

absl::StatusOr<Config> LoadConfig(const std::string& file,
                                  const std::map<std::string, std::string>& environment,
                                  const CommandLine& cli) {
  Config c;
  for (const auto& [key, field] : Fields(&c)) c.sources[key] = "default";
  if (!file.empty()) CKPTD_TRY(LoadToml(file, std::nullopt, &c));
  auto from_env = [&](const char* var, const std::string& key, auto apply) {
    auto it = environment.find(var);
    if (it == environment.end()) return;
    apply(it->second);
    c.sources[key] = StrCat("env ", var);
  };
  from_env("CKPTD_LISTEN", "server.listen", [&](const std::string& v) { c.listen = v; });
  from_env("CKPTD_ROOTS", "storage.roots",
           [&](const std::string& v) { c.roots = Split(v, ':', true); });
  from_env("CKPTD_LOG_LEVEL", "log.level", [&](const std::string& v) { c.log_level = v; });
  if (cli.listen) {
    c.listen = *cli.listen;
    c.sources["server.listen"] = "--listen";
  }
  if (!cli.roots.empty()) {
    c.roots = cli.roots;
    c.sources["storage.roots"] = "--root";
  }
  if (cli.http_listen) {
    c.http_listen = *cli.http_listen;
    c.sources["http.listen"] = "--http-listen";
  }
  if (cli.insecure) {
    c.insecure = true;
    c.sources["server.insecure"] = "--insecure";
  }
  if (cli.log_level) {
    c.log_level = *cli.log_level;
    c.sources["log.level"] = "--log-level";
  }
  CKPTD_TRY(Validate(c));
  return c;
}

absl::StatusOr<Config> ParseConfig(std::string_view toml_text, const std::string& source) {
  Config c;
  for (const auto& [key, field] : Fields(&c)) c.sources[key] = "default";
  CKPTD_TRY(LoadToml(source, toml_text, &c));
  CKPTD_TRY(Validate(c));
  return c;
}

std::string Describe(const Config& c) {
  Config copy = c;
  std::string out, section;
  for (const auto& [key, field] : Fields(&copy)) {
    const size_t dot = key.rfind('.');  // "tier.s3.endpoint": [tier.s3] endpoint
    if (key.substr(0, dot) != section) {
      section = key.substr(0, dot);
      out += fmt::format("{}[{}]\n", out.empty() ? "" : "\n", section);
    }
    auto src = c.sources.find(key);
    out += fmt::format("{:<40} # {}\n", key.substr(dot + 1) + " = " + field.print(),
                       src == c.sources.end() ? "default" : src->second);
  }
  return out;
}

std::vector<std::string> Keys() {
  Config c;
  std::vector<std::string> out;
  for (const auto& [key, field] : Fields(&c)) out.push_back(key);
  return out;
}

uint32_t EffectiveMaxWatchStreams(const Config& c) {
  return c.max_watch_streams != 0 ? c.max_watch_streams : 1024;
}

uint32_t EffectiveMaxSaveStreams(const Config& c) {
  return c.max_save_streams != 0 ? c.max_save_streams : std::max<uint32_t>(1, c.max_threads / 2);
}

uint32_t EffectiveMaxWaitingCalls(const Config& c) {
  return c.max_waiting_calls != 0 ? c.max_waiting_calls : std::max<uint32_t>(1, c.max_threads / 4);
}

std::string ArenaSocketPath(const Config& c) {
  if (!c.shm_enabled) return "";
  if (!c.shm_socket.empty()) return c.shm_socket;
  if (!c.listen.starts_with("unix:")) return "";
  return c.listen.substr(5) + ".arenas";
}

}  // namespace ckptd::config
