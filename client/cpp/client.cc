// ckptd C++ client.
#include "ckptd/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/rpc/save_frames.h"

namespace ckptd {
namespace {

constexpr char kSaveMethod[] = "/ckptd.v1.Checkpointd/Save";
constexpr char kCloseRunMethod[] = "/ckptd.v1.Checkpointd/CloseRun";

double SteadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A steady-clock deadline as gRPC's (system clock) deadline.
std::chrono::system_clock::time_point GrpcDeadline(double deadline) {
  return std::chrono::system_clock::now() + std::chrono::microseconds(static_cast<int64_t>(
                                                std::max(0.0, deadline - SteadyNow()) * 1e6));
}

// Whether a committed checkpoint holds the tensors a resent save carries
// (names, types, shapes in order, model and train groups).
bool SameTensors(const v1::CheckpointDetail& d, const std::vector<TensorView>& tensors) {
  std::vector<const v1::TensorDescriptor*> stored;
  for (const auto& t : d.tensors()) stored.push_back(&t.tensor());
  for (const auto& t : d.train_tensors()) stored.push_back(&t.tensor());
  if (stored.size() != tensors.size()) return false;
  for (const TensorView& t : tensors) {
    auto it = std::find_if(stored.begin(), stored.end(),
                           [&](const v1::TensorDescriptor* s) { return s->name() == t.name; });
    if (it == stored.end() || (*it)->type() != t.type ||
        !std::equal((*it)->ne().begin(), (*it)->ne().end(), t.ne.begin(), t.ne.end())) {
      return false;
    }
  }
  return true;
}

v1::SaveHeader Header(const std::string& run_id, uint64_t step,
                      const std::vector<TensorView>& tensors,
                      const std::map<std::string, double>& metrics,
                      const SaveOptions& options = {}) {
  v1::SaveHeader h;
  h.set_force(options.force);
  h.set_overwrite(options.overwrite);
  for (const auto& e : options.train_metadata) *h.add_train_metadata() = e;
  h.set_run_id(run_id);
  h.set_step(step);
  for (const auto& [k, v] : metrics) (*h.mutable_metrics())[k] = v;
  for (const TensorView& t : tensors) {
    v1::TensorDescriptor* d = h.add_tensors();
    d->set_name(t.name);
    d->set_type(t.type);
    for (uint64_t n : t.ne) d->add_ne(n);
    d->set_group(t.group);
  }
  return h;
}

}  // namespace

absl::Status FromGrpc(const grpc::Status& st) {
  if (st.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
}

template <typename Writer>
bool StreamTensors(Writer* writer, const v1::SaveHeader& header,
                   const std::vector<TensorView>& tensors, size_t chunk_bytes) {
  v1::SaveRequest msg;
  *msg.mutable_header() = header;
  if (!writer->Write(msg)) return false;
  v1::SaveRequest data;
  for (const TensorView& t : tensors) {
    const char* p = static_cast<const char*>(t.data);
    for (size_t at = 0; at < t.bytes; at += chunk_bytes) {
      data.set_data(p + at, std::min(chunk_bytes, t.bytes - at));
      if (!writer->Write(data)) return false;
    }
  }
  return writer->WritesDone();
}

template bool StreamTensors(grpc::ClientWriter<v1::SaveRequest>*, const v1::SaveHeader&,
                            const std::vector<TensorView>&, size_t);

namespace {

// The caller's memory lent to gRPC as slices, counted until gRPC returns
// them: it may hold one after the call has ended, in a write still queued on
// the connection (a daemon that answered early, with an error, while data
// was in flight).
class LentMemory {
 public:
  grpc::Slice Lend(const char* p, size_t n) {
    {
      absl::MutexLock lock(&mu_);
      ++lent_;
    }
    return grpc::Slice(const_cast<char*>(p), n, &LentMemory::Return, this);
  }
  // Whether every slice came back within `timeout`.
  bool AllReturned(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return lent_ == 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&none), timeout);
  }

 private:
  static void Return(void* self) {
    auto* m = static_cast<LentMemory*>(self);
    absl::MutexLock lock(&m->mu_);
    --m->lent_;
  }
  absl::Mutex mu_;
  int64_t lent_ ABSL_GUARDED_BY(mu_) = 0;
};

constexpr absl::Duration kReturnTimeout = absl::Seconds(60);

// One Save or CloseRun call of raw messages (`method`: its full name): the
// header serialized, then each chunk as the data field's framing
// (rpc::EncodeDataPrefix) and a slice of the caller's memory, sent without a
// copy. Returns once gRPC holds none of that memory, so the caller may free
// or change its tensors; a connection that keeps it past kReturnTimeout
// fails the call (UNAVAILABLE) and the lender is left to gRPC.
template <typename Response>
grpc::Status RawSaveCall(grpc::Channel* channel, const char* method, const v1::SaveHeader& header,
                         const std::vector<TensorView>& tensors, size_t chunk_bytes,
                         Response* resp) {
  auto lent = std::make_unique<LentMemory>();
  grpc::Status st;
  {
    grpc::ClientContext ctx;
    const grpc::internal::RpcMethod m(method, grpc::internal::RpcMethod::CLIENT_STREAMING);
    std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel, m, &ctx, resp));
    auto send = [&]() {
      v1::SaveRequest first;
      *first.mutable_header() = header;
      grpc::ByteBuffer buf;
      bool own = false;
      if (!grpc::SerializationTraits<v1::SaveRequest>::Serialize(first, &buf, &own).ok() ||
          !writer->Write(buf)) {
        return false;
      }
      for (const TensorView& t : tensors) {
        const char* p = static_cast<const char*>(t.data);
        for (size_t at = 0; at < t.bytes; at += chunk_bytes) {
          const size_t n = std::min(chunk_bytes, t.bytes - at);
          grpc::Slice slices[2] = {grpc::Slice(rpc::EncodeDataPrefix(n)), lent->Lend(p + at, n)};
          if (!writer->Write(grpc::ByteBuffer(slices, 2))) return false;
        }
      }
      return writer->WritesDone();
    };
    send();
    st = writer->Finish();
  }
  if (!lent->AllReturned(kReturnTimeout)) {
    (void)lent.release();  // gRPC will still call back into it
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the connection to the daemon still held the tensors' bytes 60 s after "
                        "the save ended; the save's outcome is unknown: check the daemon");
  }
  return st;
}

}  // namespace

