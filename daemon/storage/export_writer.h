// Writes one export (step_N.<name>.gguf) under a temp name from the model
// tensors' bytes as they arrive for the checkpoint: the same bytes, never
// read back from disk. A source tensor is buffered only while an output
// that needs it is incomplete (a fused family, or a tensor that is
// permuted or cast); a renamed tensor of the same type streams straight
// through, converted chunk by chunk when it changes type. Finish() records the checkpoint's uuid as
// general.source.uuid and makes the file durable; the commit renames it. The destructor removes the
// temp unless Release()d. Not thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/export/plan.h"
#include "daemon/gguf/writer.h"
#include "daemon/storage/written_file.h"

namespace ckptd::storage {

class ExportWriter {
 public:
  static absl::StatusOr<std::unique_ptr<ExportWriter>> Plan(
      std::shared_ptr<const exports::ExportPlan> plan, std::span<const gguf::TensorSpec> sources,
      const gguf::PlanOptions& options);
  ~ExportWriter();

  // Creates the temp file for `dir`/`final_name` (TempFileName) and writes the header.
  absl::Status Start(env::Env* env, const std::string& dir, std::string final_name,
                     env::DirectIo direct);
  // Bytes of source tensor `source` (an index into the model tensors), in
  // order; `complete` on the chunk that ends the tensor; `stable` as in
  // CheckpointWriter::WriteData (a renamed same-type output is then written
  // from the source bytes without a copy).
  absl::Status Feed(size_t source, std::string_view bytes, bool complete, bool stable = false);
  // Every output written: patches general.source.uuid (and an adapter's
  // general.base_model.0.uuid with `base_uuid`, its base export's), finishes, syncs, closes.
  absl::Status Finish(std::string_view source_uuid, std::string_view base_uuid = {});

  const exports::ExportPlan& plan() const { return *plan_; }
  uint64_t file_size() const { return layout_.file_size; }
  const WrittenFile& written() const { return written_; }
  const gguf::Layout& layout() const { return writer_->layout(); }
  void Release() { released_ = true; }

 private:
  explicit ExportWriter(std::shared_ptr<const exports::ExportPlan> plan);
  absl::Status WriteReady(size_t source);
  bool Streams(size_t source) const;
  absl::Status StreamChunk(const exports::OutputRecipe& r, std::string_view bytes, bool complete,
                           bool stable);

  std::shared_ptr<const exports::ExportPlan> plan_;
  gguf::Layout layout_;
  std::vector<uint64_t> source_bytes_;
  std::vector<size_t> release_after_;  // per source: the last output's ready_after
  std::vector<std::string> buffers_;   // per source, while needed
  size_t next_output_ = 0;
  env::Env* env_ = nullptr;
  std::unique_ptr<env::WritableFile> file_;
  std::unique_ptr<FileSink> sink_;
  std::unique_ptr<gguf::Writer> writer_;
  WrittenFile written_;
  std::string scratch_;  // converted bytes, reused
  std::string carry_;    // a conversion unit split across chunks
  bool released_ = false;
};

}  // namespace ckptd::storage
