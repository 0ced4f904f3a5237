// Checkpoints for the tier's tests.
#include "tests/tier/tier_fixtures.h"

#include "daemon/base/status.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/checkpoint_writer.h"

namespace ckptd::tier::testing {

RunFiles::RunFiles(std::string run_dir) : run_dir_(std::move(run_dir)) {
  storage::RecoveryReport report;
  dir_ = *storage::RunDir::Open(env::Env::Default(), run_dir_, &report);
}

absl::StatusOr<storage::CheckpointRecord> RunFiles::Commit(uint64_t step, uint64_t model_bytes,
                                                           char fill, size_t description_bytes) {
  storage::SavePlan plan;
  plan.step = step;
  plan.alignment = 4096;
  plan.model_metadata.Set("general.architecture", gguf::Value("llama"));
  plan.model_metadata.Set(std::string(storage::kKeyStep), gguf::Value(step));
  plan.model_metadata.Set(std::string(storage::kKeyTimeUtc),
                          gguf::Value::String("2026-12-06T10:00:00Z"));
  if (description_bytes > 0) {
    plan.model_metadata.Set("general.description",
                            gguf::Value::String(std::string(description_bytes, 'd')));
  }
  plan.tensors.push_back(
      {{"w", gguf::TensorType::kF32, {model_bytes / 4}}, storage::TensorGroup::kModel});
  plan.tensors.push_back({{"adam.m", gguf::TensorType::kF32, {64}}, storage::TensorGroup::kTrain});
  auto w =
      storage::CheckpointWriter::Create(env::Env::Default(), dir_->weights_dir(), std::move(plan));
  if (!w.ok()) return w.status();
  std::string bytes((*w)->data_bytes(), fill);
  for (size_t i = 0; i < bytes.size(); i += 4093) bytes[i] = static_cast<char>(i * 7 + step);
  CKPTD_TRY((*w)->WriteData(bytes));
  CKPTD_TRY((*w)->Finish());
  return dir_->Commit(w->get(), storage::Overwrite::kNo);
}

}  // namespace ckptd::tier::testing
