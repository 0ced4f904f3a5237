// ckptctl: runs, ls, latest, show, import.
#include "client/cli/daemon_commands.h"

#include <google/protobuf/util/json_util.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/numbers.h"
#include "ckptd/client.h"
#include "ckptd/restore.h"
#include "client/cli/commands.h"
#include "client/cli/gguf_json.h"
#include "client/cli/lineage_command.h"
#include "daemon/api/convert.h"
#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/export/profile.h"
#include "daemon/gguf/reader.h"

namespace ckptd::cli {

namespace {

// The daemon's answers name its API (what a program calls); ckptctl's user
// types commands, so the advice is said in ckptctl's words.
std::string InUsersWords(std::string message) {
  static constexpr std::pair<std::string_view, std::string_view> kSays[] = {
      {"; OpenRun it first",
       ": a run appears here once a trainer opens it (ckptctl runs lists them)"},
      {"; ListCheckpoints shows the committed steps", " (ckptctl ls RUN lists its steps)"},
  };
  for (const auto& [api, words] : kSays) {
    if (size_t at = message.find(api); at != std::string::npos) {
      message.replace(at, api.size(), words);
    }
  }
  return message;
}

}  // namespace

// Beside Fail(what, absl::Status) (commands.h), so that neither hides the other.
int Fail(const std::string& what, const grpc::Status& st) {
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE &&
      st.error_message().find("Permission denied") != std::string::npos) {
    std::fprintf(stderr,
                 "ckptctl: %s: permission denied on ckptd's socket (%s): the daemon is there, but "
                 "this user may not connect. Join the socket's group (server.socket_group; "
                 "`ls -l` the socket to see it), then log in again\n",
                 what.c_str(), st.error_message().c_str());
    return kExitFailed;
  }
  // gRPC could not make a secure channel from the TLS files (it says
  // nothing more once its own log lines are off).
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE &&
      st.error_message().starts_with("empty address list")) {
    std::fprintf(stderr,
                 "ckptctl: %s: the TLS files could not be used (gRPC made no secure channel from "
                 "them): check that --tls-ca is the PEM CA bundle that signed the daemon's "
                 "certificate, and --tls-cert/--tls-key a matching PEM pair\n",
                 what.c_str());
    return kExitFailed;
  }
  // The daemon's own answer about the object store, not a transport failure.
  const bool from_store = st.error_message().starts_with("object store: ");
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE && !from_store) {
    std::fprintf(stderr,
                 "ckptctl: %s: cannot reach ckptd (%s); is it running? (--socket; for a TLS "
                 "daemon, --tls-ca and, if it asks for one, --tls-cert/--tls-key)\n",
                 what.c_str(), st.error_message().c_str());
    return kExitFailed;
  }
  return Fail(what, FromGrpc(grpc::Status(st.error_code(), InUsersWords(st.error_message()))));
}

