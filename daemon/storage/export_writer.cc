// Streaming export writer: buffer what a recipe needs, write outputs in
// plan order as their last source arrives.
#include "daemon/storage/export_writer.h"

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/export/transform.h"
#include "daemon/storage/file_names.h"

namespace ckptd::storage {

ExportWriter::ExportWriter(std::shared_ptr<const exports::ExportPlan> plan)
    : plan_(std::move(plan)) {}

ExportWriter::~ExportWriter() {
  if (released_ || written_.temp_path.empty()) return;
  file_.reset();
  (void)env_->RemoveFile(written_.temp_path);
}

absl::StatusOr<std::unique_ptr<ExportWriter>> ExportWriter::Plan(
    std::shared_ptr<const exports::ExportPlan> plan, std::span<const gguf::TensorSpec> sources,
    const gguf::PlanOptions& options) {
  if (plan->source_used.size() != sources.size()) {
    return absl::InvalidArgumentError(StrCat("export '", plan->name, "' was planned for ",
                                             plan->source_used.size(),
                                             " model tensors but this save has ", sources.size()));
  }
  std::unique_ptr<ExportWriter> w(new ExportWriter(std::move(plan)));
  const exports::ExportPlan& p = *w->plan_;
  std::vector<gguf::TensorSpec> specs;
  for (const auto& r : p.outputs) specs.push_back(r.out);
  CKPTD_ASSIGN_OR_RETURN(w->layout_, gguf::PlanLayout(p.metadata, std::move(specs), options));
  w->release_after_.assign(sources.size(), 0);
  for (const auto& r : p.outputs) {
    for (size_t s : r.sources) w->release_after_[s] = std::max(w->release_after_[s], r.ready_after);
  }
  for (const auto& s : sources) w->source_bytes_.push_back(*gguf::TensorBytes(s.type, s.ne));
  w->buffers_.resize(sources.size());
  return w;
}

absl::Status ExportWriter::Start(env::Env* env, const std::string& dir, std::string final_name,
                                 env::DirectIo direct) {
  env_ = env;
  written_.final_name = std::move(final_name);
  std::string path = StrCat(dir, "/", TempFileName(written_.final_name));
  CKPTD_ASSIGN_OR_RETURN(file_, env->NewWritableFile(path, direct));
  written_.temp_path = path;
  sink_ = std::make_unique<FileSink>(file_.get());
  writer_ = std::make_unique<gguf::Writer>(layout_, sink_.get());
  return writer_->WriteHeader();
}

// A source streams when its only output is itself, renamed (a same-type
// copy, or an element-wise conversion done chunk by chunk), and that output
// is next in line.
bool ExportWriter::Streams(size_t source) const {
  if (next_output_ >= plan_->outputs.size()) return false;
  const exports::OutputRecipe& r = plan_->outputs[next_output_];
  return r.kind == exports::OutputRecipe::Kind::kCopy && r.sources[0] == source &&
         r.rope_heads == 0 && r.permute.empty() && !r.merge_lora;
}

absl::Status ExportWriter::StreamChunk(const exports::OutputRecipe& r, std::string_view bytes,
                                       bool complete, bool stable) {
  if (r.out.type == r.element_type) return writer_->WriteData(bytes, stable);
  // Convert whole units (an element, or a 32-element block for Q8_0); a
  // unit split across chunks waits in `carry_`.
  const size_t element = gguf::LookupTensorType(static_cast<uint32_t>(r.element_type))->block_bytes;
  const size_t unit = element * (r.out.type == gguf::TensorType::kQ8_0 ? 32 : 1);
  if (!carry_.empty()) {
    const size_t take = std::min(unit - carry_.size(), bytes.size());
    carry_.append(bytes.substr(0, take));
    bytes.remove_prefix(take);
    if (carry_.size() == unit) {
      CKPTD_TRY(exports::ConvertElements(carry_, r.element_type, r.out.type, &scratch_));
      CKPTD_TRY(writer_->WriteData(scratch_));
      carry_.clear();
    }
  }
  const size_t whole = bytes.size() / unit * unit;
  if (whole > 0) {
    CKPTD_TRY(
        exports::ConvertElements(bytes.substr(0, whole), r.element_type, r.out.type, &scratch_));
    CKPTD_TRY(writer_->WriteData(scratch_));
  }
  carry_.append(bytes.substr(whole));
  if (complete && !carry_.empty()) {
    return absl::InternalError(StrCat("export '", plan_->name, "': tensor '", r.out.name,
                                      "' ended inside a conversion unit"));
  }
  return absl::OkStatus();
}

absl::Status ExportWriter::Feed(size_t source, std::string_view bytes, bool complete, bool stable) {
  if (!plan_->source_used[source]) return absl::OkStatus();
  if (Streams(source)) {
    CKPTD_TRY(StreamChunk(plan_->outputs[next_output_], bytes, complete, stable));
    if (complete) ++next_output_;
    return complete ? WriteReady(source) : absl::OkStatus();
  }
  std::string& buf = buffers_[source];
  if (buf.capacity() < source_bytes_[source]) buf.reserve(source_bytes_[source]);
  buf.append(bytes);
  return complete ? WriteReady(source) : absl::OkStatus();
}

absl::Status ExportWriter::WriteReady(size_t source) {
  std::vector<std::string_view> views;
  std::vector<size_t> read;
  while (next_output_ < plan_->outputs.size() &&
         plan_->outputs[next_output_].ready_after == source) {
    const exports::OutputRecipe& r = plan_->outputs[next_output_];
    views.clear();
    for (size_t s : r.sources) views.push_back(buffers_[s]);
    CKPTD_TRY(exports::BuildOutput(r, views, &scratch_));
    CKPTD_TRY(writer_->WriteData(scratch_));
    ++next_output_;
    read.insert(read.end(), r.sources.begin(), r.sources.end());
  }
  // A source is freed once the last output that reads it is written (a
  // split's parts all read it, so only after the loop).
  for (size_t s : read) {
    if (release_after_[s] <= source) std::string().swap(buffers_[s]);
  }
  return absl::OkStatus();
}

absl::Status ExportWriter::Finish(std::string_view source_uuid, std::string_view base_uuid) {
  if (next_output_ != plan_->outputs.size()) {
    return absl::InternalError(StrCat("export '", plan_->name, "': ", next_output_, " of ",
                                      plan_->outputs.size(), " tensors were written"));
  }
  CKPTD_TRY(
      writer_->SetSlot(exports::kKeySourceUuid, gguf::Value::String(std::string(source_uuid))));
  if (!plan_->base_export.empty()) {
    if (base_uuid.empty()) {
      return absl::InternalError(StrCat("export '", plan_->name, "': its base export '",
                                        plan_->base_export, "' has not finished"));
    }
    CKPTD_TRY(
        writer_->SetSlot("general.base_model.0.uuid", gguf::Value::String(std::string(base_uuid))));
  }
  CKPTD_ASSIGN_OR_RETURN(written_.digest, writer_->Finish());
  CKPTD_TRY(file_->Sync());
  CKPTD_TRY(file_->Close());
  written_.bytes = file_->size();
  written_.zero_copy_bytes = file_->zero_copy_bytes();
  return absl::OkStatus();
}

}  // namespace ckptd::storage
