// DecideStep: consistency first (a bad report aborts at once), then
// completeness, then the deadline.
#include "daemon/policy/step_commit.h"

#include <algorithm>
#include <set>

#include "daemon/base/strings.h"

namespace ckptd::policy {
namespace {

std::string Shape(const std::vector<uint64_t>& ne) {
  std::string out = "[";
  for (size_t i = 0; i < ne.size(); ++i) StrAppend(&out, i ? ", " : "", ne[i]);
  return out + "]";
}

// Why the parts' tensors do not form one consistent step, or "".
std::string TensorProblem(const StepParts& step) {
  std::map<std::string, uint32_t> whole;  // name -> rank
  struct Sliced {
    TensorSlice first;
    uint32_t first_rank;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // offset, length
  };
  std::map<std::string, Sliced> sliced;
  for (const auto& [rank, part] : step.parts) {
    for (const PartTensor& t : part.tensors) {
      if (!t.slice) {
        if (auto [it, fresh] = whole.emplace(t.name, rank); !fresh) {
          return StrCat("tensor '", t.name, "' is held whole by ranks ", it->second, " and ", rank);
        }
        continue;
      }
      const TensorSlice& s = *t.slice;
      if (s.dim >= s.full_ne.size()) {
        return StrCat("rank ", rank, " slices tensor '", t.name, "' along dimension ", s.dim,
                      " of a ", s.full_ne.size(), "-dimensional shape");
      }
      auto [it, fresh] = sliced.emplace(t.name, Sliced{s, rank, {}});
      if (!fresh && (it->second.first.full_ne != s.full_ne || it->second.first.dim != s.dim)) {
        return StrCat("tensor '", t.name, "': rank ", it->second.first_rank, " slices shape ",
                      Shape(it->second.first.full_ne), " along dimension ", it->second.first.dim,
                      ", rank ", rank, " shape ", Shape(s.full_ne), " along dimension ", s.dim);
      }
      it->second.ranges.emplace_back(s.offset, s.length);
    }
  }
  for (auto& [name, s] : sliced) {
    if (whole.count(name)) {
      return StrCat("tensor '", name, "' is held whole by rank ", whole[name],
                    " and sliced by others");
    }
    std::sort(s.ranges.begin(), s.ranges.end());
    uint64_t next = 0;
    for (const auto& [offset, length] : s.ranges) {
      if (offset != next || length == 0) {
        return StrCat("the slices of tensor '", name, "' along dimension ", s.first.dim,
                      offset < next ? " overlap" : " leave a gap", " at ", std::min(offset, next));
      }
      next = offset + length;
    }
    if (next != s.first.full_ne[s.first.dim]) {
      return StrCat("the slices of tensor '", name, "' cover ", next, " of the ",
                    s.first.full_ne[s.first.dim], " entries of dimension ", s.first.dim);
    }
  }
  return "";
}

}  // namespace

StepDecision DecideStep(const StepParts& step, double now_s, double timeout_s) {
  StepDecision d;
  if (step.world_size == 0) {
    d.verdict = StepVerdict::kAbort;
    d.reason = "the run has world size 0; a multi-rank run has at least one rank";
    return d;
  }
  for (const auto& [rank, part] : step.parts) {
    if (rank >= step.world_size || part.rank != rank) {
      d.verdict = StepVerdict::kAbort;
      d.reason =
          StrCat("a part reports rank ", part.rank, "; the run has ranks 0..", step.world_size - 1);
      return d;
    }
    if (part.world_size != step.world_size) {
      d.verdict = StepVerdict::kAbort;
      d.reason = StrCat("rank ", rank, " saved for world size ", part.world_size, "; the run's is ",
                        step.world_size);
      return d;
    }
  }
  if (!step.failed.empty()) {
    d.verdict = StepVerdict::kAbort;
    const auto& [rank, why] = *step.failed.begin();
    d.reason = StrCat("rank ", rank, " failed its part: ", why);
    return d;
  }
  for (uint32_t r = 0; r < step.world_size; ++r) {
    if (!step.parts.count(r)) d.missing.push_back(r);
  }
  if (d.missing.empty()) {
    if (std::string problem = TensorProblem(step); !problem.empty()) {
      d.verdict = StepVerdict::kAbort;
      d.reason = problem;
      return d;
    }
    d.verdict = StepVerdict::kCommit;
    d.reason = StrCat("all ", step.world_size, " parts are durable");
    return d;
  }
  if (now_s - step.first_report_s >= timeout_s) {
    d.verdict = StepVerdict::kAbort;
    std::string ranks;
    for (uint32_t r : d.missing) StrAppend(&ranks, ranks.empty() ? "" : ", ", r);
    d.reason = StrCat("no part from rank", d.missing.size() > 1 ? "s " : " ", ranks, " within ",
                      timeout_s, " s of the first");
    return d;
  }
  d.reason = StrCat("waiting for ", d.missing.size(), " of ", step.world_size, " parts");
  return d;
}

}  // namespace ckptd::policy
