// The memory budget's accounting.
#include "daemon/scheduler/memory_budget.h"

#include "daemon/base/strings.h"

namespace ckptd::scheduler {

MemoryBudget::Charge& MemoryBudget::Charge::operator=(Charge&& o) noexcept {
  if (this != &o) {
    Release();
    budget_ = o.budget_;
    bytes_ = o.bytes_;
    o.budget_ = nullptr;
  }
  return *this;
}

void MemoryBudget::Charge::Release() {
  if (budget_ != nullptr) budget_->Return(bytes_);
  budget_ = nullptr;
}

absl::Status MemoryBudget::CheckLocked(uint64_t bytes, uint64_t freed,
                                       const std::string& what) const {
  const uint64_t after = used_ - freed + bytes;
  if (after <= limit_) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      StrCat(what, " needs ", bytes, " bytes of the daemon's memory budget, which has ",
             limit_ - std::min(limit_, used_ - freed), " of ", limit_,
             " left (server.memory_budget_bytes); send less metadata, wait for other saves, "
             "close runs you no longer use (their settings leave memory after "
             "server.unload_idle_runs_seconds), or raise the budget"));
}

absl::Status MemoryBudget::Reserve(uint64_t bytes, const std::string& what, Charge* out) {
  absl::MutexLock lock(&mu_);
  if (absl::Status st = CheckLocked(bytes, 0, what); !st.ok()) return st;
  used_ += bytes;
  *out = Charge(this, bytes);
  return absl::OkStatus();
}

absl::Status MemoryBudget::ReserveForRun(const std::string& run_id, uint64_t bytes, bool force) {
  absl::MutexLock lock(&mu_);
  auto it = runs_.find(run_id);
  const uint64_t held = it == runs_.end() ? 0 : it->second;
  absl::Status st =
      CheckLocked(bytes, held, StrCat("the settings of run '", Printable(run_id), "'"));
  if (!st.ok() && !force) return st;
  used_ = used_ - held + bytes;
  runs_[run_id] = bytes;
  return st;
}

void MemoryBudget::ReleaseRun(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  auto it = runs_.find(run_id);
  if (it == runs_.end()) return;
  used_ -= std::min(used_, it->second);
  runs_.erase(it);
}

uint64_t MemoryBudget::HeldByRun(const std::string& run_id) const {
  absl::MutexLock lock(&mu_);
  auto it = runs_.find(run_id);
  return it == runs_.end() ? 0 : it->second;
}

uint64_t MemoryBudget::used() const {
  absl::MutexLock lock(&mu_);
  return used_;
}

void MemoryBudget::Return(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  used_ -= std::min(used_, bytes);
}

}  // namespace ckptd::scheduler
