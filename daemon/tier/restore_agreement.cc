// Agreeing on the step to restore, through the store.
#include "daemon/tier/restore_agreement.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"

namespace ckptd::tier {
namespace {

std::string RanksList(const std::vector<uint32_t>& ranks) {
  std::string out;
  for (uint32_t r : ranks) StrAppend(&out, out.empty() ? "" : ", ", r);
  return out;
}

// This rank's report: put now, or the one an earlier call of this attempt put.
absl::StatusOr<RestoreReport> PutOnce(ObjectStore& store, const RunKeys& keys,
                                      const RestoreAgreementRequest& req, bool* before) {
  const std::string key = keys.RestoreReport(req.attempt, req.mine.rank);
  RestoreReport mine{.run_id = req.run_id,
                     .attempt = req.attempt,
                     .rank = req.mine.rank,
                     .world_size = req.mine.world_size,
                     .steps = {req.mine.steps.begin(), req.mine.steps.end()},
                     .node = req.node,
                     .time_utc = FormatUtc(NowSeconds())};
  CKPTD_ASSIGN_OR_RETURN(std::optional<ObjectInfo> there, store.Head(key));
  if (!there) {
    absl::StatusOr<std::string> put = store.Put(key, mine.ToJson(), Precondition::kIfAbsent);
    if (put.ok()) {
      *before = false;
      return mine;
    }
    if (!absl::IsAlreadyExists(put.status())) return put.status();
  }
  // Reports never change: an earlier call's stands.
  CKPTD_ASSIGN_OR_RETURN(std::string text, store.Get(key));
  CKPTD_ASSIGN_OR_RETURN(RestoreReport earlier, RestoreReport::Parse(text, store.UrlOf(key)));
  *before = true;
  const uint64_t newest_reported = earlier.steps.empty() ? 0 : earlier.steps.back();
  if (req.newest_local && (earlier.steps.empty() || *req.newest_local > newest_reported)) {
    return absl::FailedPreconditionError(StrCat(
        "agree_attempt '", req.attempt, "' of run '", req.run_id, "' was used already: rank ",
        req.mine.rank, " reported at ", earlier.time_utc,
        earlier.steps.empty() ? std::string(" no steps") : StrCat(" steps up to ", newest_reported),
        ", and has saved step ", *req.newest_local,
        " since; give each restart a new attempt id (every rank the same one)"));
  }
  return earlier;
}

}  // namespace

absl::StatusOr<AgreedRestore> AgreeOnRestore(ObjectStore& store, const RunKeys& keys,
                                             const RestoreAgreementRequest& req,
                                             const std::function<bool()>& cancelled) {
  CKPTD_TRY(CheckRestoreAttempt(req.attempt));
  AgreedRestore out;
  CKPTD_ASSIGN_OR_RETURN(RestoreReport mine, PutOnce(store, keys, req, &out.reported_before));
  spdlog::info("restore agreement run={} attempt={} rank={} reported {} step(s){}{}", req.run_id,
               req.attempt, req.mine.rank, mine.steps.size(),
               mine.steps.empty() ? "" : StrCat(", newest ", mine.steps.back()),
               out.reported_before ? " (its report of an earlier call stands)" : "");
  const std::string prefix = keys.RestoresOf(req.attempt);
  const double deadline = NowSeconds() + req.timeout_s;
  std::map<std::string, std::pair<std::string, RestoreReport>> cache;  // key -> {ETag, report}
  while (true) {
    CKPTD_ASSIGN_OR_RETURN(std::vector<ObjectInfo> listed, store.List(prefix));
    std::vector<policy::AvailabilityReport> reports;
    std::vector<RestoreReport> records;
    for (const ObjectInfo& o : listed) {
      auto it = cache.find(o.key);
      if (it == cache.end() || it->second.first != o.etag) {
        absl::StatusOr<std::string> text = store.Get(o.key);
        if (absl::IsNotFound(text.status())) continue;
        CKPTD_TRY(text.status());
        CKPTD_ASSIGN_OR_RETURN(RestoreReport r, RestoreReport::Parse(*text, store.UrlOf(o.key)));
        it = cache.insert_or_assign(o.key, std::pair{o.etag, std::move(r)}).first;
      }
      const RestoreReport& r = it->second.second;
      reports.push_back(
          {.rank = r.rank, .world_size = r.world_size, .steps = {r.steps.begin(), r.steps.end()}});
      records.push_back(r);
    }
    policy::Agreement a = policy::AgreeOnStep(req.mine.world_size, reports);
    const std::string where = StrCat("run '", req.run_id, "' restore attempt '", req.attempt, "'");
    switch (a.state) {
      case policy::AgreementState::kAgreed:
        std::sort(records.begin(), records.end(),
                  [](const RestoreReport& x, const RestoreReport& y) { return x.rank < y.rank; });
        out.step = a.step;
        out.reports = std::move(records);
        return out;
      case policy::AgreementState::kNone:
        return absl::NotFoundError(StrCat(where, ": ", a.reason));
      case policy::AgreementState::kEmpty:
        return absl::NotFoundError(StrCat(where, ": ", policy::kNoStepAnywhere, " (a new run)"));
      case policy::AgreementState::kConflict:
        return absl::FailedPreconditionError(
            StrCat(where, ": ", a.reason, " (", store.UrlOf(prefix), ")"));
      case policy::AgreementState::kWait:
        break;
    }
    if (cancelled && cancelled()) return absl::CancelledError(StrCat(where, ": cancelled"));
    if (NowSeconds() >= deadline) {
      return absl::DeadlineExceededError(StrCat(
          where, ": rank(s) ", RanksList(a.missing), " did not report within ", req.timeout_s,
          " s; every rank's restore must run with the same attempt id (check that they "
          "all reach the same object store)"));
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(req.poll_s));
  }
}

}  // namespace ckptd::tier
