// Restore: header checks at open, then a read pipeline per call: the
// requested tensors are cut into pieces (aligned file ranges of up to
// chunk_bytes, or slices of the in-memory copy), `reads_in_flight` workers
// fetch pieces into caller memory, and the calling thread hashes each
// tensor's bytes in order as the pieces covering them land, so hashing
// overlaps the reads.
#include "ckptd/restore.h"

#include <fmt/ranges.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "ckptd/arena.h"
#include "ckptd/client.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/gguf/digest.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/reader.h"
#include "daemon/policy/restore_agreement.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/file_names.h"

namespace ckptd {

// A read-only mapping of the daemon's in-memory copy of a checkpoint.
struct MemoryMap {
  const char* base = nullptr;
  size_t size = 0;
  MemoryMap(const char* b, size_t n) : base(b), size(n) {}
  ~MemoryMap() { ::munmap(const_cast<char*>(base), size); }
  MemoryMap(const MemoryMap&) = delete;
  MemoryMap& operator=(const MemoryMap&) = delete;
};

// One GGUF file of the checkpoint: its header, its stored digests and where
// its tensor bytes come from (the file, or a read-only mapping of the
// daemon's in-memory copy with each tensor's offset in it).
class Restore::File {
 public:
  std::string path;
  gguf::GgufFile header;
  std::vector<gguf::Digest128> digests;  // empty when the file stores none
  std::string content_digest;            // ckpt.content_digest, "" when none
  std::unique_ptr<env::RandomAccessFile> disk;
  // Hot restore: the daemon's in-memory copy (shared by both files) and
  // where each of this file's tensors lies in it.
  std::shared_ptr<const MemoryMap> memory;
  std::vector<uint64_t> memory_offsets;  // per tensor

  static absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path, bool direct) {
    auto f = std::make_unique<File>();
    f->path = path;
    env::Env* e = env::Env::Default();
    CKPTD_ASSIGN_OR_RETURN(f->disk, direct ? e->OpenForDirectRead(path) : e->OpenForRead(path));
    // The header is read with a buffered descriptor: it is small and
    // unaligned.
    CKPTD_ASSIGN_OR_RETURN(auto header_src, e->OpenForRead(path));
    CKPTD_ASSIGN_OR_RETURN(f->header, gguf::ReadHeader(*header_src));
    CKPTD_TRY(f->LoadDigests());
    return f;
  }

 private:
  // Parses ckpt.tensor_digests and checks that the tensor table (names,
  // types, shapes) and those digests give the stored content digest, so a
  // damaged table is caught before any data is read.
  absl::Status LoadDigests() {
    const gguf::Value* cd = header.metadata.Find(gguf::kKeyContentDigest);
    const std::string* cd_str = cd ? cd->get_if<std::string>() : nullptr;
    if (cd_str != nullptr) content_digest = *cd_str;
    auto stored = gguf::StoredTensorDigests(header);
    if (!stored.ok()) return absl::DataLossError(StrCat(path, ": ", stored.status().message()));
    if (stored->empty()) return absl::OkStatus();
    digests = std::move(*stored);
    gguf::ContentDigestBuilder builder;
    for (size_t i = 0; i < digests.size(); ++i) {
      const gguf::TensorInfo& t = header.tensors[i];
      builder.AddTensor(t.name, t.type, t.ne, t.nbytes, digests[i]);
    }
    if (cd_str != nullptr && gguf::ContentDigestString(builder.Finish()) != *cd_str) {
      return absl::DataLossError(StrCat(path,
                                        ": the tensor table does not match the stored content "
                                        "digest ",
                                        *cd_str, " (names, types or shapes were changed)"));
    }
    return absl::OkStatus();
  }
};

