// Checks and conversions of save and OpenRun requests.
#include "daemon/rpc/requests.h"

#include <google/protobuf/util/json_util.h>

#include <set>

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
  if (req.has_multi_rank()) CKPTD_TRY(MultiRankFrom(req.multi_rank(), &s.multi_rank));
  return s;
}

absl::Status MultiRankFrom(const v1::MultiRank& m, scheduler::RunMultiRank* out) {
  const uint32_t world = m.world_size();
  if (world > storage::kMaxWorldSize) {
    return absl::InvalidArgumentError(StrCat("multi_rank.world_size: ", world, " is more than ",
                                             storage::kMaxWorldSize,
                                             " (gguf-split's split.count is a u16)"));
  }
  if (m.rank() >= std::max<uint32_t>(world, 1)) {
    return absl::InvalidArgumentError(StrCat(
        "multi_rank.rank: ", m.rank(), " is outside a world of ", std::max<uint32_t>(world, 1),
        " ranks (0 to ", std::max<uint32_t>(world, 1) - 1, "); give each rank its own number"));
  }
  if (!(m.part_timeout_seconds() >= 0) || m.part_timeout_seconds() > 7 * 86400) {
    return absl::InvalidArgumentError(
        StrCat("multi_rank.part_timeout_seconds: ", m.part_timeout_seconds(),
               " is not 0 (the default, 600) to 604800"));
  }
  if (world <= 1) return absl::OkStatus();  // one rank: whole steps, as without multi_rank
  out->world_size = world;
  out->rank = m.rank();
  out->coordinator = m.has_coordinator() ? m.coordinator() : m.rank() == 0;
  out->part_timeout_s = m.part_timeout_seconds() > 0 ? m.part_timeout_seconds() : 600;
  out->total_tensors = m.total_tensors();
  for (const v1::ShardSlice& sl : m.slices()) {
    const std::string where = StrCat("multi_rank.slices['", Printable(sl.name()), "']");
    if (sl.name().empty() || sl.name().size() > 63) {
      return absl::InvalidArgumentError(StrCat(where, ": a tensor name is 1 to 63 bytes"));
    }
    if (sl.full_ne_size() < 1 || sl.full_ne_size() > 4) {
      return absl::InvalidArgumentError(
          StrCat(where, ".full_ne: ", sl.full_ne_size(), " dims; a tensor has 1 to 4"));
    }
    policy::TensorSlice t{.dim = sl.dim(), .offset = sl.offset()};
    for (uint64_t d : sl.full_ne()) {
      if (d == 0) return absl::InvalidArgumentError(StrCat(where, ".full_ne: a dim is 0"));
      t.full_ne.push_back(d);
    }
    if (sl.dim() >= t.full_ne.size()) {
      return absl::InvalidArgumentError(StrCat(where, ".dim: ", sl.dim(), " but the tensor has ",
                                               t.full_ne.size(), " dims (GGUF order, 0 first)"));
    }
    if (sl.offset() >= t.full_ne[sl.dim()]) {
      return absl::InvalidArgumentError(StrCat(where, ".offset: ", sl.offset(),
                                               " is past the tensor's ", t.full_ne[sl.dim()],
                                               " along dim ", sl.dim()));
    }
    if (!out->slices.emplace(sl.name(), std::move(t)).second) {
      return absl::InvalidArgumentError(StrCat(where, ": named twice"));
    }
  }
  return absl::OkStatus();
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

absl::StatusOr<scheduler::DeclaredSettings> RequestCodec::Declared(
    const v1::OpenRunRequest& req) const {
  scheduler::DeclaredSettings d{
      .tier_options = req.has_tier(),
      .charge = req.ByteSizeLong() * scheduler::MemoryBudget::kParsedFactor};
  CKPTD_ASSIGN_OR_RETURN(d.settings, SettingsFrom(req));
  std::set<std::string> names;
  for (const v1::ExportRequest& e : req.exports()) {
    absl::StatusOr<exports::Profile> profile =
        e.has_definition() ? exports::CompileProfile(FromProto(e.definition()))
                           : exports::ResolveProfile(env_, profiles_dir_, e.profile());
    if (!profile.ok()) {
      return absl::Status(profile.status().code(), StrCat("exports: ", profile.status().message()));
    }
    std::string name = e.name().empty() ? profile->spec.name : e.name();
    if (!exports::IsValidExportName(name) || !names.insert(name).second) {
      return absl::InvalidArgumentError(StrCat("exports: name '", name,
                                               "' is invalid ([a-z0-9_-]{1,64}, not 'train') or "
                                               "listed twice"));
    }
    d.settings.exports.push_back(
        {std::move(name), std::make_shared<const exports::Profile>(std::move(*profile))});
  }
  if (!req.model_tensors().empty() && !d.settings.exports.empty()) {
    CKPTD_ASSIGN_OR_RETURN(d.model_tensors, FromProto(req.model_tensors()));
  }
  return d;
}

absl::StatusOr<scheduler::DeclaredSettings> RequestCodec::Decode(std::string_view stored) const {
  v1::OpenRunRequest req;
  if (auto parsed = google::protobuf::util::JsonStringToMessage(
          google::protobuf::StringPiece(stored.data(), stored.size()), &req);
      !parsed.ok()) {
    return absl::InvalidArgumentError(std::string(parsed.message()));
  }
  return Declared(req);
}

std::string RequestCodec::Stored(const v1::OpenRunRequest& req) {
  return api::MessageToJson(req, /*pretty=*/true);
}

uint64_t SaveHeaderCharge(const v1::SaveHeader& h, uint64_t message_bytes) {
  return message_bytes * scheduler::MemoryBudget::kParsedFactor +
         static_cast<uint64_t>(h.tensors_size()) * kChargePerTensor;
}

}  // namespace ckptd::rpc
