// The scrubber: re-reads every committed file of every run in turn and
// checks every digest (gguf::Verify: tensor digests, content digest,
// metadata digest, zero padding), at most `bytes_per_second` on average. A
// damaged file is quarantined through RunRegistry::QuarantineDamaged (an
// export alone; a model or train file with its step, `latest` moving back),
// and the registry's observer may heal the step from the object store; an
// intact file is handed to the observer, which may check the store's copy
// of it against it (the bytes it reads count against the same rate).
// Tick() is called once a second from one timer thread; not thread-safe
// otherwise.
#pragma once

#include <cstdint>
#include <string>

#include "daemon/env/env.h"
#include "daemon/scheduler/run_registry.h"

namespace ckptd::scheduler {

class Scrubber {
 public:
  // Files changed less than `min_age_s` ago are left for a later pass: they
  // were hashed as they were written, and a file a person is editing is
  // theirs for now.
  Scrubber(env::Env* env, RunRegistry* registry, uint64_t bytes_per_second, double min_age_s)
      : env_(env),
        registry_(registry),
        bytes_per_second_(bytes_per_second),
        min_age_s_(min_age_s) {}

  // One second's work: verifies files until this second's bytes are spent
  // (a file larger than that is verified whole, and the next seconds pay
  // for it) or the pass ends (the next starts at the next tick).
  void Tick();

  struct Totals {
    uint64_t files = 0;
    uint64_t bytes = 0;
    uint64_t damaged = 0;
    uint64_t passes = 0;  // complete passes over every run
  };
  const Totals& totals() const { return totals_; }

 private:
  struct Next {
    std::shared_ptr<Run> run;
    uint64_t step = 0;
    std::string path;
  };
  // The file after the cursor (run id, step, path), in order; nullopt at
  // the end of a pass (the cursor goes back to the start).
  std::optional<Next> Advance();
  // Verifies one file; quarantines it when damaged. Returns bytes read.
  uint64_t Verify(const Next& next);

  env::Env* env_;
  RunRegistry* registry_;
  const uint64_t bytes_per_second_;
  const double min_age_s_;
  int64_t credit_ = 0;  // bytes this second may still read (negative: owed)
  std::string run_id_;  // the cursor: the last file verified
  uint64_t step_ = 0;
  std::string path_;
  Totals totals_;
};

}  // namespace ckptd::scheduler
