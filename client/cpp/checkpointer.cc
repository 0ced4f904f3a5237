// Trainer-side checkpointer: double-buffered shm saves, stream fallback.
#include "ckptd/checkpointer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "client/cpp/staged_copy.h"

namespace ckptd {
namespace {

constexpr size_t kArenaGranule = 2 << 20;  // arena sizes are rounded up to this
constexpr size_t kParallelCopyMin = 32 << 20;
constexpr size_t kRememberedFinished = 16;
// Beyond the tensor bytes: the progress counter's 64 bytes and the
// alignment before each tensor (up to 4 KiB for large ones: room for 500
// page-aligned tensors; a save that needs more resizes the arenas once).
constexpr size_t kArenaOverhead = 2 << 20;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

Checkpointer::Checkpointer(Run* run, CheckpointerOptions options)
    : run_(run), options_(std::move(options)) {
  options_.buffers = std::max(1, options_.buffers);
  if (options_.copy_threads <= 0) {
    options_.copy_threads =
        static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
  }
}

Checkpointer::~Checkpointer() { (void)Wait(); }

void Checkpointer::Log(const std::string& line) const {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "ckptd: %s\n", line.c_str());
  }
}

absl::StatusOr<std::unique_ptr<Checkpointer>> Checkpointer::Create(Run* run,
                                                                   CheckpointerOptions options) {
  std::unique_ptr<Checkpointer> c(new Checkpointer(run, std::move(options)));
  const std::string& target = run->client()->target();
  if (c->options_.force_stream) {
    c->Log("run " + run->id() + ": saving over the stream path (force_stream)");
  } else if (!target.starts_with("unix:")) {
    c->Log("run " + run->id() + ": the daemon at " + target +
           " is remote, so shared memory cannot reach it; saving over the stream path");
  } else if (run->opened().arena_socket().empty()) {
    c->Log("run " + run->id() +
           ": the daemon has shared-memory saves off (shm.enabled); saving over the stream path");
  } else if (absl::Status st = c->SetUpSharedMemory(); !st.ok()) {
    c->Log("run " + run->id() + ": shared-memory saves unavailable (" + std::string(st.message()) +
           "); saving over the stream path");
  }
  return c;
}

absl::Status Checkpointer::SetUpSharedMemory() {
  generation_ = run_->generation();
  auto channel = ArenaChannel::Connect(run_->opened().arena_socket());
  if (!channel.ok()) return channel.status();
  channel_ = std::move(*channel);
  shared_ = true;
  if (options_.pointers) {
    auto attached = channel_->Attach(run_->opened().arena_token());
    if (attached.ok()) {
      attachment_ = *attached;
      return absl::OkStatus();
    }
    Log("run " + run_->id() + ": pointer saves unavailable (" +
        std::string(attached.status().message()) + "); copying into shared-memory arenas");
  }
  if (options_.arena_bytes > 0) return EnsureArenas(options_.arena_bytes + kArenaOverhead);
  return absl::OkStatus();
}

absl::Status Checkpointer::Reserve(size_t bytes) {
  if (!shared_ || attachment_) return absl::OkStatus();
  return EnsureArenas(bytes + kArenaOverhead);
}

absl::Status Checkpointer::EnsureArenas(size_t bytes) {
  if (!slots_.empty() && slots_.front().arena->size() >= bytes) return absl::OkStatus();
  Defer(Wait());  // old arenas must be idle; what they report waits for the next Wait()
  slots_.clear();
  const size_t size = RoundUp(std::max(bytes, options_.arena_bytes), kArenaGranule);
  for (int i = 0; i < options_.buffers; ++i) {
    auto arena = Arena::Create(size, "ckptd-" + run_->id());
    if (!arena.ok()) return arena.status();
    auto id = channel_->Register((*arena)->fd(), run_->opened().arena_token());
    if (!id.ok()) return id.status();
    slots_.push_back(Slot{std::move(*arena), *id, std::nullopt});
  }
  return absl::OkStatus();
}

