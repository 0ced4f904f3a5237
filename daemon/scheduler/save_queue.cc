// Queued saves (shm and pointer paths) and their per-run writers.
#include "daemon/scheduler/save_queue.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/ingest/arena_source.h"
#include "daemon/metrics/metrics.h"

namespace ckptd::scheduler {
namespace {

// Calls `read` once the inner source has delivered (or failed to deliver)
// every byte: the trainer's memory is free from then on.
class ReadNotifier final : public ingest::TensorSource {
 public:
  ReadNotifier(ingest::TensorSource* inner, std::function<void(const absl::Status&)> read)
      : inner_(inner), read_(std::move(read)) {}
  std::string_view transport() const override { return inner_->transport(); }
  bool stable() const override { return inner_->stable(); }
  absl::Status CopyTo(const ingest::ByteWriter& write) override {
    absl::Status st = inner_->CopyTo(write);
    read_(st);
    return st;
  }
  std::vector<std::optional<gguf::Digest128>> KnownDigests() const override {
    return inner_->KnownDigests();
  }
  void Learn(std::span<const gguf::Digest128> digests) override { inner_->Learn(digests); }
  bool can_hash_tensors() const override { return inner_->can_hash_tensors(); }
  absl::StatusOr<std::optional<gguf::Digest128>> HashTensor(size_t i) override {
    return inner_->HashTensor(i);
  }

 private:
  ingest::TensorSource* inner_;
  std::function<void(const absl::Status&)> read_;
};

}  // namespace

SaveQueue::~SaveQueue() { Drain(); }

absl::StatusOr<SaveQueue::Accepted> SaveQueue::Submit(
    SaveParams params, std::unique_ptr<ingest::TensorSource> source) {
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<Run> run, registry_->Get(params.run_id));
  const uint64_t step = params.step;
  absl::StatusOr<Accepted> accepted = [&]() -> absl::StatusOr<Accepted> {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      return absl::UnavailableError("the daemon is shutting down; save again after it restarts");
    }
    RunQueue& q = queues_[params.run_id];
    Admission admission;
    CKPTD_ASSIGN_OR_RETURN(Accepted out, Admit(*run, q, params, &admission));
    if (out.skipped) return out;
    out.save_id = next_id_++;
    q.results[out.save_id] = QueuedSaveResult{.step = step};
    q.jobs.push_back(Job{out.save_id, std::move(params), admission, std::move(source)});
    metrics::Metrics::Get().AddSharedQueued(1);
    if (!q.working) {
      if (q.worker.joinable()) q.worker.join();  // finished: it no longer touches mu_
      q.working = true;
      q.worker = std::thread([this, id = run->id()] { Work(id); });
    }
    return out;
  }();
  if (!accepted.ok()) RecordFailure(*run, step, accepted.status(), "refused=queued ");
  return accepted;
}

absl::StatusOr<SaveQueue::Accepted> SaveQueue::Admit(Run& run, RunQueue& q, SaveParams& p,
                                                     Admission* admission) {
  std::string weights_dir;
  {
    absl::MutexLock run_lock(&run.mu());
    run.MarkActive(NowSeconds());
    run.SawStep(p.step);
    weights_dir = run.dir()->weights_dir();
    std::optional<uint64_t> last;
    if (!q.jobs.empty()) last = q.jobs.back().params.step;
    CKPTD_ASSIGN_OR_RETURN(*admission, scheduler::Admit(run, registry_->EffectiveSchedule(run),
                                                        p.admit_request(), last, NowSeconds()));
  }
  if (!admission->due) {
    metrics::Metrics::Get().CountSave(p.run_id, "skipped");
    return Accepted{.skipped = true, .reason = admission->reason};
  }
  if (q.jobs.size() >= max_pending_) {
    return absl::ResourceExhaustedError(
        StrCat("run '", p.run_id, "' already has ", q.jobs.size(),
               " saves queued (shm.max_pending_saves); WaitSaved for one first"));
  }
  // Tensor names, types and dims as the writer will check them, before
  // anything is queued (plans only; touches no file).
  storage::SavePlan plan{.step = p.step, .tensors = p.tensors};
  plan.train_metadata = p.train_metadata;
  auto planned = storage::CheckpointWriter::Plan(registry_->env(), weights_dir, std::move(plan));
  if (!planned.ok()) return planned.status();
  return Accepted{.reason = admission->reason};
}

void SaveQueue::Work(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  RunQueue& q = queues_[run_id];
  while (!q.jobs.empty()) {
    Job& job = q.jobs.front();  // deque references survive push_back; only we pop
    mu_.Unlock();
    QueuedSaveResult result = Execute(job);
    mu_.Lock();
    const uint64_t id = job.id;
    q.jobs.pop_front();  // drops the source (arena references) before the save is reported done
    metrics::Metrics::Get().AddSharedQueued(-1);
    result.read = true;
    if (result.state == QueuedSaveResult::State::kFailed) result.read_error = result.error;
    q.results[id] = std::move(result);
    q.finished.push_back(id);
    while (q.finished.size() > kRememberedResults) {
      q.results.erase(q.finished.front());
      q.finished.pop_front();
    }
    cv_.SignalAll();
  }
  q.working = false;
  cv_.SignalAll();
}

