// Writes one checkpoint's files under temporary names, as bytes arrive, in a
// single pass that writes and hashes: step_N.gguf (model tensors), when the
// save has training-state tensors step_N.train.gguf, which records the
// model file's content digest, and each export step_N.E.gguf, which records
// the model file's uuid. Finish() makes both durable; RunDir::Commit
// renames them. Until then nothing but temp files exist, and the destructor
// removes those. Memory is one write buffer per file, whatever the size.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/gguf/reader.h"
#include "daemon/gguf/writer.h"
#include "daemon/storage/export_writer.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/written_file.h"

namespace ckptd::storage {

enum class TensorGroup { kModel, kTrain };

struct PlannedTensor {
  gguf::TensorSpec spec;
  TensorGroup group = TensorGroup::kModel;
};

// The run's previous checkpoint, opened: a save shares the ranges of its
// files that hold tensors this save's bytes equal (same name, type and
// shape, digest equal to the one recorded there) instead of writing them,
// where the file system shares extents (XFS with reflink, btrfs) and both
// files align tensors at 4 KiB or more. Elsewhere the bytes are written.
struct CloneSource {
  std::shared_ptr<env::RandomAccessFile> model;
  gguf::GgufFile model_header;
  std::shared_ptr<env::RandomAccessFile> train;  // null when it has none
  gguf::GgufFile train_header;
};

// Opens `record`'s files and reads their headers; nullopt (logged by the
// caller) when a file is gone or unreadable: the save then writes every byte.
absl::StatusOr<std::shared_ptr<const CloneSource>> OpenCloneSource(env::Env* env,
                                                                   const std::string& model_path,
                                                                   const std::string& train_path);

struct SavePlan {
  uint64_t step = 0;
  gguf::Metadata model_metadata;       // provenance included; digest slots are added
  gguf::Metadata train_metadata;       // used when any tensor is in the train group
  std::vector<PlannedTensor> tensors;  // in the order their bytes arrive
  uint32_t alignment = gguf::kDefaultAlignment;
  env::DirectIo direct_io = env::DirectIo::kAuto;
  gguf::UuidScheme uuid_scheme = gguf::UuidScheme::kContent;
  // Inference exports written from the model tensors in the same pass.
  std::vector<std::shared_ptr<const exports::ExportPlan>> exports;
  // A multi-rank run's part: the files are named as the rank's part
  // (SplitFileName, PartTrainFileName) and committed by RunDir::StagePart.
  std::optional<SplitName> part;
  // Unchanged tensors shared from there (see CloneSource); null: none.
  std::shared_ptr<const CloneSource> clone_from;
};

class CheckpointWriter {
 public:
  // Validates and plans both files (touching no file). Fails with
  // INVALID_ARGUMENT naming the bad tensor or key.
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Plan(env::Env* env,
                                                                std::string weights_dir,
                                                                SavePlan plan);
  // Plan() then Start().
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(env::Env* env,
                                                                  std::string weights_dir,
                                                                  SavePlan plan);
  // Creates the temp files in weights_dir and writes their headers.
  absl::Status Start();
  ~CheckpointWriter();  // removes temp files unless Release()d by a commit

  uint64_t step() const { return step_; }
  uint64_t data_bytes() const { return data_bytes_; }  // tensor bytes expected
  uint64_t planned_bytes() const;                      // both files' sizes
  uint64_t received_bytes() const { return received_; }
  // After Finish(): bytes of all the files written straight from stable
  // source memory, without a copy.
  uint64_t zero_copy_bytes() const;
  // After Finish(): bytes of both files shared with the clone source.
  uint64_t shared_bytes() const;
  // After Finish: direct I/O was asked for (auto) and the file system
  // refused it, so the model file went through the page cache.
  bool direct_io_refused() const { return direct_io_ == env::DirectIo::kAuto && !model().direct; }
  bool has_train() const { return train_ != nullptr; }

  // After Start(), before any data: per tensor in plan order, the digest
  // its bytes are proved to have (TensorSource::KnownDigests); those are
  // not hashed again (gguf::Writer::SetKnownDigests).
  void SetKnownDigests(std::span<const std::optional<gguf::Digest128>> known);
  // Per tensor in plan order, the digest of the previous checkpoint's equal
  // tensor it may be shared from (nullopt: none).
  std::vector<std::optional<gguf::Digest128>> CandidateDigests() const;
  // After Finish(): each tensor's digest, in plan order.
  std::vector<gguf::Digest128> TensorDigests() const;
  // A file's sink refused to share extents (the file system cannot).
  bool sharing_refused() const;
  // After Finish(): tensor bytes whose digest was known, not computed.
  uint64_t known_bytes() const;

  // Tensor bytes in plan order, any chunking. More than planned is an error.
  // `stable`: the bytes stay valid and unchanged until Finish() has
  // returned or the writer is destroyed (TensorSource::stable()); they are
  // then written from where they lie where the files allow it.
  absl::Status WriteData(std::string_view bytes, bool stable = false);
  // Fails unless every byte arrived; finishes both files (digests patched,
  // the model digest recorded in the train file), fdatasyncs and closes them.
  absl::Status Finish();

  const WrittenFile& model() const;
  const WrittenFile* train() const;
  const std::vector<std::unique_ptr<ExportWriter>>& exports() const { return exports_; }
  // The model file's header as written (digests filled in after Finish()).
  const gguf::Layout& model_layout() const;
  // Called by the commit once the temps have been renamed away.
  void Release() {
    released_ = true;
    for (auto& e : exports_) e->Release();
  }

 private:
  struct File;
  CheckpointWriter(env::Env* env, std::string weights_dir, uint64_t step);
  absl::Status Open(File* file);
  absl::Status FinishFile(File* file);

  env::Env* env_;
  std::string weights_dir_;
  uint64_t step_;
  env::DirectIo direct_io_ = env::DirectIo::kAuto;
  std::vector<File*> route_;         // per tensor, in arrival order
  std::vector<size_t> model_index_;  // per tensor: its index among the model tensors
  std::vector<uint64_t> sizes_;
  size_t tensor_ = 0;
  uint64_t filled_ = 0;
  uint64_t data_bytes_ = 0;
  uint64_t received_ = 0;
  bool released_ = false;
  std::unique_ptr<File> model_;
  std::unique_ptr<File> train_;
  std::vector<std::unique_ptr<ExportWriter>> exports_;
  std::shared_ptr<const CloneSource> clone_from_;
  bool records_shared_ = false;  // the model file has a kKeySharedBytes slot
};

}  // namespace ckptd::storage
