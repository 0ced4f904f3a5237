// Checks and conversions of save and OpenRun requests.
#include "daemon/rpc/requests.h"

#include "daemon/api/convert.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/storage/file_names.h"

namespace ckptd::rpc {

using api::FromProto;

absl::StatusOr<scheduler::RunSettings> SettingsFrom(const v1::OpenRunRequest& req) {
  scheduler::RunSettings s;
  auto md = FromProto(req.model_metadata(), "model_metadata");
  if (!md.ok()) return md.status();
  s.model_metadata = std::move(*md);
  const v1::Provenance& p = req.provenance();
  auto put = [&](const std::string& key, const std::string& value) {
    if (!value.empty()) s.provenance.Set(StrCat(storage::kTrainerPrefix, key), gguf::Value(value));
  };
  put("git_commit", p.git_commit());
  put("command_line", p.command_line());
  put("host", p.host());
  if (p.has_seed())
    s.provenance.Set(StrCat(storage::kTrainerPrefix, "seed"), gguf::Value(p.seed()));
  for (const auto& [name, version] : p.framework_versions())
    put(StrCat("framework.", name), version);
  for (const auto& [key, value] : p.extra()) put(StrCat("extra.", key), value);
  if (p.client_pid() != 0)
    s.provenance.Set(std::string(storage::kKeyClientPid), gguf::Value(p.client_pid()));
  s.base_model_uuid = req.base_model_uuid();
  if (req.has_schedule()) s.schedule = FromProto(req.schedule());
  if (req.has_retention()) s.retention = FromProto(req.retention());
  if (req.has_tier()) {
    const v1::TierOptions& t = req.tier();
    s.tier.local_only = t.local_only();
    if (std::string problem = KeyPrefixProblem(t.prefix()); !problem.empty()) {
      return absl::InvalidArgumentError(
          StrCat("tier.prefix: '", Printable(t.prefix()), "' ", problem,
                 "; give a key prefix such as \"team-a/ckpt\", or \"\" for the daemon's"));
    }
    s.tier.prefix = t.prefix();
    if (t.remote_retention() == "same") {
      s.tier.remote_retention = true;
    } else if (t.remote_retention() == "keep_all") {
      s.tier.remote_retention = false;
    } else if (!t.remote_retention().empty()) {
      return absl::InvalidArgumentError(
          StrCat("tier.remote_retention: '", Printable(t.remote_retention()),
                 "' is not \"keep_all\", \"same\" or \"\" (the daemon's tier.s3.retention)"));
    }
  }
  return s;
}

absl::Status CheckLimits(const RequestLimits& limits, const char* tensors_field, int tensors,
                         const char* metadata_field,
                         const google::protobuf::RepeatedPtrField<v1::MetadataEntry>& metadata) {
  if (static_cast<uint64_t>(tensors) > limits.max_tensors) {
    return absl::ResourceExhaustedError(
        StrCat(tensors_field, ": ", tensors, " tensors is more than server.max_tensors_per_save (",
               limits.max_tensors, "); save fewer, larger tensors or raise the limit"));
  }
  uint64_t bytes = 0;
  for (const v1::MetadataEntry& e : metadata) bytes += e.ByteSizeLong();
  if (bytes > limits.max_metadata_bytes) {
    return absl::ResourceExhaustedError(
        StrCat(metadata_field, ": ", bytes, " bytes is more than server.max_metadata_bytes (",
               limits.max_metadata_bytes, "); keep large data in tensors or raise the limit"));
  }
  return absl::OkStatus();
}

absl::StatusOr<scheduler::SaveParams> ParamsFrom(const v1::SaveHeader& h, scheduler::SaveKind kind,
                                                 const RequestLimits& limits) {
  CKPTD_TRY(CheckLimits(limits, "tensors", h.tensors_size(), "train_metadata", h.train_metadata()));
  for (const auto& [name, value] : h.metrics()) {
    if (std::string problem = NameProblem(name); !problem.empty()) {
      return absl::InvalidArgumentError(
          StrCat("metrics: the name '", Printable(name), "' ", problem,
                 "; metric names are UTF-8 without NUL or control characters"));
    }
  }
  scheduler::SaveParams p;
  p.run_id = h.run_id();
  p.step = h.step();
  p.metrics = {h.metrics().begin(), h.metrics().end()};
  p.force = h.force();
  p.overwrite = h.overwrite();
  p.kind = kind;
  CKPTD_ASSIGN_OR_RETURN(p.tensors, FromProto(h.tensors()));
  CKPTD_ASSIGN_OR_RETURN(p.train_metadata, FromProto(h.train_metadata(), "train_metadata"));
  return p;
}

}  // namespace ckptd::rpc