namespace {

std::string Json(const google::protobuf::Message& m) { return api::MessageToJson(m, true); }

std::string DefaultSocket() {
  const char* env = std::getenv("CKPTD_SOCKET");
  return env && *env ? env : "unix:./ckpt-runs/ckptd.sock";
}

// Metrics are printed with every digit a double has (the shortest text
// that reads back to the same value), in name order.
std::string Number(double v) { return fmt::format("{}", v); }

std::string Metrics(const google::protobuf::Map<std::string, double>& m) {
  const std::map<std::string, double> sorted(m.begin(), m.end());
  std::string out;
  for (const auto& [k, v] : sorted) StrAppend(&out, out.empty() ? "" : " ", k, "=", Number(v));
  return out;
}

const char* StateName(v1::RunState s) {
  switch (s) {
    case v1::RUN_STATE_OPEN:
      return "open";
    case v1::RUN_STATE_IDLE:
      return "idle";
    case v1::RUN_STATE_FINISHED:
      return "finished";
    default:
      return "?";
  }
}

int Runs(Client& c, const DaemonCommandArgs& a) {
  grpc::ClientContext ctx;
  v1::ListRunsResponse resp;
  if (auto st = c.stub().ListRuns(&ctx, {}, &resp); !st.ok()) return Fail("runs", st);
  if (a.json) {
    std::cout << Json(resp) << "\n";
    return kExitOk;
  }
  std::cout << fmt::format("{:<24} {:<9} {:>10} {:>6} {:>14}  {}\n", "RUN", "STATE", "LAST STEP",
                           "CKPTS", "BYTES", "DIR");
  for (const auto& r : resp.runs()) {
    std::cout << fmt::format("{:<24} {:<9} {:>10} {:>6} {:>14}  {}\n", r.run_id(),
                             StateName(r.state()),
                             r.has_last_step() ? std::to_string(r.last_step()) : "-",
                             r.checkpoint_count(), r.total_bytes(), r.run_dir());
  }
  return kExitOk;
}

int Ls(Client& c, const DaemonCommandArgs& a) {
  v1::ListCheckpointsResponse all;
  v1::ListCheckpointsRequest req;
  req.set_run_id(a.run);
  req.set_page_size(1000);
  req.set_include_remote(a.remote);
  do {
    grpc::ClientContext ctx;
    v1::ListCheckpointsResponse page;
    if (auto st = c.stub().ListCheckpoints(&ctx, req, &page); !st.ok()) return Fail(a.run, st);
    for (auto& cp : *page.mutable_checkpoints()) *all.add_checkpoints() = std::move(cp);
    for (auto& q : *page.mutable_quarantined()) *all.add_quarantined() = std::move(q);
    req.set_page_token(page.next_page_token());
  } while (!req.page_token().empty());
  if (a.json) {
    std::cout << Json(all) << "\n";
    return kExitOk;
  }
  // One column per metric name any checkpoint has, in name order, each as
  // wide as its widest value; "-" where a checkpoint lacks it.
  std::map<std::string, size_t> columns;
  for (const auto& cp : all.checkpoints()) {
    for (const auto& [name, v] : cp.metrics()) {
      size_t& w = columns[name];
      w = std::max({w, name.size(), Number(v).size()});
    }
  }
  std::string head = fmt::format("{:>10}  {:<24} {:>14}  {:<8}  {:<6}", "STEP", "TIME (UTC)",
                                 "BYTES", "UUID", "LATEST");
  for (const auto& [name, w] : columns) StrAppend(&head, "  ", fmt::format("{:>{}}", name, w));
  // WHERE (local, both, remote) when the daemon copies to an object store.
  const bool tiered =
      a.remote || std::any_of(all.checkpoints().begin(), all.checkpoints().end(),
                              [](const auto& cp) { return !cp.upload_state().empty(); });
  if (tiered) StrAppend(&head, "  WHERE ");
  // SHARED: bytes shared with the previous checkpoint (reflink), when any are.
  const bool shared = std::any_of(all.checkpoints().begin(), all.checkpoints().end(),
                                  [](const auto& cp) { return cp.shared_bytes() > 0; });
  if (shared) StrAppend(&head, fmt::format("  {:>14}", "SHARED"));
  std::cout << head << "  RETENTION\n";
  for (const auto& cp : all.checkpoints()) {
    std::string row = fmt::format("{:>10}  {:<24} {:>14}  {:<8}  {:<6}", cp.step(), cp.time_utc(),
                                  cp.size_bytes() + cp.train_size_bytes(), cp.uuid().substr(0, 8),
                                  cp.is_latest() ? "*" : "");
    for (const auto& [name, w] : columns) {
      auto it = cp.metrics().find(name);
      StrAppend(&row, "  ",
                fmt::format("{:>{}}", it == cp.metrics().end() ? "-" : Number(it->second), w));
    }
    if (tiered) StrAppend(&row, "  ", fmt::format("{:<6}", cp.location()));
    if (shared) StrAppend(&row, fmt::format("  {:>14}", cp.shared_bytes()));
    std::cout << row << "  " << (cp.retention_keeps() ? "keep: " : "delete: ")
              << (cp.pinned() ? "pinned: " + cp.pin_reason() : cp.retention_reason()) << "\n";
  }
  if (!all.quarantined().empty()) {
    std::cout << "\nQUARANTINED (damaged or not belonging to their checkpoint; never read, never "
                 "deleted by ckptd)\n";
    for (const auto& q : all.quarantined()) {
      std::cout << fmt::format("  {}  {} bytes\n    {}\n", q.file(), q.size_bytes(), q.reason());
    }
  }
  return kExitOk;
}

int Latest(Client& c, const DaemonCommandArgs& a) {
  grpc::ClientContext ctx;
  v1::GetRunRequest req;
  req.set_run_id(a.run);
  v1::RunInfo info;
  if (auto st = c.stub().GetRun(&ctx, req, &info); !st.ok()) return Fail(a.run, st);
  if (!info.has_last_step()) {
    std::fprintf(stderr, "ckptctl: %s: no committed checkpoint yet\n", a.run.c_str());
    return kExitFailed;
  }
  if (a.json) {
    std::cout << Json(info) << "\n";
  } else {
    std::cout << info.latest_file() << "\n";
  }
  return kExitOk;
}

// Reads a checkpoint as a trainer's restore would (every tensor into
// memory, digests checked) and says how fast and from where.
int RestoreCheck(Client& c, const DaemonCommandArgs& a) {
  RestoreOptions options;
  options.allow_memory = !a.no_memory;
  options.verify = !a.no_verify;
  options.agree_attempt = a.attempt;
  if (a.reads_in_flight > 0) options.reads_in_flight = a.reads_in_flight;
  if (a.chunk_mib > 0) options.chunk_bytes = static_cast<size_t>(a.chunk_mib) << 20;
  std::optional<uint64_t> step;
  if (a.restore_step >= 0) step = static_cast<uint64_t>(a.restore_step);
  auto r = Restore::OpenRun(c, a.run, step, options);
  if (!r.ok()) return Fail(a.run, r.status());
  uint64_t total = 0;
  for (const RestoreTensor& t : (*r)->tensors()) total += t.nbytes;
  // The destination is faulted in first: a trainer restores into tensors it
  // already has, so page faults are not part of a restore.
  std::vector<char> buffer(total, 1);
  std::vector<ReadTarget> targets;
  targets.reserve((*r)->tensors().size());
  uint64_t at = 0;
  for (const RestoreTensor& t : (*r)->tensors()) {
    targets.push_back({t.name, buffer.data() + at, t.nbytes});
    at += t.nbytes;
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (absl::Status st = (*r)->ReadMany(targets); !st.ok()) return Fail(a.run, st);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double mbps = seconds > 0 ? static_cast<double>(total) / seconds / 1e6 : 0;
  if (a.json) {
    nlohmann::json j = {{"run_id", a.run},
                        {"step", (*r)->step()},
                        {"source", (*r)->source()},
                        {"tier", (*r)->tier()},
                        {"tensors", targets.size()},
                        {"bytes", total},
                        {"seconds", seconds},
                        {"MBps", mbps},
                        {"verified", options.verify},
                        {"reads_in_flight", options.reads_in_flight},
                        {"chunk_bytes", options.chunk_bytes},
                        {"memory_fallbacks", (*r)->memory_fallbacks()},
                        {"memory_error", (*r)->memory_error()}};
    std::cout << j.dump() << "\n";
    return kExitOk;
  }
  std::cout << fmt::format(
      "{} step {}: {} tensors, {} bytes from {} in {:.3f} s ({:.0f} MB/s), {}\n", a.run,
      (*r)->step(), targets.size(), total, (*r)->source(), seconds, mbps,
      options.verify ? "every digest checked" : "digests not checked");
  if ((*r)->memory_fallbacks() > 0) {
    std::cout << fmt::format("  {} tensors read from disk: the in-memory copy had changed\n",
                             (*r)->memory_fallbacks());
  }
  if (!(*r)->memory_error().empty()) {
    std::cout << "  in-memory copy not used: " << (*r)->memory_error() << "\n";
  }
  return kExitOk;
}

int Show(Client& c, const DaemonCommandArgs& a) {
  grpc::ClientContext ctx;
  v1::GetCheckpointRequest req;
  req.set_run_id(a.run);
  req.set_step(a.step);
  v1::CheckpointDetail d;
  if (auto st = c.stub().GetCheckpoint(&ctx, req, &d); !st.ok()) return Fail(a.run, st);
  if (a.json) {
    std::cout << Json(d) << "\n";
    return kExitOk;
  }
  const auto& i = d.info();
  std::cout << fmt::format("step {} of run {}{}\n  file    {} ({} bytes)\n", i.step(), a.run,
                           i.is_latest() ? " (latest)" : "", i.file(), i.size_bytes());
  if (!i.train_file().empty()) {
    std::cout << fmt::format("  train   {} ({} bytes)\n", i.train_file(), i.train_size_bytes());
  }
  if (i.shared_bytes() > 0) {
    std::cout << fmt::format("  shared  {} bytes with the previous checkpoint (reflink)\n",
                             i.shared_bytes());
  }
  std::cout << fmt::format("  uuid    {}\n  digest  {}\n  time    {}\n  metrics {}\n", i.uuid(),
                           i.content_digest(), i.time_utc(), Metrics(i.metrics()));
  auto md = api::FromProto(d.metadata(), "metadata", /*allow_reserved=*/true);
  if (!md.ok()) return Fail(a.run, md.status());
  std::cout << "\nmetadata:\n" << MetadataToTable(*md, kTableArrayItems);
  size_t width = 6;
  for (const auto* list : {&d.tensors(), &d.train_tensors()}) {
    for (const auto& t : *list) width = std::max(width, t.tensor().name().size());
  }
  std::cout << fmt::format("\n{:>5}  {:<{}}  {:<7} {:<28} {:>14}  {}\n", "#", "tensor", width,
                           "type", "ne", "bytes", "file");
  size_t n = 0;
  for (const auto* list : {&d.tensors(), &d.train_tensors()}) {
    for (const auto& t : *list) {
      const auto type = gguf::LookupTensorType(static_cast<uint32_t>(t.tensor().type()));
      std::cout << fmt::format("{:>5}  {:<{}}  {:<7} {:<28} {:>14}  {}\n", ++n, t.tensor().name(),
                               width, type ? std::string(type->name) : "?",
                               fmt::format("[{}]", fmt::join(t.tensor().ne(), ", ")), t.nbytes(),
                               list == &d.tensors() ? "model" : "train");
    }
  }
  return kExitOk;
}

// Sends an existing GGUF's metadata and tensors through OpenRun + Save.
int Import(Client& c, const DaemonCommandArgs& a) {
  auto mapped = env::Env::Default()->MapForRead(a.file);
  if (!mapped.ok()) return Fail(a.file, mapped.status());
  auto header = gguf::ReadHeader(**mapped);
  if (!header.ok()) return Fail(a.file, header.status());
  std::map<std::string, double> metrics;
  for (const std::string& kv : a.metrics) {
    size_t eq = kv.rfind('=');
    double v = 0;
    if (eq == std::string::npos || !absl::SimpleAtod(kv.substr(eq + 1), &v)) {
      std::fprintf(stderr, "ckptctl: --metric '%s' is not NAME=NUMBER\n", kv.c_str());
      return kExitUsage;
    }
    metrics[kv.substr(0, eq)] = v;
  }
  // Whether a trainer is using the run: then the import leaves it open;
  // else the run is closed afterwards (nothing is training it).
  bool trainer_has_it = false;
  {
    grpc::ClientContext ctx;
    v1::GetRunRequest get;
    get.set_run_id(a.run);
    v1::RunInfo info;
    const grpc::Status st = c.stub().GetRun(&ctx, get, &info);
    if (!st.ok() && st.error_code() != grpc::StatusCode::NOT_FOUND) return Fail(a.run, st);
    trainer_has_it = st.ok() && info.state() == v1::RUN_STATE_OPEN;
  }
  v1::OpenRunRequest open;
  open.set_run_id(a.run);
  for (const auto& [key, value] : header->metadata.entries()) {
    if (key.starts_with("ckpt.") || key == "general.uuid" || key == "general.alignment") continue;
    v1::MetadataEntry* e = open.add_model_metadata();
    e->set_key(key);
    *e->mutable_value() = api::ToProto(value);
  }
  open.mutable_provenance()->mutable_extra()->insert({"imported_from", a.file});
  open.set_base_model_uuid(a.base_model);
  for (const std::string& e : a.exports) {
    v1::ExportRequest* req = open.add_exports();
    if (!e.ends_with(".toml")) {
      req->set_profile(e);
      continue;
    }
    auto text = env::ReadWholeFile(env::Env::Default(), e);
    auto spec = text.ok() ? exports::ParseProfileToml(*text, e) : text.status();
    if (!spec.ok()) return Fail(e, spec.status());
    *req->mutable_definition() = api::ToProto(*spec);
  }
  auto run = c.OpenRun(open);
  if (!run.ok()) return Fail(a.run, run.status());
  std::vector<TensorView> views;
  const char* base = (*mapped)->bytes().data() + header->data_offset;
  for (const gguf::TensorInfo& t : header->tensors) {
    auto type = static_cast<v1::TensorType>(t.type);
    if (!v1::TensorType_IsValid(type)) {
      std::fprintf(
          stderr,
          "ckptctl: %s: tensor '%s' is %s; ckptd imports F32, F16, BF16, F64, "
          "I8-I64 and Q8_0\n",
          a.file.c_str(), t.name.c_str(),
          std::string(gguf::LookupTensorType(static_cast<uint32_t>(t.type))->name).c_str());
      return kExitFailed;
    }
    views.push_back({t.name, type, t.ne, base + t.offset, t.nbytes});
  }
  auto saved = (*run)->Save(a.step, views, metrics, {.force = true, .overwrite = a.overwrite});
  if (!saved.ok() && !a.overwrite &&
      (absl::IsAlreadyExists(saved.status()) || absl::IsFailedPrecondition(saved.status()))) {
    return Fail(a.run, absl::Status(saved.status().code(),
                                    StrCat(saved.status().message(),
                                           " (ckptctl import --overwrite replaces it)")));
  }
  if (!saved.ok()) return Fail(a.run, saved.status());
  if (!trainer_has_it) {
    if (auto closed = (*run)->Close(); !closed.ok()) return Fail(a.run, closed.status());
  }
  if (a.json) {
    std::cout << Json(*saved) << "\n";
  } else {
    std::cout << fmt::format("imported {} as step {} of run {}: {} ({} bytes, uuid {}); run {}\n",
                             a.file, a.step, a.run, saved->checkpoint().file(),
                             saved->checkpoint().size_bytes(), saved->checkpoint().uuid(),
                             trainer_has_it ? "left open (a trainer has it)" : "finished");
  }
  return kExitOk;
}

int Pin(Client& c, const DaemonCommandArgs& a, bool pin) {
  grpc::ClientContext ctx;
  v1::CheckpointInfo info;
  grpc::Status st;
  if (pin) {
    v1::PinRequest req;
    req.set_run_id(a.run);
    req.set_step(a.step);
    req.set_reason(a.reason);
    st = c.stub().Pin(&ctx, req, &info);
  } else {
    v1::UnpinRequest req;
    req.set_run_id(a.run);
    req.set_step(a.step);
    st = c.stub().Unpin(&ctx, req, &info);
  }
  if (!st.ok()) return Fail(a.run, st);
  if (a.json) {
    std::cout << Json(info) << "\n";
  } else {
    std::cout << fmt::format("{} step {} of run {}{}\n", pin ? "pinned" : "unpinned", a.step, a.run,
                             pin ? ": " + a.reason : "");
  }
  return kExitOk;
}

int RetentionCommand(Client& c, const DaemonCommandArgs& a, bool apply) {
  grpc::ClientContext ctx;
  v1::RetentionRequest req;
  req.set_run_id(a.run);
  req.set_remote(a.remote);
  v1::RetentionPlan plan;
  grpc::Status st =
      apply ? c.stub().ApplyRetention(&ctx, req, &plan) : c.stub().PlanRetention(&ctx, req, &plan);
  if (!st.ok()) return Fail(a.run, st);
  if (a.json) {
    std::cout << Json(plan) << "\n";
    return kExitOk;
  }
  std::cout << fmt::format("run {}: {}\n", a.run, plan.policy());
  if (!plan.paused().empty()) std::cout << "PAUSED: " << plan.paused() << "\n";
  std::set<uint64_t> deleted(plan.deleted().begin(), plan.deleted().end());
  for (const auto& d : plan.decisions()) {
    const char* verdict = deleted.count(d.step()) ? "deleted" : d.keep() ? "keep" : "delete";
    std::cout << fmt::format("{:>10}  {:<7}  {:>14}  {}\n", d.step(), verdict, d.bytes(),
                             d.reason());
  }
  if (apply) std::cout << fmt::format("{} deleted\n", plan.deleted_size());
  return kExitOk;
}

}  // namespace

std::vector<DaemonCommand> AddDaemonCommands(CLI::App* app, DaemonCommandArgs* a) {
  std::vector<DaemonCommand> table;
  // How to reach the daemon: options of ckptctl itself, so they go before
  // the subcommand (`ckptctl --socket X ls RUN`) or after it (subcommands
  // fall through to their parent for options they do not have).
  app->add_option("--socket", a->socket,
                  "Daemon address: unix:PATH, PATH or HOST:PORT "
                  "(default $CKPTD_SOCKET or unix:./ckpt-runs/ckptd.sock)");
  app->add_option("--tls-ca", a->tls_ca, "TLS: PEM CA that signed the daemon's certificate");
  app->add_option("--tls-cert", a->tls_cert, "TLS: this client's PEM certificate (mTLS)");
  app->add_option("--tls-key", a->tls_key, "TLS: this client's PEM private key (mTLS)");
  app->add_option("--token-file", a->token_file, "File holding a bearer token (needs TLS)");
  // Each subcommand, its options, and what runs when it was chosen.
  auto add = [&](CLI::App* parent, const char* name, const char* help,
                 std::function<int(Client&, const DaemonCommandArgs&)> run) {
    CLI::App* sub = parent->add_subcommand(name, help);
    sub->fallthrough();
    sub->add_flag("--json", a->json, "Print the API's JSON");
    table.push_back({sub, std::move(run)});
    return sub;
  };
  add(app, "runs",
      "List the runs the daemon knows. STATE: open = a trainer is using it (a call within "
      "server.unload_idle_runs_seconds); idle = nobody is (not opened since the daemon started, "
      "or its trainer went away without closing it); finished = closed (CloseRun, or imported "
      "with ckptctl import)",
      Runs);
  auto* ls = add(app, "ls", "List a run's checkpoints", Ls);
  ls->add_option("RUN", a->run, "The run (its id, as OpenRun named it)")->required();
  ls->add_flag("--remote", a->remote,
               "Also list the steps only the object store holds (WHERE: local, both, remote)");
  add(app, "latest", "Print the path of a run's newest checkpoint", Latest)
      ->add_option("RUN", a->run, "The run")
      ->required();
  auto* show = add(app, "show", "A checkpoint's metadata and tensors", Show);
  show->add_option("RUN", a->run, "The run")->required();
  show->add_option("STEP", a->step, "The checkpoint's step (ckptctl ls RUN lists them)")
      ->required();
  auto* import = add(app, "import", "Bring an existing GGUF file under ckptd as a step", Import);
  import->add_option("RUN", a->run, "The run to record it in")->required();
  import->add_option("FILE", a->file, "The GGUF file (any writer's)")->required();
  import->add_option("--step", a->step, "Step to record it as")->required();
  import->add_option("--metric", a->metrics, "NAME=VALUE (repeatable)");
  import->add_option("--base-model", a->base_model, "uuid of the model this run started from");
  import->add_option("--export", a->exports,
                     "Export profile (built-in name or .toml) to write with it (repeatable)");
  import->add_flag("--overwrite", a->overwrite,
                   "Replace the step if the run has it (or roll back to it)");
  auto* pin = add(app, "pin", "Keep a checkpoint whatever retention says",
                  [](Client& c, const DaemonCommandArgs& args) { return Pin(c, args, true); });
  pin->add_option("RUN", a->run, "The run")->required();
  pin->add_option("STEP", a->step, "The checkpoint's step")->required();
  pin->add_option("--reason", a->reason, "Why it must stay (shown in listings)")->required();
  auto* unpin = add(app, "unpin", "Let retention decide about a checkpoint again",
                    [](Client& c, const DaemonCommandArgs& args) { return Pin(c, args, false); });
  unpin->add_option("RUN", a->run, "The run")->required();
  unpin->add_option("STEP", a->step, "The checkpoint's step")->required();
  auto* check =
      add(app, "restore-check",
          "Read a checkpoint as a restore would; print where from and how fast", RestoreCheck);
  check->add_option("RUN", a->run, "The run")->required();
  check->add_option("STEP", a->restore_step, "Step (default: latest)");
  check->add_flag("--no-memory", a->no_memory,
                  "Read from disk even if the daemon holds it in memory");
  check->add_flag("--no-verify", a->no_verify, "Skip the digest checks");
  check
      ->add_option("--reads-in-flight", a->reads_in_flight,
                   "Reads from disk at once (default: the C++ client's, 4)")
      ->check(CLI::Range(1, 64));
  check->add_option("--chunk-mib", a->chunk_mib, "MiB per read (default: the C++ client's, 8)")
      ->check(CLI::Range(1, 256));
  check->add_option("--attempt", a->attempt,
                    "A multi-rank run's restart id: agree with the other ranks on the step, as "
                    "their restores do (default $CKPTD_RESTORE_ATTEMPT)");
  add(app, "lineage",
      "Where files came from: base model, runs, checkpoints, exports (UUID or RUN; all if none)",
      LineageCommand)
      ->add_option("UUID_OR_RUN", a->run, "A file's general.uuid, or a run; none: everything");
  auto* retention = app->add_subcommand("retention", "Show or apply a run's retention plan");
  retention->fallthrough();
  retention->require_subcommand(1);
  for (const bool apply : {false, true}) {
    auto* sub =
        add(retention, apply ? "apply" : "plan",
            apply ? "Apply retention now" : "Each checkpoint's keep/delete and why (no change)",
            [apply](Client& c, const DaemonCommandArgs& args) {
              return RetentionCommand(c, args, apply);
            });
    sub->add_option("RUN", a->run, "The run")->required();
    sub->add_flag("--remote", a->remote,
                  "The run's copies in the object store ([tier.s3]) instead of local checkpoints");
  }
  return table;
}

absl::StatusOr<std::unique_ptr<Client>> ConnectDaemon(const DaemonCommandArgs& args) {
  ClientOptions options{
      .tls_ca_file = args.tls_ca, .tls_cert_file = args.tls_cert, .tls_key_file = args.tls_key};
  if (!args.token_file.empty()) {
    std::ifstream in(args.token_file);
    if (!(in >> options.token)) {
      return absl::NotFoundError(
          StrCat("--token-file: cannot read a token from ", args.token_file));
    }
    options.tls = true;
  }
  const std::string target = DaemonSocket(args);
  auto client = Client::Connect(target, std::move(options));
  if (!client.ok()) return client;
  // A daemon whose Unix socket exists gets a few seconds to accept, as
  // OpenRun gives it, so one slow accept is not "cannot reach"; no socket
  // (no daemon) or a TCP target: at once.
  const double now =
      std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  (void)(*client)->WaitForDaemon(now + 5);
  return client;
}

std::string DaemonSocket(const DaemonCommandArgs& args) {
  return args.socket.empty() ? DefaultSocket() : args.socket;
}

std::optional<int> RunDaemonCommand(const std::vector<DaemonCommand>& table,
                                    const DaemonCommandArgs& args) {
  for (const DaemonCommand& command : table) {
    if (!command.sub->parsed()) continue;
    auto client = ConnectDaemon(args);
    if (!client.ok()) return Fail("connect", client.status());
    return command.run(**client, args);
  }
  return std::nullopt;
}

}  // namespace ckptd::cli