Client::Client(std::string target, ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : target_(std::move(target)),
      options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::Checkpointd::NewStub(channel_)) {}

namespace {

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientOptions& o) {
  const bool tls = o.tls || !o.tls_ca_file.empty() || !o.tls_cert_file.empty();
  if (!tls) {
    if (!o.token.empty()) {
      return absl::InvalidArgumentError(
          "a bearer token is sent only over TLS: set tls (and tls_ca_file) too");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file and tls_key_file go together");
  }
  auto read = [](const std::string& what, const std::string& path) -> absl::StatusOr<std::string> {
    std::ifstream in(path, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.empty()) return absl::NotFoundError(what + ": " + path + " is missing or empty");
    return text;
  };
  grpc::SslCredentialsOptions ssl;
  struct Pem {
    const char* what;
    const std::string& path;
    std::string* out;
  };
  for (const Pem& pem : {Pem{"tls_ca_file", o.tls_ca_file, &ssl.pem_root_certs},
                         Pem{"tls_cert_file", o.tls_cert_file, &ssl.pem_cert_chain},
                         Pem{"tls_key_file", o.tls_key_file, &ssl.pem_private_key}}) {
    if (pem.path.empty()) continue;
    auto text = read(pem.what, pem.path);
    if (!text.ok()) return text.status();
    // gRPC takes any bytes here and fails later, at connect, as "cannot
    // reach the daemon": say now which file is not what it should be.
    const bool key = pem.out == &ssl.pem_private_key;
    const std::string_view want = key ? "PRIVATE KEY-----" : "-----BEGIN CERTIFICATE-----";
    if (text->find(want) == std::string::npos) {
      return absl::InvalidArgumentError(std::string(pem.what) + ": " + pem.path + " holds no PEM " +
                                        (key ? "private key" : "certificate") + " (" +
                                        std::string(want) + ")");
    }
    *pem.out = std::move(*text);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(ssl);
  if (!o.token.empty()) {
    credentials =
        grpc::CompositeChannelCredentials(credentials, grpc::AccessTokenCredentials(o.token));
  }
  return credentials;
}

}  // namespace

bool Client::WaitForConnected(double deadline) {
  return channel_->WaitForConnected(GrpcDeadline(deadline));
}

bool Client::DaemonSocketExists() const {
  std::error_code ec;
  return target_.starts_with("unix:") && std::filesystem::exists(target_.substr(5), ec);
}

bool Client::WaitForDaemon(double deadline) {
  return DaemonSocketExists() && WaitForConnected(deadline);
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& target,
                                                        ClientOptions options) {
  std::string uri = target;
  if (!target.starts_with("unix:") && target.find(':') == std::string::npos) uri = "unix:" + target;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // The daemon is a local sidecar: after a restart, reconnect within
  // ~250 ms rather than gRPC's default one-second-and-growing backoff.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 250);
  auto credentials = ChannelCredentials(options);
  if (!credentials.ok()) return credentials.status();
  auto channel = grpc::CreateCustomChannel(uri, *credentials, args);
  return std::unique_ptr<Client>(new Client(uri, std::move(options), std::move(channel)));
}

absl::StatusOr<std::unique_ptr<Run>> Client::OpenRun(const v1::OpenRunRequest& request) {
  // A daemon whose Unix socket exists (WaitForDaemon) is waited for, up to
  // reconnect_timeout_s, as a run's calls wait. No socket (no daemon) or a
  // TCP target fails at once.
  const double deadline = SteadyNow() + options_.reconnect_timeout_s;
  std::optional<bool> daemon_there;
  while (true) {
    grpc::ClientContext ctx;
    v1::OpenRunResponse resp;
    grpc::Status st = stub_->OpenRun(&ctx, request, &resp);
    if (st.ok()) return std::make_unique<Run>(this, std::move(resp), request);
    // Looked at once: a daemon restarting cleanly removes its socket a moment.
    if (!daemon_there) daemon_there = DaemonSocketExists();
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE || !*daemon_there ||
        SteadyNow() >= deadline) {
      return FromGrpc(st);
    }
    WaitForConnected(std::min(deadline, SteadyNow() + 1));  // gRPC reconnects meanwhile
  }
}