namespace {

// The daemon no longer knows an arena or attachment of ours (it restarted,
// or the arena connection closed).
bool LostRegistration(const absl::Status& st) {
  const std::string_view msg(st.message().data(), st.message().size());
  return st.code() == absl::StatusCode::kNotFound &&
         (msg.find("is not registered") != std::string_view::npos ||
          msg.find("attachment") != std::string_view::npos);
}

}  // namespace

absl::Status Checkpointer::Recover(const absl::Status& cause, double* deadline) {
  if (!Run::IsReconnectable(cause) && !LostRegistration(cause)) return cause;
  const double timeout = run_->client()->options().reconnect_timeout_s;
  if (timeout <= 0) return cause;
  if (*deadline == 0) *deadline = Now() + timeout;
  if (run_->generation() == generation_) {
    if (absl::Status st = run_->Reopen(cause, *deadline); !st.ok()) return st;
  }
  return Resync();
}

absl::Status Checkpointer::Resync() {
  if (run_->generation() == generation_ && channel_ != nullptr) return absl::OkStatus();
  const std::string& token = run_->opened().arena_token();
  auto channel = ArenaChannel::Connect(run_->opened().arena_socket());
  if (!channel.ok()) return channel.status();
  channel_ = std::move(*channel);
  if (attachment_) {
    auto attached = channel_->Attach(token);
    if (!attached.ok()) return attached.status();
    attachment_ = *attached;
  }
  for (Slot& slot : slots_) {
    if (slot.arena == nullptr) continue;
    auto id = channel_->Register(slot.arena->fd(), token);
    if (!id.ok()) return id.status();
    slot.arena_id = *id;
  }
  generation_ = run_->generation();
  Log("run " + run_->id() + ": reconnected to the daemon; arenas registered again");
  return absl::OkStatus();
}

absl::StatusOr<v1::SaveSharedResponse> Checkpointer::SendShared(Slot& slot, double stall_s,
                                                                const v1::TensorLocation* progress,
                                                                bool fresh) {
  double deadline = 0;
  while (true) {
    if (fresh && resent_generation_ != run_->generation()) {
      if (absl::Status st = ResendLost(); !st.ok()) return st;
    }
    if (absl::Status st = Resync(); !st.ok()) {
      if (absl::Status rec = Recover(st, &deadline); !rec.ok()) return rec;
      continue;
    }
    const Sent& sent = slot.sent;
    std::vector<v1::TensorLocation> locations(sent.tensors.size());
    for (size_t i = 0; i < locations.size(); ++i) {
      locations[i].set_arena_id(slot.arena_id);
      locations[i].set_offset(sent.offsets[i]);
    }
    v1::TensorLocation moved;
    if (progress != nullptr) {
      moved = *progress;
      moved.set_arena_id(slot.arena_id);
    }
    auto r = run_->SaveShared(sent.step, sent.tensors, locations, sent.metrics, sent.options,
                              stall_s, progress != nullptr ? &moved : nullptr, sent.final_snapshot);
    if (r.ok()) return r;
    if (absl::Status rec = Recover(r.status(), &deadline); !rec.ok()) return rec;
  }
}

