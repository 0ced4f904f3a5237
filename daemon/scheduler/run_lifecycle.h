// A run's life outside its saves: opening it (OpenRun's domain rules),
// keeping its settings in its directory so they survive restarts,
// restoring them at start, and reading an idle run's settings back after
// they left memory (RunRegistry::UnloadIdle). rpc/ only converts and
// authorizes; the settings' memory is charged to the MemoryBudget here.
//
// The stored text is the transport's (the OpenRunRequest as given); a
// SettingsCodec, from the API layer, turns it into RunSettings both at
// OpenRun and at start, so the two cannot drift. Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/scheduler/memory_budget.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/storage/checkpoint_writer.h"

namespace ckptd::scheduler {

// Settings as a request declares them, converted.
struct DeclaredSettings {
  RunSettings settings;       // export profiles resolved
  bool tier_options = false;  // the request named TierOptions
  // The model tensors the request declared, if any: the run's exports are
  // planned against them at once, so a bad profile fails at OpenRun.
  std::vector<storage::PlannedTensor> model_tensors;
  uint64_t charge = 0;  // what the settings count against the memory budget
};

class SettingsCodec {
 public:
  virtual ~SettingsCodec() = default;
  // The settings `stored` (as OpenRun kept it) describes.
  virtual absl::StatusOr<DeclaredSettings> Decode(std::string_view stored) const = 0;
};

struct LifecycleOptions {
  bool tier_configured = false;  // [tier.s3] is on
};

class RunLifecycle final : public SettingsStore {
 public:
  // All three must outlive the lifecycle; it installs itself as the
  // registry's SettingsStore.
  RunLifecycle(RunRegistry* registry, const SettingsCodec* codec, MemoryBudget* budget,
               LifecycleOptions options);

  // OpenRun: the run registered or resumed with `declared`, its exports
  // planned, its settings stored (`stored`: the text Decode reads back) and
  // charged. Errors: the registry's; FAILED_PRECONDITION for tier options
  // or a multi-rank run without an object-storage tier; INVALID_ARGUMENT
  // for exports of a multi-rank run or that cannot be planned; a failure to
  // store the settings (the run is then not opened for saves).
  absl::StatusOr<std::shared_ptr<Run>> Open(const std::string& run_id, const std::string& run_dir,
                                            DeclaredSettings declared, std::string_view stored,
                                            bool* resumed);

  // At start, after RunRegistry::Scan: each run's settings as last opened,
  // so ShouldSave, saves, retention and listings behave as before the
  // restart. Problems come back as warnings.
  std::vector<std::string> RestoreAll();

  // SettingsStore: an idle run's settings, read back for a save (charged,
  // never refused: the run was admitted when it was opened).
  absl::StatusOr<RunSettings> Reload(const Run& run) override;
  void Unloaded(const Run& run) override;

 private:
  // The stored settings of `run`, exports planned. NOT_FOUND when none.
  absl::StatusOr<DeclaredSettings> ReadStored(const Run& run) const;
  // OpenRun's rules that need the daemon's facts, and the exports' plans.
  absl::Status Check(const DeclaredSettings& d) const;

  RunRegistry* registry_;
  const SettingsCodec* codec_;
  MemoryBudget* budget_;
  const LifecycleOptions options_;
};

}  // namespace ckptd::scheduler
