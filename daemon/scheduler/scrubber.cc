// The scrubber's pass over committed files.
#include "daemon/scheduler/scrubber.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <tuple>

#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/env/posix_error.h"
#include "daemon/gguf/reader.h"

namespace ckptd::scheduler {

void Scrubber::Tick() {
  if (bytes_per_second_ == 0) return;
  credit_ = std::min<int64_t>(credit_ + static_cast<int64_t>(bytes_per_second_),
                              static_cast<int64_t>(bytes_per_second_));
  // At most one pass a tick: files too young to verify cost nothing but
  // must not make the loop spin.
  while (credit_ > 0) {
    std::optional<Next> next = Advance();
    if (!next) return;  // a pass ended
    credit_ -= static_cast<int64_t>(Verify(*next));
  }
}

std::optional<Scrubber::Next> Scrubber::Advance() {
  std::vector<std::shared_ptr<Run>> runs = registry_->List();
  std::sort(runs.begin(), runs.end(),
            [](const auto& a, const auto& b) { return a->id() < b->id(); });
  // Every committed file, ordered by (run, step, path); the first after the cursor.
  for (const auto& run : runs) {
    if (run->id() < run_id_) continue;
    const RunSnapshot snap = run->Snapshot();
    for (const auto& [step, record] : *snap.catalog) {
      std::vector<std::string> files = {record.model_path};
      if (!record.train_path.empty()) files.push_back(record.train_path);
      for (const auto& e : record.exports) files.push_back(e.path);
      std::sort(files.begin(), files.end());
      for (const std::string& path : files) {
        if (std::tie(run->id(), step, path) <= std::tie(run_id_, step_, path_)) continue;
        run_id_ = run->id();
        step_ = step;
        path_ = path;
        return Next{run, step, path};
      }
    }
  }
  // The end of a pass: the next one starts from the first file.
  if (!run_id_.empty()) {
    ++totals_.passes;
    spdlog::debug("scrub: pass {} done: {} files, {} bytes, {} damaged so far", totals_.passes,
                  totals_.files, totals_.bytes, totals_.damaged);
  }
  run_id_.clear();
  step_ = 0;
  path_.clear();
  return std::nullopt;
}

uint64_t Scrubber::Verify(const Next& next) {
  auto stat = env_->Stat(next.path);
  if (!stat.ok() || NowSeconds() - stat->changed_s < min_age_s_) return 0;
  auto file = env_->OpenForRead(next.path);
  if (!file.ok()) {
    // Gone since the snapshot (retention, an overwrite): nothing to check.
    if (absl::IsNotFound(file.status())) return 0;
    spdlog::warn("scrub run={} step={}: cannot open {}: {}", next.run->id(), next.step, next.path,
                 file.status().message());
    return 0;
  }
  const uint64_t size = (*file)->size();
  auto header = gguf::ReadHeader(**file);
  absl::Status st = header.ok() ? gguf::Verify(**file, *header).status() : header.status();
  ++totals_.files;
  totals_.bytes += size;
  if (st.ok()) return size + registry_->ScrubbedIntact(*next.run, next.step, next.path);
  if (absl::IsFailedPrecondition(st)) return size;  // carries no digests
  if (env::IsIoError(st)) {  // the disk said no: not proof of damage; the next pass retries
    spdlog::warn("scrub run={} step={}: reading {} failed: {}", next.run->id(), next.step,
                 next.path, st.message());
    return size;
  }
  ++totals_.damaged;
  auto damaged = registry_->QuarantineDamaged(*next.run, next.step, next.path,
                                              StrCat("scrub: ", st.message()));
  if (!damaged.ok() && !absl::IsNotFound(damaged.status())) {
    spdlog::error("scrub run={} step={}: quarantining {} failed: {}", next.run->id(), next.step,
                  next.path, damaged.status().message());
  }
  return size;
}

}  // namespace ckptd::scheduler
