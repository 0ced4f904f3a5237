// HTTP routes.
#include "daemon/http/router.h"

#include <nlohmann/json.hpp>

#include "daemon/api/convert.h"
#include "daemon/base/strings.h"
#include "daemon/http/status_page.h"
#include "daemon/http/url.h"
#include "daemon/metrics/metrics.h"
#include "daemon/policy/schedule.h"

namespace ckptd::http {
namespace {

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

template <typename M>
Reply Answer(const absl::StatusOr<M>& answer) {
  if (!answer.ok()) return ErrorReply(answer.status());
  return {200, "application/json", api::MessageToJson(*answer)};
}

}  // namespace

int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kInvalidArgument:
      return 400;
    case absl::StatusCode::kFailedPrecondition:
      return 409;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kUnimplemented:
      return 405;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    default:
      return 500;
  }
}

Reply ErrorReply(const absl::Status& status) {
  nlohmann::json body = {{"error",
                          {{"code", HttpStatus(status.code())},
                           {"status", absl::StatusCodeToString(status.code())},
                           {"message", std::string(status.message())}}}};
  return {HttpStatus(status.code()), "application/json", Dump(body)};
}

Reply Router::Readyz() const {
  const query::Readiness r = queries_->Ready();
  nlohmann::json body = {{"ready", r.ready}, {"reasons", r.reasons}};
  return {r.ready ? 200 : 503, "application/json", Dump(body)};
}

Reply Router::MetricsText() const {
  std::string out = metrics::Metrics::Get().Render();
  out += "# HELP ckptd_disk_free_bytes Free bytes on each root's filesystem.\n";
  out += "# TYPE ckptd_disk_free_bytes gauge\n";
  for (const std::string& root : roots_) {
    if (auto space = registry_->env()->Space(root); space.ok()) {
      StrAppend(&out, "ckptd_disk_free_bytes{root=\"", metrics::EscapeLabel(root), "\"} ",
                space->free_bytes, "\n");
    }
  }
  std::string last_step, last_time, count, recovery, memory, clock, expected;
  for (const auto& run : registry_->List()) {
    const scheduler::RunSnapshot snap = run->Snapshot();
    const std::string label = StrCat("{run=\"", metrics::EscapeLabel(snap.id), "\"} ");
    StrAppend(&count, "ckptd_checkpoints", label, snap.catalog->size(), "\n");
    if (snap.memory_catalog != nullptr) {
      uint64_t bytes = 0;
      for (const auto& [step, r] : *snap.memory_catalog) bytes += r.total_bytes();
      StrAppend(&memory, "ckptd_memory_tier_bytes", label, bytes, "\n");
    }
    // What a failure now would cost if that tier were the best one left
    // (the tiers below it remain): from the highest step the trainer reached.
    if (auto seen = snap.last_seen_step) {
      const std::string run_label = StrCat("{run=\"", metrics::EscapeLabel(snap.id), "\",tier=\"");
      auto lost = [&](std::optional<uint64_t> newest) {
        return newest && *newest <= *seen ? *seen - *newest : *seen;
      };
      if (snap.memory_catalog != nullptr) {
        StrAppend(&recovery, "ckptd_recovery_point_steps", run_label, "memory\"} ",
                  lost(snap.newest_step()), "\n");
      }
      StrAppend(&recovery, "ckptd_recovery_point_steps", run_label, "disk\"} ",
                lost(snap.latest_step), "\n");
    }
    // For the checkpoint-overdue alert: open runs only (a finished or idle
    // run is not expected to commit).
    if (snap.state == scheduler::RunState::kOpen) {
      StrAppend(&clock, "ckptd_last_commit_or_open_timestamp_seconds", label,
                fmt::format("{:.3f}", snap.reference_time_s), "\n");
      if (auto every = policy::ExpectedCommitInterval(snap.schedule, snap.step_seconds)) {
        StrAppend(&expected, "ckptd_expected_commit_interval_seconds", label,
                  fmt::format("{:.3f}", *every), "\n");
      }
    }
    if (auto step = snap.latest_step) {
      StrAppend(&last_step, "ckptd_last_committed_step", label, *step, "\n");
      StrAppend(&last_time, "ckptd_last_commit_timestamp_seconds", label,
                fmt::format("{:.3f}", snap.Find(*step)->time_s), "\n");
    }
  }
  out +=
      "# HELP ckptd_checkpoints Committed checkpoints per run.\n# TYPE ckptd_checkpoints gauge\n" +
      count;
  out += "# HELP ckptd_last_committed_step Highest committed step per run.\n";
  out += "# TYPE ckptd_last_committed_step gauge\n" + last_step;
  out += "# HELP ckptd_last_commit_timestamp_seconds When the highest step was saved.\n";
  out += "# TYPE ckptd_last_commit_timestamp_seconds gauge\n" + last_time;
  out +=
      "# HELP ckptd_last_commit_or_open_timestamp_seconds Open runs: the last disk commit, or "
      "when the run was opened if none since.\n";
  out += "# TYPE ckptd_last_commit_or_open_timestamp_seconds gauge\n" + clock;
  out +=
      "# HELP ckptd_expected_commit_interval_seconds Open runs: how often the schedule commits "
      "(every_seconds, or every_steps times the measured time per step, the sooner).\n";
  out += "# TYPE ckptd_expected_commit_interval_seconds gauge\n" + expected;
  out += "# HELP ckptd_memory_tier_bytes Bytes the run's memory steps hold in the memory tier.\n";
  out += "# TYPE ckptd_memory_tier_bytes gauge\n" + memory;
  out +=
      "# HELP ckptd_recovery_point_steps Steps a failure now would lose if that tier were the "
      "best one left, counted from the highest step the trainer reached.\n";
  out += "# TYPE ckptd_recovery_point_steps gauge\n" + recovery;
  out += "# HELP ckptd_build_info The running daemon's version.\n# TYPE ckptd_build_info gauge\n";
  StrAppend(&out, "ckptd_build_info{version=\"", registry_->facts().version, "\"} 1\n");
  return {200, "text/plain; version=0.0.4; charset=utf-8", out};
}