void SaveQueue::MarkRead(const std::string& run_id, uint64_t id, const absl::Status& error) {
  absl::MutexLock lock(&mu_);
  auto& results = queues_[run_id].results;
  if (auto it = results.find(id); it != results.end()) {
    it->second.read = true;
    it->second.read_error = error;
  }
  cv_.SignalAll();
}

QueuedSaveResult SaveQueue::Execute(Job& job) {
  QueuedSaveResult result{.step = job.params.step};
  const std::string run_id = job.params.run_id;
  ReadNotifier source(job.source.get(),
                      [&](const absl::Status& st) { MarkRead(run_id, job.id, st); });
  auto outcome = [&]() -> absl::StatusOr<SaveOutcome> {
    CKPTD_ASSIGN_OR_RETURN(auto session, SaveSession::Begin(registry_, job.params,
                                                            source.transport(), &job.admission));
    return session->Run(source);
  }();
  if (!outcome.ok()) {
    result.state = QueuedSaveResult::State::kFailed;
    result.error = outcome.status();
    return result;
  }
  result.state = QueuedSaveResult::State::kCommitted;
  KeepHot(job, outcome->record.step);
  result.record = std::move(outcome->record);
  result.is_latest = outcome->is_latest;
  result.timings = outcome->timings;
  return result;
}

void SaveQueue::KeepHot(const Job& job, uint64_t step) {
  if (hot_ == nullptr) return;
  const auto* arena_source = dynamic_cast<const ingest::ArenaSource*>(job.source.get());
  const auto& regions =
      arena_source != nullptr ? arena_source->regions() : std::vector<ingest::ArenaRegion>{};
  const bool one_arena =
      !regions.empty() && std::all_of(regions.begin(), regions.end(), [&](const auto& r) {
        return r.arena == regions.front().arena;
      });
  if (!one_arena || regions.size() != job.params.tensors.size()) {
    hot_->Drop(job.params.run_id);  // the newest checkpoint is not in one arena
    return;
  }
  ingest::HotCopyInfo info{.run_id = job.params.run_id, .step = step};
  info.tensors.reserve(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    info.tensors.push_back({job.params.tensors[i].spec.name, regions[i].offset, regions[i].bytes});
  }
  hot_->Keep(std::move(info), regions.front().arena);
}

absl::StatusOr<QueuedSaveResult> SaveQueue::Wait(const std::string& run_id, uint64_t save_id,
                                                 Until until, std::chrono::milliseconds timeout,
                                                 const std::function<bool()>& cancelled) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  absl::MutexLock lock(&mu_);
  while (true) {
    const QueuedSaveResult* found = nullptr;
    if (auto q = queues_.find(run_id); q != queues_.end()) {
      auto it = q->second.results.find(save_id);
      if (it != q->second.results.end()) found = &it->second;
    }
    if (found == nullptr) {
      return absl::NotFoundError(StrCat("run '", run_id, "' has no queued save ", save_id,
                                        " (ids come from SaveShared or SavePointers; the last ",
                                        kRememberedResults,
                                        " finished saves per run are remembered)"));
    }
    const bool reached =
        found->state != QueuedSaveResult::State::kPending || (until == Until::kRead && found->read);
    const auto now = std::chrono::steady_clock::now();
    if (reached || now >= deadline || cancelled()) return *found;
    const auto until = std::min(deadline, now + std::chrono::milliseconds(100));
    cv_.WaitWithTimeout(&mu_, absl::FromChrono(until - now));
  }
}

std::optional<uint64_t> SaveQueue::LastQueued(const std::string& run_id) const {
  absl::MutexLock lock(&mu_);
  auto q = queues_.find(run_id);
  if (q == queues_.end() || q->second.jobs.empty()) return std::nullopt;
  return q->second.jobs.back().params.step;
}

bool SaveQueue::Idle(const std::string& run_id) const {
  auto q = queues_.find(run_id);
  return q == queues_.end() || (q->second.jobs.empty() && !q->second.working);
}

void SaveQueue::WaitIdle(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  while (!Idle(run_id)) cv_.Wait(&mu_);
}

void SaveQueue::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  auto all_idle = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const auto& [id, q] : queues_) {
      if (!Idle(id)) return false;
    }
    return true;
  };
  while (!all_idle()) cv_.Wait(&mu_);
  for (auto& [id, q] : queues_) {
    if (q.worker.joinable()) q.worker.join();
  }
}

size_t SaveQueue::pending() const {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [id, q] : queues_) n += q.jobs.size();
  return n;
}

}  // namespace ckptd::scheduler
