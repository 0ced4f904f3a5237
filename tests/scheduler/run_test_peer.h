// Tests of the scheduler reach a Run's private state through this peer
// (the production code outside scheduler/ reads snapshots instead).
#pragma once

#include "daemon/scheduler/run_registry.h"

namespace ckptd::scheduler {

class RunTestPeer {
 public:
  static absl::Mutex& mu(Run& r) { return r.mu_; }
  static absl::Mutex& save_mu(Run& r) { return r.save_mu_; }
  static std::optional<RunSettings>& settings(Run& r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return r.settings_;
  }
  static bool& settings_unloaded(Run& r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return r.settings_unloaded_;
  }
  static RunState& state(Run& r) ABSL_NO_THREAD_SAFETY_ANALYSIS { return r.state_; }
  static std::string& write_error(Run& r) ABSL_NO_THREAD_SAFETY_ANALYSIS { return r.write_error_; }
  static std::set<uint64_t>& in_flight(Run& r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return r.in_flight_;
  }
  static double& reference_time_s(Run& r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return r.reference_time_s_;
  }
  static double& last_active_s(Run& r) ABSL_NO_THREAD_SAFETY_ANALYSIS { return r.last_active_s_; }
  static void MarkActive(Run& r, double now) ABSL_NO_THREAD_SAFETY_ANALYSIS { r.MarkActive(now); }
};

}  // namespace ckptd::scheduler
