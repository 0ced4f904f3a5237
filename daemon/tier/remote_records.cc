// The records' writers and parsers.
#include "daemon/tier/remote_records.h"

#include <initializer_list>

#include "daemon/base/strings.h"

namespace ckptd::tier {
namespace {

using Json = nlohmann::json;

// The object `text` holds, at a format this version reads.
absl::StatusOr<Json> ParseObject(std::string_view text, std::string_view where,
                                 std::string_view what) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::DataLossError(StrCat(where, " is not a ", what, " (not JSON)"));
  const Json* format = j.contains("format") ? &j["format"] : nullptr;
  if (format != nullptr && !format->is_number_unsigned()) {
    return absl::DataLossError(StrCat(where, " is not a ", what, ": format is not a number"));
  }
  if (format != nullptr && format->get<uint64_t>() > static_cast<uint64_t>(kRecordFormat)) {
    return absl::FailedPreconditionError(
        StrCat(where, " is a ", what, " of format ", format->get<uint64_t>(),
               ", written by a newer ckptd; this one reads format ", kRecordFormat,
               " and older: upgrade it"));
  }
  return j;
}

// The fields of `j` that are not `known` (nor "format").
Json Unknown(const Json& j, const std::vector<std::string_view>& known) {
  Json out = Json::object();
  for (const auto& [k, v] : j.items()) {
    bool is_known = k == "format";
    for (std::string_view n : known) is_known |= k == n;
    if (!is_known) out[k] = v;
  }
  return out;
}

// `known` over `unknown`, with the format first.
Json Write(const Json& unknown, Json known) {
  Json out = unknown.is_object() ? unknown : Json::object();
  out["format"] = kRecordFormat;
  for (auto& [k, v] : known.items()) out[k] = std::move(v);
  return out;
}

// Runs `parse`, turning a field of the wrong type or a missing one into
// DATA_LOSS naming the record.
template <typename T, typename F>
absl::StatusOr<T> Guarded(std::string_view where, std::string_view what, F parse) {
  try {
    return parse();
  } catch (const std::exception& e) {  // a field missing or of the wrong type, a bad step
    return absl::DataLossError(StrCat(where, " is not a ", what, ": ", e.what()));
  }
}

const std::vector<std::string_view> kFileFields = {"name", "key",          "role",
                                                   "size", "etag",         "content_digest",
                                                   "rank", "copied_bytes", "part_lengths"};

Json FileToJson(const RemoteFile& f) {
  Json known = {
      {"name", f.name}, {"key", f.key}, {"role", f.role}, {"size", f.size}, {"etag", f.etag}};
  if (!f.content_digest.empty()) known["content_digest"] = f.content_digest;
  if (f.rank) known["rank"] = *f.rank;
  if (f.copied_bytes > 0) known["copied_bytes"] = f.copied_bytes;
  if (!f.part_lengths.empty()) known["part_lengths"] = f.part_lengths;
  Json out = f.unknown.is_object() ? f.unknown : Json::object();
  for (auto& [k, v] : known.items()) out[k] = std::move(v);
  return out;
}

RemoteFile FileFromJson(const Json& j) {
  RemoteFile f{.name = j.at("name").get<std::string>(),
               .key = j.at("key").get<std::string>(),
               .role = j.value("role", ""),
               .size = j.at("size").get<uint64_t>(),
               .etag = j.at("etag").get<std::string>(),
               .content_digest = j.value("content_digest", ""),
               .copied_bytes = j.value("copied_bytes", uint64_t{0}),
               .part_lengths = j.value("part_lengths", std::vector<uint64_t>{}),
               .unknown = Unknown(j, kFileFields)};
  if (j.contains("rank")) f.rank = j["rank"].get<uint32_t>();
  return f;
}

Json TensorsToJson(const std::vector<PartTensorEntry>& tensors) {
  Json out = Json::array();
  for (const PartTensorEntry& t : tensors) {
    Json e = {{"name", t.name}, {"ne", t.ne}};
    if (t.slice) {
      e["slice"] = {{"full_ne", t.slice->full_ne},
                    {"dim", t.slice->dim},
                    {"offset", t.slice->offset},
                    {"length", t.slice->length}};
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<PartTensorEntry> TensorsFromJson(const Json& j) {
  std::vector<PartTensorEntry> out;
  for (const Json& t : j) {
    PartTensorEntry e{.name = t.at("name").get<std::string>(),
                      .ne = t.value("ne", std::vector<uint64_t>{})};
    if (t.contains("slice")) {
      const Json& s = t["slice"];
      e.slice = policy::TensorSlice{.full_ne = s.at("full_ne").get<std::vector<uint64_t>>(),
                                    .dim = s.at("dim").get<uint32_t>(),
                                    .offset = s.at("offset").get<uint64_t>(),
                                    .length = s.at("length").get<uint64_t>()};
    }
    out.push_back(std::move(e));
  }
  return out;
}

const std::vector<std::string_view> kFactFields = {
    "run_id", "step", "metrics", "uuid", "content_digest", "time_utc", "part_size", "files"};

Json FactsToJson(const StepFacts& f) {
  Json metrics = Json::object();
  for (const auto& [name, value] : f.metrics) metrics[name] = value;
  Json files = Json::array();
  for (const RemoteFile& file : f.files) files.push_back(FileToJson(file));
  return {{"run_id", f.run_id},
          {"step", f.step},
          {"metrics", std::move(metrics)},
          {"uuid", f.uuid},
          {"content_digest", f.content_digest},
          {"time_utc", f.time_utc},
          {"part_size", f.part_size},
          {"files", std::move(files)}};
}

StepFacts FactsFromJson(const Json& j) {
  StepFacts f{.run_id = j.value("run_id", ""),
              .step = j.at("step").get<uint64_t>(),
              .uuid = j.value("uuid", ""),
              .content_digest = j.value("content_digest", ""),
              .time_utc = j.value("time_utc", ""),
              .part_size = j.value("part_size", uint64_t{0})};
  if (j.contains("metrics")) {
    for (const auto& [name, value] : j["metrics"].items()) {
      if (value.is_number()) f.metrics[name] = value.get<double>();
    }
  }
  const Json& files = j.at("files");
  if (!files.is_array()) throw Json::type_error::create(302, "files is not an array", &files);
  for (const Json& file : files) f.files.push_back(FileFromJson(file));
  return f;
}

std::vector<std::string_view> Fields(std::vector<std::string_view> a,
                                     std::initializer_list<std::string_view> b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

std::string PartReport::ToJson() const {
  Json known = FactsToJson(facts);
  known["rank"] = rank;
  known["world_size"] = world_size;
  known["bytes"] = bytes;
  if (split_tensors_count) known["split_tensors_count"] = *split_tensors_count;
  known["tensors"] = TensorsToJson(tensors);
  return Write(unknown, std::move(known)).dump(2);
}

absl::StatusOr<PartReport> PartReport::Parse(std::string_view text, std::string_view where) {
  constexpr std::string_view kWhat = "part report";
  absl::StatusOr<Json> j = ParseObject(text, where, kWhat);
  if (!j.ok()) return j.status();
  return Guarded<PartReport>(where, kWhat, [&] {
    PartReport r{.facts = FactsFromJson(*j),
                 .rank = j->at("rank").get<uint32_t>(),
                 .world_size = j->at("world_size").get<uint32_t>(),
                 .bytes = j->value("bytes", uint64_t{0}),
                 .tensors = TensorsFromJson(j->at("tensors"))};
    if (j->contains("split_tensors_count")) {
      r.split_tensors_count = (*j)["split_tensors_count"].get<int64_t>();
    }
    r.unknown = Unknown(
        *j, Fields(kFactFields, {"rank", "world_size", "bytes", "split_tensors_count", "tensors"}));
    return r;
  });
}

policy::PartReport PartReport::ForPolicy() const {
  policy::PartReport out{
      .rank = rank, .world_size = world_size, .bytes = bytes, .uuid = facts.uuid};
  for (const PartTensorEntry& t : tensors)
    out.tensors.push_back({.name = t.name, .slice = t.slice});
  return out;
}

std::string StepManifest::ToJson() const {
  Json known = FactsToJson(facts);
  if (world_size > 0) {
    known["world_size"] = world_size;
    Json parts_json = Json::array();
    for (const ManifestPart& p : parts) {
      Json e = p.unknown.is_object() ? p.unknown : Json::object();
      e["rank"] = p.rank;
      e["uuid"] = p.uuid;
      e["content_digest"] = p.content_digest;
      e["bytes"] = p.bytes;
      e["time_utc"] = p.time_utc;
      e["tensors"] = TensorsToJson(p.tensors);
      parts_json.push_back(std::move(e));
    }
    known["parts"] = std::move(parts_json);
  }
  return Write(unknown, std::move(known)).dump(2);
}

absl::StatusOr<StepManifest> StepManifest::Parse(std::string_view text, std::string_view where) {
  constexpr std::string_view kWhat = "step manifest";
  absl::StatusOr<Json> j = ParseObject(text, where, kWhat);
  if (!j.ok()) return j.status();
  return Guarded<StepManifest>(where, kWhat, [&] {
    StepManifest m{.facts = FactsFromJson(*j), .world_size = j->value("world_size", uint32_t{0})};
    if (j->contains("parts")) {
      for (const Json& p : (*j)["parts"]) {
        m.parts.push_back({.rank = p.at("rank").get<uint32_t>(),
                           .uuid = p.value("uuid", ""),
                           .content_digest = p.value("content_digest", ""),
                           .bytes = p.value("bytes", uint64_t{0}),
                           .time_utc = p.value("time_utc", ""),
                           .tensors = TensorsFromJson(p.value("tensors", Json::array())),
                           .unknown = Unknown(p, {"rank", "uuid", "content_digest", "bytes",
                                                  "time_utc", "tensors"})});
      }
    }
    m.unknown = Unknown(*j, Fields(kFactFields, {"world_size", "parts"}));
    return m;
  });
}

uint64_t StepManifest::bytes() const {
  uint64_t n = 0;
  for (const RemoteFile& f : facts.files) n += f.size;
  return n;
}

std::string RestoreReport::ToJson() const {
  return Write(unknown, {{"run_id", run_id},
                         {"attempt", attempt},
                         {"rank", rank},
                         {"world_size", world_size},
                         {"steps", steps},
                         {"node", node},
                         {"time_utc", time_utc}})
      .dump(2);
}

absl::StatusOr<RestoreReport> RestoreReport::Parse(std::string_view text, std::string_view where) {
  constexpr std::string_view kWhat = "restore report";
  absl::StatusOr<Json> j = ParseObject(text, where, kWhat);
  if (!j.ok()) return j.status();
  return Guarded<RestoreReport>(where, kWhat, [&] {
    return RestoreReport{.run_id = j->at("run_id").get<std::string>(),
                         .attempt = j->at("attempt").get<std::string>(),
                         .rank = j->at("rank").get<uint32_t>(),
                         .world_size = j->at("world_size").get<uint32_t>(),
                         .steps = j->at("steps").get<std::vector<uint64_t>>(),
                         .node = j->value("node", ""),
                         .time_utc = j->value("time_utc", ""),
                         .unknown = Unknown(*j, {"run_id", "attempt", "rank", "world_size", "steps",
                                                 "node", "time_utc"})};
  });
}

std::string FailedStep::ToJson() const {
  return Write(unknown, {{"run_id", run_id},
                         {"step", step},
                         {"world_size", world_size},
                         {"reason", reason},
                         {"missing_ranks", missing_ranks},
                         {"time_utc", time_utc}})
      .dump(2);
}

absl::StatusOr<FailedStep> FailedStep::Parse(std::string_view text, std::string_view where) {
  constexpr std::string_view kWhat = "failed-step record";
  absl::StatusOr<Json> j = ParseObject(text, where, kWhat);
  if (!j.ok()) return j.status();
  return Guarded<FailedStep>(where, kWhat, [&] {
    return FailedStep{.run_id = j->value("run_id", ""),
                      .step = j->at("step").get<uint64_t>(),
                      .world_size = j->value("world_size", uint32_t{0}),
                      .reason = j->value("reason", ""),
                      .missing_ranks = j->value("missing_ranks", std::vector<uint32_t>{}),
                      .time_utc = j->value("time_utc", ""),
                      .unknown = Unknown(*j, {"run_id", "step", "world_size", "reason",
                                              "missing_ranks", "time_utc"})};
  });
}

std::string LatestRecord::ToJson() const {
  return Write(unknown, {{"step", step}, {"manifest", manifest}}).dump();
}

absl::StatusOr<LatestRecord> LatestRecord::Parse(std::string_view text, std::string_view where) {
  constexpr std::string_view kWhat = "latest record";
  absl::StatusOr<Json> j = ParseObject(text, where, kWhat);
  if (!j.ok()) return j.status();
  return Guarded<LatestRecord>(where, kWhat, [&] {
    return LatestRecord{.step = j->at("step").get<uint64_t>(),
                        .manifest = j->at("manifest").get<std::string>(),
                        .unknown = Unknown(*j, {"step", "manifest"})};
  });
}

std::string UploadState::ToJson() const {
  Json waiting_json = Json::object();
  for (const auto& [step, w] : waiting) {
    Json files = Json::object();
    for (const auto& [name, f] : w.files) {
      Json e = f.unknown.is_object() ? f.unknown : Json::object();
      e["upload_id"] = f.upload_id;
      e["key"] = f.key;
      e["part_size"] = f.part_size;
      if (!f.layout.empty()) e["layout"] = f.layout;
      Json parts = Json::array();
      for (const std::string& p : f.parts) parts.push_back(p.empty() ? Json() : Json(p));
      e["parts"] = std::move(parts);
      files[name] = std::move(e);
    }
    Json entry = w.unknown.is_object() ? w.unknown : Json::object();
    entry["files"] = std::move(files);
    waiting_json[std::to_string(step)] = std::move(entry);
  }
  Json fields = {{"waiting", std::move(waiting_json)}, {"uploaded", uploaded}};
  if (!withdrawn.empty()) {
    Json w = Json::object();
    for (const auto& [step, keys] : withdrawn) w[std::to_string(step)] = keys;
    fields["withdrawn"] = std::move(w);
  }
  return Write(unknown, std::move(fields)).dump();
}

absl::StatusOr<UploadState> UploadState::Parse(std::string_view text, std::string_view where) {
  constexpr std::string_view kWhat = "upload state";
  absl::StatusOr<Json> j = ParseObject(text, where, kWhat);
  if (!j.ok()) return j.status();
  return Guarded<UploadState>(where, kWhat, [&] {
    UploadState s{.unknown = Unknown(*j, {"waiting", "uploaded", "withdrawn"})};
    if (j->contains("waiting")) {
      for (const auto& [step, w] : (*j)["waiting"].items()) {
        Waiting& out = s.waiting[std::stoull(step)];
        out.unknown = Unknown(w, {"files"});
        if (!w.contains("files")) continue;
        for (const auto& [name, f] : w["files"].items()) {
          FileProgress p{
              .upload_id = f.value("upload_id", ""),
              .key = f.value("key", ""),
              .part_size = f.value("part_size", uint64_t{0}),
              .layout = f.value("layout", ""),
              .unknown = Unknown(f, {"upload_id", "key", "part_size", "layout", "parts"})};
          if (f.contains("parts")) {
            for (const Json& part : f["parts"]) {
              p.parts.push_back(part.is_string() ? part.get<std::string>() : "");
            }
          }
          out.files[name] = std::move(p);
        }
      }
    }
    if (j->contains("uploaded")) {
      for (const Json& step : (*j)["uploaded"]) s.uploaded.insert(step.get<uint64_t>());
    }
    if (j->contains("withdrawn")) {
      for (const auto& [step, keys] : (*j)["withdrawn"].items()) {
        s.withdrawn[std::stoull(step)] = keys.get<std::vector<std::string>>();
      }
    }
    return s;
  });
}

}  // namespace ckptd::tier