namespace {

constexpr size_t kMinAlignment = 4096;  // bounce buffers: page aligned

// Coalesce tensors closer than this into one sequential read.
constexpr uint64_t kMaxGap = 1 << 20;

struct Want {
  size_t file = 0;
  size_t index = 0;    // in the file's tensor table
  uint64_t begin = 0;  // absolute file offset (disk) or offset in the mapping
  uint64_t nbytes = 0;
  char* dst = nullptr;
  const RestoreTensor* tensor = nullptr;
  ReadTarget target;
};

// A unit of work: [begin, end) of one file (disk) or of one want (memory).
struct Piece {
  size_t file = 0;
  uint64_t begin = 0;
  uint64_t end = 0;
  size_t first_want = 0;  // wants overlapping it: [first_want, last_want]
  size_t last_want = 0;
};

// Completion state shared by the workers and the hashing thread.
class Board {
 public:
  explicit Board(size_t pieces) : done_(pieces, false) {}

  void Finish(size_t piece, absl::Status st) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    done_[piece] = true;
    if (!st.ok() && error_.ok()) error_ = std::move(st);
    landed_.SignalAll();
  }
  // Waits until `piece` has landed; its error (or an earlier one) otherwise.
  absl::Status Wait(size_t piece) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    while (!done_[piece] && error_.ok()) landed_.Wait(&mu_);
    return error_;
  }
  void Fail(absl::Status st) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (error_.ok()) error_ = std::move(st);
    landed_.SignalAll();
  }
  bool failed() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return !error_.ok();
  }

 private:
  absl::Mutex mu_;
  std::vector<bool> done_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  absl::CondVar landed_;
};

struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) : size(n) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
  }
  ~AlignedBuffer() {
    if (data != nullptr) ::munmap(data, size);
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  char* data = nullptr;
  size_t size = 0;
};

uint64_t AlignDown(uint64_t x, uint64_t a) { return a <= 1 ? x : x / a * a; }
uint64_t AlignUpTo(uint64_t x, uint64_t a) { return a <= 1 ? x : (x + a - 1) / a * a; }

}  // namespace

Restore::Restore(RestoreOptions options, std::vector<std::unique_ptr<File>> files)
    : options_(std::move(options)), files_(std::move(files)) {}
Restore::~Restore() = default;

absl::StatusOr<std::unique_ptr<Restore>> Restore::Open(const std::string& model_path,
                                                       const std::string& train_path,
                                                       const RestoreOptions& options) {
  if (options.reads_in_flight < 1 || options.chunk_bytes < kMinAlignment) {
    return absl::InvalidArgumentError(
        StrCat("RestoreOptions: reads_in_flight must be >= 1 and "
               "chunk_bytes >= ",
               kMinAlignment));
  }
  std::vector<std::unique_ptr<File>> files;
  CKPTD_ASSIGN_OR_RETURN(auto model, File::Open(model_path, options.direct_io));
  files.push_back(std::move(model));
  const gguf::GgufFile& header = files[0]->header;
  // Every header byte a restore depends on is under the metadata digest.
  if (options.verify) {
    if (auto covered = gguf::CheckMetadataDigest(header); !covered.ok()) {
      return absl::DataLossError(StrCat(model_path, ": ", covered.status().message()));
    }
  }
  const std::optional<uint64_t> step_v = storage::StepValue(header.metadata);
  // The file's name and its header agree on the step, and it is a model file.
  auto named = storage::ParseFileName(std::filesystem::path(model_path).filename().string());
  if (named &&
      (named->kind == storage::FileKind::kModel || named->kind == storage::FileKind::kPart) &&
      step_v && *step_v != named->step) {
    return absl::DataLossError(StrCat(model_path, ": its header says step ", *step_v,
                                      " (ckpt.step), its name says step ", named->step,
                                      "; it is not that step's checkpoint"));
  }
  if (storage::StringValue(header.metadata, storage::kKeyRole) == "train") {
    return absl::InvalidArgumentError(
        StrCat(model_path, " is a training-state file (ckpt.role = train); open its step_N.gguf"));
  }
  std::string train = train_path;
  if (train.empty() && step_v) {
    std::filesystem::path beside =
        std::filesystem::path(model_path).parent_path() / storage::TrainFileName(*step_v);
    std::error_code ec;
    if (std::filesystem::exists(beside, ec)) train = beside.string();
  }
  if (!train.empty()) {
    CKPTD_ASSIGN_OR_RETURN(auto t, File::Open(train, options.direct_io));
    if (options.verify) {
      if (auto covered = gguf::CheckMetadataDigest(t->header); !covered.ok()) {
        return absl::DataLossError(StrCat(train, ": ", covered.status().message()));
      }
    }
    storage::CheckpointRecord saved;
    saved.step = step_v.value_or(0);
    saved.content_digest = files[0]->content_digest;
    saved.save_id = storage::StringValue(header.metadata, storage::kKeySaveId);
    const std::optional<uint64_t> train_step = storage::StepValue(t->header.metadata);
    std::string why = step_v || !train_step ? storage::TrainMismatch(t->header, saved)
                                            : "the model file records no step";
    if (!why.empty()) {
      return absl::FailedPreconditionError(
          StrCat("training-state file ", train, " is not the one saved with ", model_path, ": ",
                 why, "; they are not one checkpoint; restore them from the same save"));
    }
    files.push_back(std::move(t));
  }
  auto r = std::unique_ptr<Restore>(new Restore(options, std::move(files)));
  if (step_v) r->step_ = *step_v;
  CKPTD_TRY(r->Index());
  return r;
}

