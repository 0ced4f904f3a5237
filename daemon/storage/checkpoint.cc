// Catalog records from checkpoint headers.
#include "daemon/storage/checkpoint.h"

#include <cstdio>
#include <ctime>
#include <random>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/gguf/digest.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/reader.h"

namespace ckptd::storage {

std::string StringValue(const gguf::Metadata& md, std::string_view key) {
  const gguf::Value* v = md.Find(key);
  const std::string* s = v ? v->get_if<std::string>() : nullptr;
  return s ? *s : std::string();
}

absl::StatusOr<gguf::GgufFile> ReadGgufHeader(env::Env* env, const std::string& path) {
  CKPTD_ASSIGN_OR_RETURN(auto file, env->OpenForRead(path));
  auto header = gguf::ReadHeader(*file);
  if (!header.ok()) {
    return absl::Status(header.status().code(), StrCat(path, ": ", header.status().message()));
  }
  return header;
}

void FillFromHeader(const gguf::Metadata& md, size_t tensor_count, CheckpointRecord* r) {
  r->uuid = StringValue(md, gguf::kKeyUuid);
  r->content_digest = StringValue(md, gguf::kKeyContentDigest);
  r->save_id = StringValue(md, kKeySaveId);
  r->time_utc = StringValue(md, kKeyTimeUtc);
  r->time_s = ParseUtc(r->time_utc);
  r->parent_uuid = StringValue(md, kKeyParentUuid);
  r->base_model_uuid = StringValue(md, "general.base_model.0.uuid");
  r->tensor_count = static_cast<uint32_t>(tensor_count);
  if (const gguf::Value* v = md.Find(kKeySharedBytes); v != nullptr) {
    if (const uint64_t* n = v->get_if<uint64_t>()) r->shared_bytes = *n;
  }
  for (const auto& [key, value] : md.entries()) {
    if (!key.starts_with(kMetricsPrefix)) continue;
    if (const double* d = value.get_if<double>())
      r->metrics[key.substr(kMetricsPrefix.size())] = *d;
  }
}

uint64_t CheckpointRecord::total_bytes() const {
  uint64_t total = model_bytes + train_bytes;
  for (const auto& e : exports) total += e.bytes;
  return total;
}

std::string NewSaveId() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device rd;
    std::seed_seq seed{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seed);
  }();
  return gguf::DigestHex(gguf::Digest128{.low = rng(), .high = rng()});
}

std::optional<uint64_t> StepValue(const gguf::Metadata& md) {
  const gguf::Value* v = md.Find(kKeyStep);
  if (v == nullptr) return std::nullopt;
  if (const uint64_t* u = v->get_if<uint64_t>()) return *u;
  if (const int64_t* i = v->get_if<int64_t>(); i != nullptr && *i >= 0) return *i;
  if (const uint32_t* u = v->get_if<uint32_t>()) return *u;
  return std::nullopt;
}

std::string TrainMismatch(const gguf::GgufFile& train, const CheckpointRecord& model) {
  const std::string digest = StringValue(train.metadata, kKeyModelDigest);
  if (digest != model.content_digest) {
    return StrCat("it was written with model content ", digest.empty() ? "(none)" : digest,
                  ", the model file has ", model.content_digest);
  }
  const std::optional<uint64_t> step = StepValue(train.metadata);
  if (step && *step != model.step) {
    return StrCat("it is step ", *step, "'s training state, the model file is step ", model.step);
  }
  const std::string save_id = StringValue(train.metadata, kKeySaveId);
  if (save_id != model.save_id) {
    return StrCat("it belongs to save ", save_id.empty() ? "(none)" : save_id,
                  ", the model file to save ", model.save_id.empty() ? "(none)" : model.save_id,
                  " (equal tensors, another save)");
  }
  return "";
}

absl::StatusOr<CheckpointRecord> VerifyStepFiles(env::Env* env, uint64_t step,
                                                 const std::string& model_path,
                                                 const std::string& train_path) {
  CKPTD_ASSIGN_OR_RETURN(CheckpointRecord record, ReadCheckpointRecord(env, step, model_path));
  auto verify = [&](const std::string& path) -> absl::StatusOr<gguf::GgufFile> {
    CKPTD_ASSIGN_OR_RETURN(gguf::GgufFile header, ReadGgufHeader(env, path));
    if (auto covered = gguf::CheckMetadataDigest(header); !covered.ok()) {
      return absl::DataLossError(StrCat(path, ": ", covered.status().message()));
    }
    CKPTD_ASSIGN_OR_RETURN(auto file, env->OpenForRead(path));
    if (auto report = gguf::Verify(*file, header); !report.ok()) {
      return absl::DataLossError(StrCat(path, ": ", report.status().message()));
    }
    return header;
  };
  CKPTD_TRY(verify(model_path).status());
  record.model_path = model_path;
  if (!train_path.empty()) {
    CKPTD_ASSIGN_OR_RETURN(gguf::GgufFile train, verify(train_path));
    if (std::string why = TrainMismatch(train, record); !why.empty()) {
      return absl::DataLossError(
          StrCat(train_path, " is not the training state saved with ", model_path, ": ", why));
    }
    record.train_path = train_path;
  }
  return record;
}

absl::StatusOr<CheckpointRecord> ReadCheckpointRecord(env::Env* env, uint64_t step,
                                                      const std::string& model_path) {
  CKPTD_ASSIGN_OR_RETURN(gguf::GgufFile model, ReadGgufHeader(env, model_path));
  if (auto covered = gguf::CheckMetadataDigest(model); !covered.ok()) {
    return absl::DataLossError(StrCat(model_path, ": ", covered.status().message()));
  }
  const std::optional<uint64_t> header_step = StepValue(model.metadata);
  if (header_step && *header_step != step) {
    return absl::DataLossError(StrCat(model_path, ": its header says step ", *header_step,
                                      " (ckpt.step), its name says step ", step));
  }
  if (const std::string role = StringValue(model.metadata, kKeyRole); role == "train") {
    return absl::DataLossError(StrCat(
        model_path, ": a training-state file (ckpt.role = train) under a model file's name"));
  }
  CheckpointRecord r;
  r.step = step;
  r.model_path = model_path;
  r.model_bytes = model.file_size;
  FillFromHeader(model.metadata, model.tensors.size(), &r);
  return r;
}

}  // namespace ckptd::storage
