// The multipart plan.
#include "daemon/policy/part_plan.h"

#include <algorithm>

namespace ckptd::policy {
namespace {

struct Stretch {
  uint64_t offset = 0;
  uint64_t length = 0;
  std::optional<uint64_t> src;  // set: equal to the source from there
};

// [0, size) as alternating stretches to send and to copy; equal ranges that
// touch (in the file and in the source) joined.
std::vector<Stretch> Stretches(uint64_t size, std::vector<SameRange> same) {
  std::sort(same.begin(), same.end(),
            [](const SameRange& a, const SameRange& b) { return a.offset < b.offset; });
  std::vector<Stretch> out;
  uint64_t at = 0;
  for (const SameRange& r : same) {
    if (r.length == 0 || r.offset < at || r.offset >= size || r.length > size - r.offset) continue;
    if (r.offset > at) out.push_back({at, r.offset - at, std::nullopt});
    if (!out.empty() && out.back().src && out.back().offset + out.back().length == r.offset &&
        *out.back().src + out.back().length == r.src_offset) {
      out.back().length += r.length;
    } else {
      out.push_back({r.offset, r.length, r.src_offset});
    }
    at = r.offset + r.length;
  }
  if (at < size) out.push_back({at, size - at, std::nullopt});
  return out;
}

void AppendSend(std::vector<Stretch>* out, uint64_t offset, uint64_t length) {
  if (length == 0) return;
  if (!out->empty() && !out->back().src) {
    out->back().length += length;
  } else {
    out->push_back({offset, length, std::nullopt});
  }
}

}  // namespace

std::vector<PlannedPart> PlanParts(uint64_t size, uint64_t part_size, uint64_t min_part,
                                   uint64_t max_copy, std::vector<SameRange> same) {
  part_size = std::max<uint64_t>(part_size, 1);
  max_copy = std::max(max_copy, min_part);
  std::vector<Stretch> stretches = Stretches(size, std::move(same));
  // Copies too short to be a part are sent.
  std::vector<Stretch> s;
  for (const Stretch& x : stretches) {
    if (x.src && x.length >= min_part) {
      s.push_back(x);
    } else {
      AppendSend(&s, x.offset, x.length);
    }
  }
  // A stretch to send shorter than a part, before a copy, takes bytes from
  // the start of that copy; a copy left too short is sent whole.
  std::vector<Stretch> fixed;
  for (size_t i = 0; i < s.size(); ++i) {
    Stretch x = s[i];
    if (!x.src && x.length < min_part && i + 1 < s.size()) {
      Stretch& next = s[i + 1];  // a copy: sends are joined
      const uint64_t take = std::min(min_part - x.length, next.length);
      x.length += take;
      next.offset += take;
      *next.src += take;
      next.length -= take;
      if (next.length < min_part) {
        x.length += next.length;
        next.length = 0;
      }
      AppendSend(&fixed, x.offset, x.length);
      if (next.length == 0) ++i;  // consumed
      continue;
    }
    if (x.src) {
      fixed.push_back(x);
    } else {
      AppendSend(&fixed, x.offset, x.length);
    }
  }
  std::vector<PlannedPart> parts;
  for (size_t i = 0; i < fixed.size(); ++i) {
    const Stretch& x = fixed[i];
    const bool last = i + 1 == fixed.size();
    if (x.src) {
      const uint64_t n = (x.length + max_copy - 1) / max_copy;
      for (uint64_t k = 0, at = 0; k < n; ++k) {
        const uint64_t len = k + 1 == n ? x.length - at : x.length / n;
        parts.push_back({x.offset + at, len, *x.src + at});
        at += len;
      }
      continue;
    }
    for (uint64_t at = 0; at < x.length;) {
      uint64_t len = std::min(part_size, x.length - at);
      const uint64_t rest = x.length - at - len;
      // A remainder too short to be a part (unless it ends the file) joins this one.
      if (rest > 0 && rest < min_part && !last) len += rest;
      parts.push_back({x.offset + at, len, std::nullopt});
      at += len;
    }
  }
  return parts;
}

}  // namespace ckptd::policy