namespace {

// The restart's id: the caller's, else the environment's (ours, then torchrun's).
std::string RestoreAttempt(const RestoreOptions& options) {
  if (!options.agree_attempt.empty()) return options.agree_attempt;
  if (const char* a = std::getenv("CKPTD_RESTORE_ATTEMPT"); a != nullptr && *a != '\0') return a;
  if (const char* n = std::getenv("TORCHELASTIC_RESTART_COUNT"); n != nullptr && *n != '\0') {
    const char* id = std::getenv("TORCHELASTIC_RUN_ID");
    return StrCat(id != nullptr && *id != '\0' ? id : "torchelastic", ":", n);
  }
  return "";
}

}  // namespace

absl::StatusOr<std::optional<v1::CheckpointInfo>> Restore::AgreedStep(
    Client& client, const v1::RunInfo& info, const RestoreOptions& options) {
  const std::string attempt = RestoreAttempt(options);
  if (attempt.empty()) {
    if (info.schedule().memory_every_steps() == 0) return std::nullopt;  // steps commit everywhere
    return absl::FailedPreconditionError(StrCat(
        "run '", info.run_id(), "' is rank ", info.rank(), " of ", info.world_size(),
        " with memory steps, so its ranks must agree on the step they restore: set "
        "RestoreOptions::agree_attempt (the same on every rank of this restart, new for each "
        "restart), or CKPTD_RESTORE_ATTEMPT, or run under torchrun"));
  }
  v1::FetchRemoteRequest req;
  req.set_run_id(info.run_id());
  req.set_agree_attempt(attempt);
  req.set_agree_timeout_seconds(options.agree_timeout_s);
  v1::CheckpointInfo got;
  grpc::ClientContext ctx;
  ctx.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(options.agree_timeout_s * 1000) + 60000));
  grpc::Status st = client.stub().FetchRemote(&ctx, req, &got);
  if (st.error_code() == grpc::StatusCode::NOT_FOUND &&
      st.error_message().find(policy::kNoStepAnywhere) != std::string::npos) {
    return absl::NotFoundError(StrCat("run '", info.run_id(), "' has no checkpoint yet (", attempt,
                                      ": no rank holds a step)"));
  }
  if (!st.ok()) return FromGrpc(st);
  return got;
}

