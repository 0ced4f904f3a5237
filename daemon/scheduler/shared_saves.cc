// The shm path's queue and per-run writers.
#include "daemon/scheduler/shared_saves.h"

#include <spdlog/spdlog.h>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/metrics/metrics.h"

namespace ckptd::scheduler {
namespace {

// Each reference must lie inside its arena (overflow-safe).
absl::Status CheckBounds(const SharedSave& save) {
  const SaveParams& p = save.params;
  if (save.regions.size() != p.tensors.size()) {
    return absl::InvalidArgumentError(StrCat("locations: ", save.regions.size(), " given for ",
                                             p.tensors.size(),
                                             " tensors; give one per tensor, in the same order"));
  }
  for (size_t i = 0; i < p.tensors.size(); ++i) {
    const gguf::TensorSpec& t = p.tensors[i].spec;
    auto n = gguf::TensorBytes(t.type, t.ne);
    if (!n.ok()) {
      return absl::InvalidArgumentError(
          StrCat("tensors[", i, "] '", t.name, "': ", n.status().message()));
    }
    const SharedRegion& r = save.regions[i];
    const uint64_t size = r.arena->memory->size();
    if (r.offset > size || *n > size - r.offset) {
      return absl::InvalidArgumentError(StrCat("locations[", i, "]: tensor '", t.name, "' needs ",
                                               *n, " bytes at offset ", r.offset, " but arena ",
                                               r.arena->id, " holds ", size,
                                               " bytes; every tensor must lie inside its arena"));
    }
  }
  if (save.progress) {
    const uint64_t size = save.progress->arena->memory->size();
    if (save.progress->offset % 8 != 0 || size < 8 || save.progress->offset > size - 8) {
      return absl::InvalidArgumentError(StrCat("progress: offset ", save.progress->offset,
                                               " is not an 8-byte aligned u64 inside arena ",
                                               save.progress->arena->id, " (", size, " bytes)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

SharedSaveQueue::~SharedSaveQueue() { Drain(); }

absl::Status SharedSaveQueue::CheckOrder(Run& run, const RunQueue& q, const SaveParams& p) const {
  if (!q.jobs.empty()) {
    const uint64_t last = q.jobs.back().save.params.step;
    if (p.step <= last) {
      return absl::FailedPreconditionError(
          StrCat("step ", p.step, " is not above step ", last,
                 ", which is still queued; a run's steps are saved in increasing order (to "
                 "overwrite, WaitSaved for the queued save first)"));
    }
    return absl::OkStatus();
  }
  return run.dir()->CheckCanSave(p.step,
                                 p.overwrite ? storage::Overwrite::kYes : storage::Overwrite::kNo);
}

absl::StatusOr<SharedSaveQueue::Accepted> SharedSaveQueue::Submit(SharedSave save) {
  SaveParams& p = save.params;
  p.transport = "shm";
  if (p.tensors.empty()) {
    return absl::InvalidArgumentError("tensors: a save needs at least one tensor");
  }
  CKPTD_TRY(CheckBounds(save));
  CKPTD_ASSIGN_OR_RETURN(std::shared_ptr<Run> run, registry_->Get(p.run_id));
  Accepted out;
  std::lock_guard lock(mu_);
  if (draining_) {
    return absl::UnavailableError("the daemon is shutting down; save again after it restarts");
  }
  RunQueue& q = queues_[p.run_id];
  {
    std::lock_guard run_lock(run->mu);
    CKPTD_TRY(CheckAcceptsSaves(*run));
    if (p.kind == SaveKind::kSave && !p.force) {
      std::optional<uint64_t> last = run->dir()->latest_step();
      if (!q.jobs.empty()) last = q.jobs.back().save.params.step;
      policy::Decision d = policy::IsDue(registry_->EffectiveSchedule(*run),
                                         {last, run->reference_time_s}, p.step, NowSeconds());
      if (!d.due) {
        metrics::Metrics::Get().CountSave(p.run_id, "skipped");
        return Accepted{.skipped = true, .reason = d.reason};
      }
      out.reason = d.reason;
    } else if (p.kind == SaveKind::kClose) {
      if (!registry_->EffectiveSchedule(*run).final_on_close) {
        metrics::Metrics::Get().CountSave(p.run_id, "skipped");
        return Accepted{.skipped = true, .reason = "final_on_close is off for this run"};
      }
      out.reason = "final snapshot";
      // As on CloseRun: the final snapshot replaces a checkpoint at its step.
      if (q.jobs.empty() && run->dir()->Find(p.step) != nullptr) p.overwrite = true;
    } else {
      out.reason = "forced";
    }
    CKPTD_TRY(CheckOrder(*run, q, p));
  }
  if (q.jobs.size() >= max_pending_) {
    return absl::ResourceExhaustedError(
        StrCat("run '", p.run_id, "' already has ", q.jobs.size(),
               " shared-memory saves queued (shm.max_pending_saves); WaitSaved for one first"));
  }
  // Tensor names, types and dims as the writer will check them, before
  // anything is queued (plans only; touches no file).
  storage::SavePlan plan{.step = p.step, .tensors = p.tensors};
  plan.train_metadata = p.train_metadata;
  auto planned =
      storage::CheckpointWriter::Plan(registry_->env(), run->dir()->weights_dir(), std::move(plan));
  if (!planned.ok()) return planned.status();

  p.decided_reason = out.reason;
  out.save_id = next_id_++;
  q.results[out.save_id] = SharedSaveResult{.step = p.step};
  q.jobs.push_back(Job{out.save_id, std::move(save)});
  metrics::Metrics::Get().AddSharedQueued(1);
  if (!q.working) {
    if (q.worker.joinable()) q.worker.join();  // finished: it no longer touches mu_
    q.working = true;
    q.worker = std::thread([this, id = run->id()] { Work(id); });
  }
  return out;
}

void SharedSaveQueue::Work(const std::string& run_id) {
  std::unique_lock lock(mu_);
  RunQueue& q = queues_[run_id];
  while (!q.jobs.empty()) {
    Job& job = q.jobs.front();  // deque references survive push_back
    lock.unlock();
    SharedSaveResult result = Execute(job.save);
    lock.lock();
    const uint64_t id = job.id;
    q.jobs.pop_front();  // drops the arena references before the save is reported done
    metrics::Metrics::Get().AddSharedQueued(-1);
    q.results[id] = std::move(result);
    q.finished.push_back(id);
    while (q.finished.size() > kRememberedResults) {
      q.results.erase(q.finished.front());
      q.finished.pop_front();
    }
    cv_.notify_all();
  }
  q.working = false;
  cv_.notify_all();
}

SharedSaveResult SharedSaveQueue::Execute(SharedSave& save) {
  SharedSaveResult result{.step = save.params.step};
  auto fail = [&](absl::Status st) {
    result.state = SharedSaveResult::State::kFailed;
    result.error = std::move(st);
    return result;
  };
  auto session = SaveSession::Begin(registry_, save.params);
  if (!session.ok()) {
    if (auto run = registry_->Get(save.params.run_id); run.ok()) {
      RecordFailure(**run, save.params.step, session.status());
    }
    return fail(session.status());
  }
  std::unique_ptr<env::MappedWindow> counter;
  if (save.progress) {
    auto mapped = save.progress->arena->memory->Map(save.progress->offset, 8);
    if (!mapped.ok()) {
      (*session)->Fail(mapped.status());
      return fail(mapped.status());
    }
    counter = std::move(*mapped);
    spdlog::info("shared save run={} step={} staged progressively: writing as the trainer copies",
                 save.params.run_id, save.params.step);
  }
  const uint64_t total = (*session)->expected_bytes();
  uint64_t done = 0;  // tensor bytes written so far
  for (size_t i = 0; i < save.regions.size(); ++i) {
    const gguf::TensorSpec& t = save.params.tensors[i].spec;
    const uint64_t n = *gguf::TensorBytes(t.type, t.ne);  // checked by Submit
    const SharedRegion& r = save.regions[i];
    for (uint64_t at = 0; at < n; at += kWindowBytes) {
      const uint64_t len = std::min<uint64_t>(kWindowBytes, n - at);
      absl::Status st = counter ? WaitStaged(*counter, done + len, total) : absl::OkStatus();
      if (st.ok()) {
        auto window = r.arena->memory->Map(r.offset + at, len);
        st = window.ok() ? (*session)->Write((*window)->bytes()) : window.status();
      }
      done += len;
      if (!st.ok()) {
        (*session)->Fail(st);
        return fail(st);
      }
    }
  }
  auto record = (*session)->Commit(&result.timings, &result.is_latest);
  if (!record.ok()) {
    (*session)->Fail(record.status());
    return fail(record.status());
  }
  result.state = SharedSaveResult::State::kCommitted;
  result.record = std::move(*record);
  return result;
}

absl::Status SharedSaveQueue::WaitStaged(const env::MappedWindow& counter, uint64_t needed,
                                         uint64_t total) const {
  const auto* word = reinterpret_cast<const uint64_t*>(counter.bytes().data());
  uint64_t seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
  auto last_progress = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(20);
  while (seen < needed) {
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
    const uint64_t now_seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    if (now_seen != seen) {
      seen = now_seen;
      last_progress = std::chrono::steady_clock::now();
      pause = std::chrono::microseconds(20);
    } else if (std::chrono::steady_clock::now() - last_progress > staging_timeout_) {
      return absl::DeadlineExceededError(
          StrCat("the trainer stopped staging: ", seen, " of ", total,
                 " tensor bytes in place and no progress for ",
                 std::chrono::duration<double>(staging_timeout_).count(),
                 " s (it exited or hung mid-copy); nothing was committed"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SharedSaveResult> SharedSaveQueue::Wait(const std::string& run_id, uint64_t save_id,
                                                       std::chrono::milliseconds timeout,
                                                       const std::function<bool()>& cancelled) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mu_);
  while (true) {
    const SharedSaveResult* found = nullptr;
    if (auto q = queues_.find(run_id); q != queues_.end()) {
      auto it = q->second.results.find(save_id);
      if (it != q->second.results.end()) found = &it->second;
    }
    if (found == nullptr) {
      return absl::NotFoundError(StrCat("run '", run_id, "' has no shared-memory save ", save_id,
                                        " (ids come from SaveShared; the last ", kRememberedResults,
                                        " finished saves per run are remembered)"));
    }
    const auto now = std::chrono::steady_clock::now();
    if (found->state != SharedSaveResult::State::kPending || now >= deadline || cancelled()) {
      return *found;
    }
    cv_.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(100)));
  }
}

void SharedSaveQueue::WaitIdle(const std::string& run_id) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] {
    auto q = queues_.find(run_id);
    return q == queues_.end() || (q->second.jobs.empty() && !q->second.working);
  });
}

void SharedSaveQueue::Drain() {
  std::unique_lock lock(mu_);
  draining_ = true;
  cv_.wait(lock, [&] {
    for (const auto& [id, q] : queues_) {
      if (!q.jobs.empty() || q.working) return false;
    }
    return true;
  });
  for (auto& [id, q] : queues_) {
    if (q.worker.joinable()) q.worker.join();
  }
}

size_t SharedSaveQueue::pending() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [id, q] : queues_) n += q.jobs.size();
  return n;
}

}  // namespace ckptd::scheduler
