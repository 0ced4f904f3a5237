// The coordinator's verdict on one step of a multi-rank run: every rank's
// part reported durable (commit), a part that cannot come (abort), or
// neither yet (wait). Pure: no clock, no I/O; the coordinator feeds it what
// the part reports say and the time.
//
// A step of a run trained by R ranks is R GGUF files, one per rank, named
// as llama.cpp's gguf-split names shards (storage::SplitFileName). It is
// committed only when all R are durable: a step with a missing part is
// worse than no step (a resume from it fails, or mixes steps). Each part
// names the tensors it holds, whole or as a slice along one dimension of
// a tensor whose full shape it records; the step is consistent when no
// tensor is held twice and the slices of each sliced tensor tile its full
// extent exactly.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ckptd::policy {

// A slice of a tensor along one dimension: [offset, offset + length) of
// dimension `dim` of a tensor whose full shape is `full_ne` (ggml order).
struct TensorSlice {
  std::vector<uint64_t> full_ne;
  uint32_t dim = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct PartTensor {
  std::string name;
  std::optional<TensorSlice> slice;  // nullopt: the whole tensor
};

// What a rank reports once its part is durable (and, with the object
// store, uploaded).
struct PartReport {
  uint32_t rank = 0;
  uint32_t world_size = 0;
  uint64_t bytes = 0;
  std::string uuid;
  std::vector<PartTensor> tensors;
};

struct StepParts {
  uint64_t step = 0;
  uint32_t world_size = 0;               // the run's
  std::map<uint32_t, PartReport> parts;  // by rank
  double first_report_s = 0;             // when the first part of the step was reported
  // A rank said its part will not come (its trainer failed the save).
  std::map<uint32_t, std::string> failed;
};

enum class StepVerdict { kWait, kCommit, kAbort };

struct StepDecision {
  StepVerdict verdict = StepVerdict::kWait;
  std::string reason;             // why, for logs and the failed-step record
  std::vector<uint32_t> missing;  // ranks not reported yet (kWait, or kAbort on timeout)
};

// `timeout_s`: how long after the first report the coordinator waits for
// the rest before it aborts the step.
StepDecision DecideStep(const StepParts& step, double now_s, double timeout_s);

}  // namespace ckptd::policy