absl::StatusOr<std::unique_ptr<Restore>> Restore::OpenRun(Client& client, const std::string& run_id,
                                                          std::optional<uint64_t> step,
                                                          const RestoreOptions& options) {
  v1::GetRunRequest run_req;
  run_req.set_run_id(run_id);
  v1::RunInfo info;
  {
    grpc::ClientContext ctx;
    grpc::Status st = client.stub().GetRun(&ctx, run_req, &info);
    if (!st.ok()) return FromGrpc(st);
  }
  // Not on the daemon's disk: its object store may have it. A daemon
  // without a tier (FAILED_PRECONDITION) or a store without the step
  // (NOT_FOUND) leaves the answer as it was.
  auto fetched = [&](std::optional<uint64_t> want,
                     std::optional<uint64_t> newer_than) -> std::optional<v1::CheckpointInfo> {
    if (!options.allow_remote) return std::nullopt;
    v1::FetchRemoteRequest fetch;
    fetch.set_run_id(run_id);
    if (want) fetch.set_step(*want);
    if (newer_than) fetch.set_newer_than(*newer_than);
    v1::CheckpointInfo got;
    grpc::ClientContext ctx;
    if (!client.stub().FetchRemote(&ctx, fetch, &got).ok()) return std::nullopt;
    return got;
  };
  auto tier_of = [](const v1::CheckpointInfo& got) {
    return std::string(got.fetched_from().starts_with("peer") ? "peer" : "store");
  };
  v1::CheckpointInfo cp;
  std::string tier;
  if (!step.has_value() && info.world_size() > 1) {
    CKPTD_ASSIGN_OR_RETURN(std::optional<v1::CheckpointInfo> agreed,
                           AgreedStep(client, info, options));
    if (agreed) {
      cp = *agreed;
      step = cp.step();
      if (!cp.fetched_from().empty()) tier = tier_of(cp);
    }
  }
  if (!step.has_value()) {
    // The newest step on this node, in either tier, unless a peer's memory
    // or the store has a newer one.
    std::optional<uint64_t> local;
    if (info.has_last_step()) local = info.last_step();
    if (info.has_memory_step()) local = std::max(local.value_or(0), info.memory_step());
    if (std::optional<v1::CheckpointInfo> remote = fetched(std::nullopt, local)) {
      cp = *remote;
      step = cp.step();
      tier = tier_of(cp);
    } else if (!local) {
      return absl::NotFoundError(StrCat("run '", run_id, "' has no checkpoint yet"));
    } else {
      step = local;
    }
  }
  if (cp.file().empty()) {
    v1::GetCheckpointRequest req;
    req.set_run_id(run_id);
    req.set_step(*step);
    grpc::ClientContext ctx;
    v1::CheckpointDetail detail;
    grpc::Status st = client.stub().GetCheckpoint(&ctx, req, &detail);
    if (st.error_code() == grpc::StatusCode::NOT_FOUND) {
      if (std::optional<v1::CheckpointInfo> remote = fetched(step, std::nullopt)) {
        cp = *remote;
        st = grpc::Status::OK;
        tier = tier_of(cp);
      }
    } else if (st.ok()) {
      cp = detail.info();
    }
    if (!st.ok()) return FromGrpc(st);
  }
  CKPTD_ASSIGN_OR_RETURN(auto r, Open(cp.file(), cp.train_file(), options));
  if (r->step() != *step) {
    return absl::DataLossError(StrCat("asked run '", run_id, "' for step ", *step, ", but ",
                                      cp.file(), " holds step ", r->step(), " (its ckpt.step)"));
  }
  r->tier_ = !tier.empty()                ? tier
             : !cp.fetched_from().empty() ? tier_of(cp)
             : cp.location() == "memory"  ? "memory"
                                          : "disk";
  if (info.has_last_seen_step() && info.last_seen_step() >= *step) {
    r->steps_lost_ = info.last_seen_step() - *step;
  }
  // The in-memory copy is only ever read with digests checked: a live
  // trainer may be reusing that arena.
  if (options.allow_memory && options.verify && info.has_in_memory() &&
      info.in_memory().step() == *step && !info.in_memory().socket().empty()) {
    absl::Status st = r->AttachMemory(run_id, info.in_memory());
    // No copy (dropped since GetRun, say): the disk it is.
    if (!st.ok()) r->memory_error_ = std::string(st.message());
  }
  return r;
}