Run::Run(Client* client, v1::OpenRunResponse opened, v1::OpenRunRequest request)
    : client_(client), opened_(std::move(opened)), request_(std::move(request)) {}

bool Run::IsReconnectable(const absl::Status& st) {
  const std::string_view msg(st.message().data(), st.message().size());
  switch (st.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:  // this client cancels nothing: the daemon went away
      return true;
    case absl::StatusCode::kNotFound:  // a daemon that lost the run (another root, no settings)
      return msg.find("is not known to this daemon") != std::string_view::npos;
    case absl::StatusCode::kFailedPrecondition:
      return msg.find("has not been opened since the daemon started") != std::string_view::npos;
    default:
      return false;
  }
}

absl::Status Run::Reopen(const absl::Status& cause, double deadline) {
  absl::Status last = cause;
  while (true) {
    if (SteadyNow() >= deadline) {
      return absl::UnavailableError(
          "run '" + id() + "': the daemon at " + client_->target() + " has not come back within " +
          std::to_string(static_cast<int>(client_->options().reconnect_timeout_s)) +
          " s (reconnect_timeout_s); last error: " + std::string(last.message()));
    }
    client_->WaitForConnected(std::min(deadline, SteadyNow() + 1));
    if (request_.run_id().empty()) {  // opened elsewhere: the daemon restores its settings
      if (client_->WaitForConnected(SteadyNow())) {
        ++generation_;
        return absl::OkStatus();
      }
      continue;
    }
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(GrpcDeadline(std::min(deadline, SteadyNow() + 1)));
    v1::OpenRunResponse resp;
    grpc::Status st = client_->stub().OpenRun(&ctx, request_, &resp);
    if (st.ok()) {
      opened_ = std::move(resp);
      ++generation_;
      return absl::OkStatus();
    }
    last = FromGrpc(st);
    if (st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED && !IsReconnectable(last)) {
      return last;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

template <typename F>
auto Run::WithReconnect(F call) -> decltype(call(0)) {
  double deadline = 0;
  for (int attempt = 0;; ++attempt) {
    auto r = call(attempt);
    if (r.ok() || !IsReconnectable(r.status()) || client_->options().reconnect_timeout_s <= 0) {
      return r;
    }
    if (deadline == 0) deadline = SteadyNow() + client_->options().reconnect_timeout_s;
    if (absl::Status st = Reopen(r.status(), deadline); !st.ok()) return st;
  }
}

absl::StatusOr<v1::ShouldSaveResponse> Run::ShouldSave(uint64_t step) {
  return WithReconnect([&](int) -> absl::StatusOr<v1::ShouldSaveResponse> {
    grpc::ClientContext ctx;
    v1::ShouldSaveRequest req;
    req.set_run_id(id());
    req.set_step(step);
    v1::ShouldSaveResponse resp;
    grpc::Status st = client_->stub().ShouldSave(&ctx, req, &resp);
    if (!st.ok()) return FromGrpc(st);
    return resp;
  });
}

absl::StatusOr<v1::SaveResponse> Run::Save(uint64_t step, const std::vector<TensorView>& tensors,
                                           const std::map<std::string, double>& metrics,
                                           const SaveOptions& options) {
  return WithReconnect([&](int attempt) -> absl::StatusOr<v1::SaveResponse> {
    if (!options.force) {
      auto due = ShouldSave(step);
      if (!due.ok()) return due.status();
      if (!due->due()) {
        v1::SaveResponse skipped;
        skipped.set_result(v1::SaveResponse::RESULT_SKIPPED);
        skipped.set_reason(due->reason());
        return skipped;
      }
    }
    v1::SaveHeader h = Header(id(), step, tensors, metrics, options);
    v1::SaveResponse resp;
    grpc::Status st =
        RawSaveCall(client_->channel(), kSaveMethod, h, tensors, options.chunk_bytes, &resp);
    if (st.ok()) return resp;
    if (attempt > 0 && st.error_code() == grpc::StatusCode::ALREADY_EXISTS && !options.overwrite) {
      // Sent again after a lost answer: the daemon had committed it.
      grpc::ClientContext dctx;
      v1::GetCheckpointRequest dreq;
      dreq.set_run_id(id());
      dreq.set_step(step);
      v1::CheckpointDetail detail;
      if (client_->stub().GetCheckpoint(&dctx, dreq, &detail).ok() &&
          SameTensors(detail, tensors)) {
        v1::SaveResponse committed;
        committed.set_result(detail.info().pending() ? v1::SaveResponse::RESULT_STAGED
                                                     : v1::SaveResponse::RESULT_COMMITTED);
        committed.set_reason(
            detail.info().pending()
                ? "staged before the connection was lost (found when sent again)"
                : "committed before the connection was lost (found when sent again)");
        *committed.mutable_checkpoint() = detail.info();
        return committed;
      }
    }
    return FromGrpc(st);
  });
}

absl::StatusOr<v1::SaveSharedResponse> Run::SavePointers(
    uint64_t step, const std::vector<TensorView>& tensors, const PointerAttachment& attachment,
    const std::map<std::string, double>& metrics, const SaveOptions& options, bool final_snapshot) {
  v1::SavePointersRequest req;
  *req.mutable_header() = Header(id(), step, tensors, metrics, options);
  req.set_attachment_id(attachment.id);
  req.set_attachment_key(attachment.key);
  for (const TensorView& t : tensors) req.add_addresses(reinterpret_cast<uintptr_t>(t.data));
  req.set_final_snapshot(final_snapshot);
  grpc::ClientContext ctx;
  v1::SaveSharedResponse resp;
  grpc::Status st = client_->stub().SavePointers(&ctx, req, &resp);
  if (!st.ok()) return FromGrpc(st);
  return resp;
}

absl::StatusOr<v1::SaveSharedResponse> Run::SaveShared(
    uint64_t step, const std::vector<TensorView>& tensors,
    const std::vector<v1::TensorLocation>& locations, const std::map<std::string, double>& metrics,
    const SaveOptions& options, double trainer_stall_s, const v1::TensorLocation* progress,
    bool final_snapshot) {
  v1::SaveSharedRequest req;
  *req.mutable_header() = Header(id(), step, tensors, metrics, options);
  for (const auto& loc : locations) *req.add_locations() = loc;
  req.set_trainer_stall_s(trainer_stall_s);
  if (progress != nullptr) *req.mutable_progress() = *progress;
  req.set_final_snapshot(final_snapshot);
  grpc::ClientContext ctx;
  v1::SaveSharedResponse resp;
  grpc::Status st = client_->stub().SaveShared(&ctx, req, &resp);
  if (!st.ok()) return FromGrpc(st);
  return resp;
}

absl::StatusOr<v1::WaitSavedResponse> Run::WaitSaved(uint64_t save_id, double timeout_s,
                                                     double trainer_stall_s,
                                                     std::optional<uint64_t> step) {
  return WithReconnect([&](int) -> absl::StatusOr<v1::WaitSavedResponse> {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000) + 10000));
    v1::WaitSavedRequest req;
    req.set_run_id(id());
    req.set_save_id(save_id);
    req.set_timeout_seconds(timeout_s);
    req.set_trainer_stall_s(trainer_stall_s);
    if (step) req.set_step(*step);
    v1::WaitSavedResponse resp;
    grpc::Status st = client_->stub().WaitSaved(&ctx, req, &resp);
    if (!st.ok()) return FromGrpc(st);
    return resp;
  });
}

absl::StatusOr<v1::CloseRunResponse> Run::Close(uint64_t step,
                                                const std::vector<TensorView>& tensors,
                                                const std::map<std::string, double>& metrics) {
  return WithReconnect([&](int) -> absl::StatusOr<v1::CloseRunResponse> {
    v1::CloseRunResponse resp;
    grpc::Status st = RawSaveCall(client_->channel(), kCloseRunMethod,
                                  Header(id(), step, tensors, metrics), tensors, 4 << 20, &resp);
    if (!st.ok()) return FromGrpc(st);
    return resp;
  });
}

absl::StatusOr<std::optional<std::pair<uint64_t, std::string>>> Run::Latest() {
  using Answer = std::optional<std::pair<uint64_t, std::string>>;
  return WithReconnect([&](int) -> absl::StatusOr<Answer> {
    grpc::ClientContext ctx;
    v1::GetRunRequest req;
    req.set_run_id(id());
    v1::RunInfo info;
    grpc::Status st = client_->stub().GetRun(&ctx, req, &info);
    if (!st.ok()) return FromGrpc(st);
    if (!info.has_last_step()) return Answer();
    return Answer(std::pair(info.last_step(), info.latest_file()));
  });
}

}  // namespace ckptd