absl::Status Checkpointer::ResendLost() {
  resent_generation_ = run_->generation();
  std::vector<Slot*> pending;
  for (Slot& slot : slots_) {
    if (slot.arena != nullptr && slot.save_id) pending.push_back(&slot);
  }
  // In step order: the daemon takes a run's steps in increasing order.
  std::sort(pending.begin(), pending.end(),
            [](const Slot* a, const Slot* b) { return a->sent.step < b->sent.step; });
  for (Slot* slot : pending) {
    auto known = run_->WaitSaved(*slot->save_id, 0, 0, slot->sent.step);
    if (known.ok()) continue;  // queued, or committed before the restart: Settle reports it
    if (known.status().code() != absl::StatusCode::kNotFound) return known.status();
    slot->sent.options.force = true;  // it was accepted once; the schedule does not apply
    auto again = SendShared(*slot, 0, nullptr);
    if (!again.ok()) return again.status();
    if (again->result() != v1::SaveSharedResponse::RESULT_ACCEPTED) {
      slot->save_id.reset();  // skipped: a final snapshot the run no longer wants
      continue;
    }
    Log("run " + run_->id() + ": step " + std::to_string(slot->sent.step) +
        " was lost when the daemon restarted; sent again from its arena");
    slot->save_id = again->save_id();
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Checkpointer::Settle(Slot& slot, double timeout_s) {
  if (!slot.save_id) return true;
  const double asked = Now();
  auto r = run_->WaitSaved(*slot.save_id, timeout_s, slot.stall_s, slot.sent.step);
  if (!r.ok() && r.status().code() == absl::StatusCode::kNotFound) {
    // Lost with a restarted daemon: an arena still holds the bytes, so send
    // it again; a pointer save's tensors have moved on, so report it.
    if (slot.arena != nullptr) {
      if (absl::Status st = ResendLost(); !st.ok()) return st;
      return !slot.save_id.has_value();
    }
    // Settled, as a failure Wait() and Close() report (whoever settles the
    // slot: dropping the status here once lost the step without a word).
    slot.save_id.reset();
    Defer(absl::DataLossError(
        "step " + std::to_string(slot.sent.step) +
        ": the daemon restarted after reading this save's tensors and before committing it, "
        "so the step is not on disk (" +
        std::string(r.status().message()) +
        "); save a later step, or restore the last committed one"));
    return true;
  }
  if (!r.ok()) return r.status();
  slot.stall_s = 0;  // reported
  switch (r->state()) {
    case v1::WaitSavedResponse::STATE_PENDING:
      // Answered without waiting (the daemon's waiting calls are all taken:
      // server.max_waiting_calls): pause before asking again.
      if (timeout_s > 0 && Now() - asked < std::min(timeout_s, 0.05)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      return false;
    case v1::WaitSavedResponse::STATE_FAILED:
      Defer(absl::Status(static_cast<absl::StatusCode>(r->error_code()),
                         "step " + std::to_string(r->step()) + ": " + r->error()));
      break;
    default:
      finished_.push_back(*r);
      if (finished_.size() > kRememberedFinished) finished_.erase(finished_.begin());
      break;
  }
  slot.save_id.reset();
  return true;
}

absl::StatusOr<Checkpointer::Slot*> Checkpointer::FreeSlot(double* waited_s) {
  for (Slot& s : slots_) {
    if (!s.save_id) return &s;
  }
  for (Slot& s : slots_) {
    auto done = Settle(s, 0);
    if (!done.ok()) return done.status();
    if (*done) return &s;
  }
  // Every arena is busy: wait for the oldest save (a run's saves finish in order).
  Slot* oldest = &*std::min_element(slots_.begin(), slots_.end(), [](const Slot& a, const Slot& b) {
    return *a.save_id < *b.save_id;
  });
  const double t0 = Now();
  while (true) {
    auto done = Settle(*oldest, 60);
    if (!done.ok()) return done.status();
    if (*done) break;
  }
  *waited_s = Now() - t0;
  return oldest;
}

void Checkpointer::Account(double stall_s) {
  stats_.last_stall_s = stall_s;
  stats_.total_stall_s += stall_s;
  stats_.max_stall_s = std::max(stats_.max_stall_s, stall_s);
}

absl::StatusOr<bool> Checkpointer::Stage(double t0, uint64_t step,
                                         const std::vector<TensorView>& tensors,
                                         const std::map<std::string, double>& metrics,
                                         const SaveOptions& options, bool final_snapshot) {
  if (attachment_) return SendPointers(t0, step, tensors, metrics, options, final_snapshot);
  const ArenaLayout layout = PlanArenaLayout(tensors);
  const std::vector<uint64_t>& offsets = layout.offsets;
  if (absl::Status st = EnsureArenas(layout.bytes); !st.ok()) {
    Log("run " + run_->id() + ": cannot set up shared-memory arenas (" + std::string(st.message()) +
        "); saving over the stream path from now on");
    shared_ = false;
    slots_.clear();
    if (final_snapshot) return false;  // Close() sends it with CloseRun
    return StreamSave(t0, step, tensors, metrics, options);
  }
  double waited = 0;
  auto slot = FreeSlot(&waited);
  if (!slot.ok()) return slot.status();
  if (waited > 0) {
    stats_.buffer_waits++;
    stats_.buffer_wait_s += waited;
  }
  Slot& free = **slot;
  auto* counter = reinterpret_cast<uint64_t*>(free.arena->data());
  free.sent = Sent{step, tensors, offsets, metrics, options, final_snapshot};
  for (TensorView& t : free.sent.tensors) t.data = nullptr;
  auto copy = [&] {
    const double copy_start = Now();
    CopyInOrder(free.arena->data(), counter, tensors, offsets,
                layout.data_bytes < kParallelCopyMin ? 1 : options_.copy_threads);
    stats_.last_copy_s = Now() - copy_start;
  };
  v1::TensorLocation progress;
  if (options_.overlap_copy) {
    // Announce the save first: the daemon starts writing as the progress
    // counter (the arena's first 8 bytes) advances.
    std::atomic_ref<uint64_t>(*counter).store(0, std::memory_order_release);
    progress.set_arena_id(free.arena_id);
    progress.set_offset(0);
  } else {
    copy();
  }
  auto r = SendShared(free, 0, options_.overlap_copy ? &progress : nullptr, /*fresh=*/true);
  if (!r.ok()) return r.status();
  if (r->result() == v1::SaveSharedResponse::RESULT_SKIPPED) {
    stats_.skipped++;
    return false;
  }
  free.save_id = r->save_id();
  if (options_.overlap_copy) copy();
  free.stall_s = Now() - t0;
  Account(free.stall_s);
  stats_.saves++;
  return true;
}

absl::StatusOr<bool> Checkpointer::StreamSave(double t0, uint64_t step,
                                              const std::vector<TensorView>& tensors,
                                              const std::map<std::string, double>& metrics,
                                              const SaveOptions& options) {
  auto r = run_->Save(step, tensors, metrics, options);
  if (!r.ok()) return r.status();
  if (r->result() == v1::SaveResponse::RESULT_SKIPPED) {
    stats_.skipped++;
    return false;
  }
  stats_.saves++;
  Account(Now() - t0);
  return true;
}

absl::StatusOr<bool> Checkpointer::SendPointers(double t0, uint64_t step,
                                                const std::vector<TensorView>& tensors,
                                                const std::map<std::string, double>& metrics,
                                                const SaveOptions& options, bool final_snapshot) {
  // Forget pointer saves that finished (their outcome is kept for Wait()).
  std::erase_if(slots_, [&](Slot& s) {
    if (s.arena != nullptr) return false;
    auto done = Settle(s, 0);
    return done.ok() && *done;
  });
  absl::StatusOr<v1::SaveSharedResponse> r;
  for (double deadline = 0;;) {
    if (absl::Status st = Resync(); !st.ok()) {
      if (absl::Status rec = Recover(st, &deadline); !rec.ok()) return rec;
      continue;
    }
    r = run_->SavePointers(step, tensors, *attachment_, metrics, options, final_snapshot);
    if (r.ok()) break;
    if (absl::Status rec = Recover(r.status(), &deadline); !rec.ok()) return rec;
  }
  if (r->result() == v1::SaveSharedResponse::RESULT_SKIPPED) {
    stats_.skipped++;
    return false;
  }
  // Read: the tensors are the trainer's again; the commit is waited for by Wait().
  slots_.push_back(Slot{nullptr, 0, r->save_id()});
  slots_.back().sent.step = step;
  slots_.back().stall_s = Now() - t0;
  Account(slots_.back().stall_s);
  stats_.saves++;
  return true;
}

absl::StatusOr<bool> Checkpointer::MaybeSave(uint64_t step, const std::vector<TensorView>& tensors,
                                             const std::map<std::string, double>& metrics) {
  const double t0 = Now();
  if (!shared_) return StreamSave(t0, step, tensors, metrics, SaveOptions{});  // asks ShouldSave
  auto due = run_->ShouldSave(step);
  if (!due.ok()) return due.status();
  if (!due->due()) {
    stats_.skipped++;
    return false;
  }
  return Stage(t0, step, tensors, metrics, SaveOptions{});
}

absl::StatusOr<bool> Checkpointer::Save(uint64_t step, const std::vector<TensorView>& tensors,
                                        const std::map<std::string, double>& metrics,
                                        const SaveOptions& options) {
  const double t0 = Now();
  if (!shared_) return StreamSave(t0, step, tensors, metrics, options);
  return Stage(t0, step, tensors, metrics, options);
}

void Checkpointer::Defer(const absl::Status& st) {
  if (st.ok()) return;
  if (deferred_error_.ok()) {
    deferred_error_ = st;
    return;
  }
  // Every failure is named (up to a bounded message), none hidden behind the first.
  constexpr size_t kMaxMessage = 4096;
  constexpr std::string_view kMore = " (and more failures)";
  std::string msg(deferred_error_.message());
  if (msg.size() < kMaxMessage) {
    msg += "; ";
    msg.append(st.message().data(), st.message().size());
  } else if (!msg.ends_with(kMore)) {
    msg += kMore;
  }
  deferred_error_ = absl::Status(deferred_error_.code(), msg);
}

absl::Status Checkpointer::Wait() {
  constexpr double kPerCall = 60;  // WaitSaved waits at most 600 s per call
  for (Slot& s : slots_) {
    absl::StatusOr<bool> done = true;
    for (double left = options_.wait_timeout_s; left >= 0; left -= kPerCall) {
      done = Settle(s, std::min(left, kPerCall));
      if (!done.ok() || *done) break;
    }
    if (!done.ok()) {
      Defer(done.status());
      s.save_id.reset();  // the daemon is gone or forgot it: nothing more to wait for
    } else if (!*done) {
      Defer(absl::DeadlineExceededError("step " + std::to_string(s.sent.step) +
                                        " is still being written after wait_timeout_s"));
    }
  }
  std::erase_if(slots_, [](const Slot& s) { return s.arena == nullptr && !s.save_id; });
  return std::exchange(deferred_error_, absl::OkStatus());
}

absl::StatusOr<v1::CloseRunResponse> Checkpointer::Close(
    uint64_t step, const std::vector<TensorView>& tensors,
    const std::map<std::string, double>& metrics) {
  absl::Status waited = Wait();
  std::optional<v1::WaitSavedResponse> final;
  bool final_sent = false;
  if (shared_ && !tensors.empty() && waited.ok()) {
    auto staged = Stage(Now(), step, tensors, metrics, SaveOptions{}, /*final_snapshot=*/true);
    if (!staged.ok()) return staged.status();
    final_sent = *staged || shared_;  // staged, or skipped by the run's final_on_close
    if (*staged) {
      if (absl::Status st = Wait(); !st.ok()) return st;
      final = finished_.back();
    }
  }
  auto r = run_->Close(step, final_sent ? std::vector<TensorView>{} : tensors, metrics);
  if (!waited.ok()) return waited;
  if (r.ok() && final) {
    v1::SaveResponse* s = r->mutable_final_save();
    s->set_result(v1::SaveResponse::RESULT_COMMITTED);
    s->set_reason("final snapshot");
    *s->mutable_checkpoint() = final->checkpoint();
    *s->mutable_timings() = final->timings();
  }
  return r;
}

}  // namespace ckptd