namespace {

// What a damaged or foreign file looks like when opened or read: the next
// older step may restore. Anything else (the daemon, the caller's targets)
// would fail the same way for every step.
bool FilesAreAtFault(const absl::Status& st, bool reading) {
  if (reading) return absl::IsDataLoss(st);
  return absl::IsDataLoss(st) || absl::IsFailedPrecondition(st) || absl::IsInvalidArgument(st) ||
         absl::IsOutOfRange(st) || absl::IsNotFound(st);
}

// The run's committed steps, newest first.
absl::StatusOr<std::vector<uint64_t>> StepsNewestFirst(Client& client, const std::string& run_id) {
  std::vector<uint64_t> steps;
  v1::ListCheckpointsRequest req;
  req.set_run_id(run_id);
  req.set_page_size(1000);
  do {
    v1::ListCheckpointsResponse page;
    grpc::ClientContext ctx;
    grpc::Status st = client.stub().ListCheckpoints(&ctx, req, &page);
    if (!st.ok()) return FromGrpc(st);
    for (const auto& c : page.checkpoints()) steps.push_back(c.step());
    req.set_page_token(page.next_page_token());
  } while (!req.page_token().empty());
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Restore>> Restore::ReadRun(Client& client, const std::string& run_id,
                                                          std::span<const ReadTarget> targets,
                                                          const RestoreOptions& options) {
  {
    // A multi-rank run restoring by agreement takes the agreed step or
    // fails: an older step of its own would differ from the other ranks'.
    v1::GetRunRequest run_req;
    run_req.set_run_id(run_id);
    v1::RunInfo info;
    grpc::ClientContext ctx;
    if (grpc::Status st = client.stub().GetRun(&ctx, run_req, &info); !st.ok()) return FromGrpc(st);
    if (info.world_size() > 1 &&
        (!RestoreAttempt(options).empty() || info.schedule().memory_every_steps() > 0)) {
      CKPTD_ASSIGN_OR_RETURN(auto r, OpenRun(client, run_id, std::nullopt, options));
      CKPTD_TRY(r->ReadMany(targets));
      return r;
    }
  }
  CKPTD_ASSIGN_OR_RETURN(std::vector<uint64_t> steps, StepsNewestFirst(client, run_id));
  if (steps.empty()) return OpenRun(client, run_id, std::nullopt, options);  // remote, or NOT_FOUND
  // A peer's memory or the store may hold a newer step than this node.
  std::optional<std::pair<uint64_t, std::string>> fetched;
  if (options.allow_remote) {
    v1::FetchRemoteRequest fetch;
    fetch.set_run_id(run_id);
    fetch.set_newer_than(steps.front());
    v1::CheckpointInfo got;
    grpc::ClientContext ctx;
    if (client.stub().FetchRemote(&ctx, fetch, &got).ok()) {
      fetched = {got.step(), got.fetched_from().starts_with("peer") ? "peer" : "store"};
      steps.insert(steps.begin(), got.step());
    }
  }
  std::vector<Skipped> skipped;
  absl::Status newest_error;
  for (uint64_t step : steps) {
    auto r = OpenRun(client, run_id, step, options);
    absl::Status st = r.ok() ? (*r)->ReadMany(targets) : r.status();
    if (st.ok()) {
      (*r)->skipped_ = std::move(skipped);
      if (fetched && fetched->first == step) (*r)->tier_ = fetched->second;
      return r;
    }
    if (!FilesAreAtFault(st, r.ok())) return st;
    if (newest_error.ok()) newest_error = st;
    skipped.push_back({step, std::string(st.message())});
  }
  return absl::Status(newest_error.code(),
                      StrCat("no step of run '", run_id, "' restores whole; the newest, step ",
                             steps.front(), ": ", newest_error.message()));
}

absl::StatusOr<std::unique_ptr<Restore>> Restore::ReadRun(Run& run,
                                                          std::span<const ReadTarget> targets,
                                                          const RestoreOptions& options) {
  return ReadRun(*run.client(), run.id(), targets, options);
}

absl::StatusOr<std::unique_ptr<Restore>> Restore::OpenRun(Run& run, std::optional<uint64_t> step,
                                                          const RestoreOptions& options) {
  return OpenRun(*run.client(), run.id(), step, options);
}

absl::Status Restore::AttachMemory(const std::string& run_id, const v1::InMemoryCopy& copy) {
  CKPTD_ASSIGN_OR_RETURN(auto channel, ArenaChannel::Connect(copy.socket()));
  CKPTD_ASSIGN_OR_RETURN(auto opened, channel->OpenInMemoryCopy(run_id, copy.step(), copy.key()));
  auto [fd, size] = opened;
  void* p = size > 0 ? ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) {
    return absl::UnavailableError(StrCat("map the in-memory copy: ", std::strerror(err)));
  }
  auto map = std::make_shared<const MemoryMap>(static_cast<const char*>(p), size);
  std::map<std::string, std::pair<uint64_t, uint64_t>, std::less<>> where;
  for (const auto& t : copy.tensors()) where[t.name()] = {t.offset(), t.nbytes()};
  for (auto& file : files_) {
    std::vector<uint64_t> offsets;
    for (const gguf::TensorInfo& t : file->header.tensors) {
      auto it = where.find(t.name);
      if (it == where.end() || it->second.second != t.nbytes || it->second.first > size ||
          t.nbytes > size - it->second.first) {
        return absl::FailedPreconditionError(
            StrCat("the in-memory copy does not hold tensor '", t.name, "' as the file does"));
      }
      offsets.push_back(it->second.first);
    }
    file->memory_offsets = std::move(offsets);
  }
  for (auto& file : files_) file->memory = map;
  return absl::OkStatus();
}

absl::Status Restore::Index() {
  for (size_t f = 0; f < files_.size(); ++f) {
    const File& file = *files_[f];
    if (options_.verify && file.digests.empty()) {
      return absl::FailedPreconditionError(
          StrCat(file.path, " stores no per-tensor digests (", gguf::kKeyTensorDigests,
                 "): not a ckptd checkpoint; open it with verify = false to read it unchecked"));
    }
    for (size_t i = 0; i < file.header.tensors.size(); ++i) {
      const gguf::TensorInfo& t = file.header.tensors[i];
      RestoreTensor r;
      r.name = t.name;
      r.type = static_cast<v1::TensorType>(t.type);
      r.ne = t.ne;
      r.nbytes = t.nbytes;
      if (!file.digests.empty()) r.digest = gguf::DigestHex(file.digests[i]);
      r.group = f == 0 ? v1::TENSOR_GROUP_MODEL : v1::TENSOR_GROUP_TRAIN;
      by_name_.emplace(r.name, tensors_.size());
      tensors_.push_back(std::move(r));
      where_.emplace_back(f, i);
    }
  }
  return absl::OkStatus();
}

const RestoreTensor* Restore::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const gguf::Metadata& Restore::metadata() const { return files_[0]->header.metadata; }
const gguf::Metadata& Restore::train_metadata() const {
  static const gguf::Metadata kEmpty;
  return files_.size() > 1 ? files_[1]->header.metadata : kEmpty;
}
const std::string& Restore::model_path() const { return files_[0]->path; }
const std::string& Restore::train_path() const {
  static const std::string kNone;
  return files_.size() > 1 ? files_[1]->path : kNone;
}
std::string_view Restore::source() const {
  return files_[0]->memory != nullptr ? "memory" : "disk";
}

absl::Status Restore::ReadInto(std::string_view name, void* dst, size_t n) {
  ReadTarget t{name, dst, n};
  return ReadMany({&t, 1});
}

absl::Status Restore::ReadInto(std::string_view name, void* dst, size_t n, v1::TensorType type,
                               std::span<const uint64_t> ne) {
  ReadTarget t{.name = name, .dst = dst, .n = n, .type = type, .ne = {ne.begin(), ne.end()}};
  return ReadMany({&t, 1});
}

absl::Status Restore::ReadMany(std::span<const ReadTarget> targets) {
  std::vector<ReadTarget> damaged;
  CKPTD_TRY(ReadPass(targets, files_[0]->memory != nullptr, &damaged));
  if (damaged.empty()) return absl::OkStatus();
  // The in-memory copy changed since it was committed (the trainer reused
  // its arena): those tensors come from disk.
  memory_fallbacks_ += damaged.size();
  for (const ReadTarget& t : damaged) bytes_read_ -= t.n;
  return ReadPass(damaged, /*use_memory=*/false, nullptr);
}

absl::Status Restore::ReadPass(std::span<const ReadTarget> targets, bool use_memory,
                               std::vector<ReadTarget>* damaged) {
  // Resolve and order the requests by (file, offset).
  std::vector<Want> wants;
  wants.reserve(targets.size());
  for (const ReadTarget& t : targets) {
    const RestoreTensor* it = Find(t.name);
    if (it == nullptr) {
      return absl::NotFoundError(
          StrCat("no tensor '", t.name, "' in this checkpoint (", model_path(), ")"));
    }
    if (t.type && (*t.type != it->type || t.ne != it->ne)) {
      return absl::FailedPreconditionError(StrCat(
          "tensor '", t.name, "': the checkpoint holds ", v1::TensorType_Name(it->type), " [",
          fmt::format("{}", fmt::join(it->ne, ", ")), "], the destination is ",
          v1::TensorType_Name(*t.type), " [", fmt::format("{}", fmt::join(t.ne, ", ")),
          "] (dims in GGUF order); nothing was read: give the destination the saved type and "
          "dims"));
    }
    if (t.n != it->nbytes) {
      return absl::InvalidArgumentError(
          StrCat("tensor '", t.name, "' has ", it->nbytes, " bytes; the destination has ", t.n));
    }
    auto [f, i] = where_[static_cast<size_t>(it - tensors_.data())];
    const File& file = *files_[f];
    Want w;
    w.file = f;
    w.index = i;
    w.nbytes = it->nbytes;
    w.dst = static_cast<char*>(t.dst);
    w.tensor = it;
    w.target = t;
    w.begin = use_memory ? file.memory_offsets[i]
                         : file.header.data_offset + file.header.tensors[i].offset;
    wants.push_back(w);
  }
  std::sort(wants.begin(), wants.end(), [](const Want& a, const Want& b) {
    return std::tie(a.file, a.begin) < std::tie(b.file, b.begin);
  });
  for (size_t k = 1; k < wants.size(); ++k) {
    if (wants[k].file == wants[k - 1].file && wants[k].index == wants[k - 1].index) {
      return absl::InvalidArgumentError(
          StrCat("tensor '", wants[k].tensor->name, "' is requested twice in one read"));
    }
  }

  // Cut into pieces. On disk: runs of nearby tensors read as one range,
  // aligned for O_DIRECT, in chunk_bytes steps. In memory: slices of each
  // tensor.
  const uint64_t chunk = options_.chunk_bytes;
  std::vector<Piece> pieces;
  for (size_t k = 0; k < wants.size();) {
    const File& file = *files_[wants[k].file];
    if (use_memory) {
      for (uint64_t at = 0; at < wants[k].nbytes; at += chunk) {
        pieces.push_back({wants[k].file, wants[k].begin + at,
                          wants[k].begin + std::min(wants[k].nbytes, at + chunk), k, k});
      }
      ++k;
      continue;
    }
    const uint64_t align = std::max<uint64_t>(file.disk->direct_alignment(), 1);
    size_t last = k;
    uint64_t end = wants[k].begin + wants[k].nbytes;
    while (last + 1 < wants.size() && wants[last + 1].file == wants[k].file &&
           wants[last + 1].begin <= end + kMaxGap) {
      ++last;
      end = std::max(end, wants[last].begin + wants[last].nbytes);
    }
    uint64_t from = AlignDown(wants[k].begin, align);
    const uint64_t to = AlignUpTo(end, align);
    size_t first = k;
    while (from < to) {
      const uint64_t piece_end = std::min(to, AlignDown(from + chunk, align));
      while (first < last && wants[first].begin + wants[first].nbytes <= from) ++first;
      size_t lw = first;
      while (lw < last && wants[lw + 1].begin < piece_end) ++lw;
      pieces.push_back({wants[k].file, from, piece_end, first, lw});
      from = piece_end;
    }
    k = last + 1;
  }

  Board board(pieces.size());
  std::atomic<size_t> next{0};
  auto fetch = [&](AlignedBuffer* buf, const Piece& p) -> absl::Status {
    const File& file = *files_[p.file];
    if (use_memory) {
      const Want& w = wants[p.first_want];
      std::memcpy(w.dst + (p.begin - w.begin), file.memory->base + p.begin, p.end - p.begin);
      return absl::OkStatus();
    }
    CKPTD_ASSIGN_OR_RETURN(size_t got, file.disk->ReadUpTo(p.begin, p.end - p.begin, buf->data));
    for (size_t k = p.first_want; k <= p.last_want; ++k) {
      const Want& w = wants[k];
      const uint64_t a = std::max(p.begin, w.begin);
      const uint64_t b = std::min(p.end, w.begin + w.nbytes);
      if (a >= b) continue;
      if (b > p.begin + got) {
        return absl::DataLossError(
            StrCat(file.path, ": the file ends inside tensor '", w.tensor->name, "' (truncated?)"));
      }
      std::memcpy(w.dst + (a - w.begin), buf->data + (a - p.begin), b - a);
    }
    return absl::OkStatus();
  };
  auto worker = [&] {
    AlignedBuffer buf(static_cast<size_t>(chunk) + kMinAlignment);
    if (buf.data == nullptr) {
      board.Fail(absl::ResourceExhaustedError("restore: cannot map a read buffer"));
      return;
    }
    for (size_t i = next++; i < pieces.size(); i = next++) {
      if (board.failed()) return;
      board.Finish(i, fetch(&buf, pieces[i]));
    }
  };
  const size_t n_workers =
      std::min<size_t>(static_cast<size_t>(options_.reads_in_flight), pieces.size());
  std::vector<std::thread> workers;
  workers.reserve(n_workers);
  for (size_t w = 0; w < n_workers; ++w) workers.emplace_back(worker);

  // Hash each tensor in order as its pieces land.
  absl::Status result;
  std::vector<gguf::TensorHasher> hashers(options_.verify ? wants.size() : 0);
  std::vector<uint64_t> hashed(wants.size(), 0);
  for (size_t i = 0; i < pieces.size() && result.ok(); ++i) {
    result = board.Wait(i);
    if (!result.ok() || !options_.verify) continue;
    const Piece& p = pieces[i];
    for (size_t k = p.first_want; k <= p.last_want && result.ok(); ++k) {
      const Want& w = wants[k];
      const uint64_t a = std::max(p.begin, w.begin);
      const uint64_t b = std::min(p.end, w.begin + w.nbytes);
      if (a >= b) continue;
      hashers[k].Update(w.dst + (a - w.begin), b - a);
      hashed[k] += b - a;
      if (hashed[k] == w.nbytes) {
        const gguf::Digest128 got = hashers[k].Finish();
        const gguf::Digest128& want = files_[w.file]->digests[w.index];
        if (got != want && use_memory && damaged != nullptr) {
          damaged->push_back(w.target);
        } else if (got != want) {
          result = absl::DataLossError(
              StrCat("tensor '", w.tensor->name, "' in ", files_[w.file]->path,
                     " does not match its digest: stored ", gguf::DigestHex(want), ", read ",
                     gguf::DigestHex(got), "; the destination holds damaged bytes"));
        }
      }
    }
  }
  if (!result.ok()) board.Fail(result);
  for (auto& t : workers) t.join();
  if (result.ok()) {
    for (const Want& w : wants) bytes_read_ += w.nbytes;
  }
  return result;
}

}  // namespace ckptd