bool Router::Authorized(const Target& t, std::string_view authorization) const {
  if (read_token_.empty()) return true;
  if (const std::optional<std::string_view> token = BearerToken(authorization)) {
    return ConstantTimeEqual(*token, read_token_);
  }
  auto it = t.query.find("token");
  return it != t.query.end() && ConstantTimeEqual(it->second, read_token_);
}

Reply Router::Route(std::string_view method, std::string_view target,
                    std::string_view authorization) const {
  if (method != "GET" && method != "HEAD") {
    return ErrorReply(
        absl::InvalidArgumentError("only GET is served here; writes go through gRPC"));
  }
  const Target t = ParseTarget(target);
  const auto& s = t.segments;
  if (s.empty()) return {200, "text/html; charset=utf-8", std::string(kStatusPage)};
  if (s.size() == 1 && s[0] == "healthz") return {200, "text/plain", "ok\n"};
  if (s.size() == 1 && s[0] == "readyz") return Readyz();
  if (!Authorized(t, authorization)) {
    return ErrorReply(absl::UnauthenticatedError(
        "this daemon's HTTP API needs its read token (http.token_file): send 'Authorization: "
        "Bearer <token>', or open the status page as /?token=<token>"));
  }
  if (s.size() == 1 && s[0] == "metrics") return MetricsText();
  if (s.size() >= 2 && s.size() <= 3 && s[0] == "v1" && s[1] == "lineage") {
    return Answer(queries_->Lineage(s.size() == 3 ? s[2] : "", ""));
  }
  if (s.size() < 2 || s[0] != "v1" || s[1] != "runs") {
    return ErrorReply(absl::NotFoundError(StrCat(
        "no such path ", target, "; try /v1/runs, /v1/lineage, /healthz, /readyz, /metrics or /")));
  }
  if (s.size() == 2) return {200, "application/json", api::MessageToJson(queries_->ListRuns())};
  return RunPath(s, t);
}

Reply Router::RunPath(const std::vector<std::string>& s, const Target& t) const {
  const std::string& run = s[2];
  if (s.size() == 3) return Answer(queries_->GetRun(run));
  if (s.size() == 4 && s[3] == "events") return {.stream_run = run};
  if (s.size() == 4 && s[3] == "lineage") return Answer(queries_->Lineage("", run));
  if (s[3] == "checkpoints" && s.size() == 4) {
    auto since = QueryU64(t, "since_step");
    if (!since.ok()) return ErrorReply(since.status());
    auto page_size = QueryU64(t, "page_size");
    if (!page_size.ok()) return ErrorReply(page_size.status());
    v1::ListCheckpointsRequest r;
    r.set_run_id(run);
    r.set_since_step(since->value_or(0));
    if (page_size->value_or(0) > 1000) {
      return ErrorReply(absl::InvalidArgumentError(
          StrCat("query parameter 'page_size' is ", **page_size, ", over the maximum of 1000")));
    }
    r.set_page_size(static_cast<uint32_t>(page_size->value_or(0)));
    if (auto it = t.query.find("page_token"); it != t.query.end()) r.set_page_token(it->second);
    if (auto it = t.query.find("remote"); it != t.query.end()) {
      if (it->second != "0" && it->second != "1") {
        return ErrorReply(absl::InvalidArgumentError(
            StrCat("query parameter 'remote' is '", Printable(it->second), "'; give 1 or 0")));
      }
      r.set_include_remote(it->second == "1");
    }
    auto answer = queries_->ListCheckpoints(r);
    if (answer.status().code() == absl::StatusCode::kInvalidArgument) {
      return ErrorReply(
          absl::InvalidArgumentError(StrCat("query parameter ", answer.status().message())));
    }
    return Answer(answer);
  }
  if (s[3] == "checkpoints" && s.size() == 5) {
    auto step = PathU64(s[4], "step");
    if (!step.ok()) return ErrorReply(step.status());
    return Answer(queries_->GetCheckpoint(run, *step));
  }
  return ErrorReply(
      absl::NotFoundError(StrCat("no such path /", fmt::format("{}", fmt::join(s, "/")))));
}

}  // namespace ckptd::http
