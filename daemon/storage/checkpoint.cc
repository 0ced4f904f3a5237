// Catalog records from checkpoint headers.
#include "daemon/storage/checkpoint.h"

#include <cstdio>
#include <ctime>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/gguf/layout.h"

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
  r->time_utc = StringValue(md, kKeyTimeUtc);
  r->time_s = ParseUtc(r->time_utc);
  r->parent_uuid = StringValue(md, kKeyParentUuid);
  r->base_model_uuid = StringValue(md, "general.base_model.0.uuid");
  r->tensor_count = static_cast<uint32_t>(tensor_count);
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

absl::StatusOr<CheckpointRecord> ReadCheckpointRecord(env::Env* env, uint64_t step,
                                                      const std::string& model_path) {
  CKPTD_ASSIGN_OR_RETURN(gguf::GgufFile model, ReadGgufHeader(env, model_path));
  CheckpointRecord r;
  r.step = step;
  r.model_path = model_path;
  r.model_bytes = model.file_size;
  FillFromHeader(model.metadata, model.tensors.size(), &r);
  return r;
}

}  // namespace ckptd::storage
