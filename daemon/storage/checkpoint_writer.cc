// Temp-file writing of one checkpoint (model file + optional train file).
#include "daemon/storage/checkpoint_writer.h"

#include <algorithm>
#include <map>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/file_names.h"

namespace ckptd::storage {
namespace {

constexpr uint64_t kShareBlock = 4096;  // what FICLONERANGE shares: whole blocks

// Per tensor of `now`: the range of `before` holding the same tensor (name,
// type, shape) with its digest, where both files align it to whole blocks.
std::vector<std::optional<gguf::CloneCandidate>> MatchClones(const gguf::Layout& now,
                                                             const gguf::GgufFile& before) {
  std::vector<std::optional<gguf::CloneCandidate>> out(now.tensors.size());
  if (now.alignment % kShareBlock != 0 || before.alignment != now.alignment) return out;
  for (const gguf::SameTensor& m : gguf::TensorsAlsoIn(now.tensors, before)) {
    const gguf::TensorInfo& t = now.tensors[m.index];
    uint64_t length = 0;
    if (!gguf::AlignUp(t.nbytes, now.alignment, &length)) continue;
    const uint64_t src = before.data_offset + before.tensors[m.other].offset;
    const uint64_t dst = now.data_offset + t.offset;
    if (src % kShareBlock != 0 || dst % kShareBlock != 0 || src + length > before.file_size) {
      continue;
    }
    out[m.index] = gguf::CloneCandidate{.src_offset = src, .length = length, .digest = m.digest};
  }
  return out;
}

}  // namespace

struct CheckpointWriter::File {
  gguf::Layout layout;
  std::unique_ptr<env::WritableFile> file;
  std::unique_ptr<FileSink> sink;
  std::unique_ptr<gguf::Writer> writer;
  WrittenFile written;
  // Where unchanged tensors are shared from (CloneSource), per tensor.
  const env::RandomAccessFile* clone_source = nullptr;
  std::vector<std::optional<gguf::CloneCandidate>> clones;
};

absl::StatusOr<std::shared_ptr<const CloneSource>> OpenCloneSource(env::Env* env,
                                                                   const std::string& model_path,
                                                                   const std::string& train_path) {
  auto source = std::make_shared<CloneSource>();
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::RandomAccessFile> model,
                         env->OpenForRead(model_path));
  CKPTD_ASSIGN_OR_RETURN(source->model_header, gguf::ReadHeader(*model));
  source->model = std::move(model);
  if (!train_path.empty()) {
    CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::RandomAccessFile> train,
                           env->OpenForRead(train_path));
    CKPTD_ASSIGN_OR_RETURN(source->train_header, gguf::ReadHeader(*train));
    source->train = std::move(train);
  }
  return std::shared_ptr<const CloneSource>(std::move(source));
}

const WrittenFile& CheckpointWriter::model() const { return model_->written; }
const WrittenFile* CheckpointWriter::train() const { return train_ ? &train_->written : nullptr; }
const gguf::Layout& CheckpointWriter::model_layout() const { return model_->writer->layout(); }

CheckpointWriter::CheckpointWriter(env::Env* env, std::string weights_dir, uint64_t step)
    : env_(env), weights_dir_(std::move(weights_dir)), step_(step) {}

CheckpointWriter::~CheckpointWriter() {
  if (released_) return;
  exports_.clear();  // each removes its own temp
  for (File* f : {model_.get(), train_.get()}) {
    if (f == nullptr || f->written.temp_path.empty()) continue;
    f->file.reset();  // close before unlinking
    (void)env_->RemoveFile(f->written.temp_path);
  }
}

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Create(env::Env* env,
                                                                           std::string weights_dir,
                                                                           SavePlan plan) {
  CKPTD_ASSIGN_OR_RETURN(auto w, Plan(env, std::move(weights_dir), std::move(plan)));
  CKPTD_TRY(w->Start());
  return w;
}

absl::Status CheckpointWriter::Start() {
  // Open the train file first so its temp exists no longer than the model's.
  if (train_) CKPTD_TRY(Open(train_.get()));
  for (auto& e : exports_) {
    CKPTD_TRY(e->Start(env_, weights_dir_, ExportFileName(step_, e->plan().name), direct_io_));
  }
  return Open(model_.get());
}

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Plan(env::Env* env,
                                                                         std::string weights_dir,
                                                                         SavePlan plan) {
  std::unique_ptr<CheckpointWriter> w(new CheckpointWriter(env, std::move(weights_dir), plan.step));
  w->direct_io_ = plan.direct_io;
  if (plan.clone_from != nullptr && plan.alignment % kShareBlock == 0) {
    w->clone_from_ = plan.clone_from;
    w->records_shared_ = true;
    plan.model_metadata.Set(std::string(kKeySharedBytes), gguf::Value(uint64_t{0}));
  }
  std::vector<gguf::TensorSpec> model_specs, train_specs;
  for (const PlannedTensor& t : plan.tensors) {
    (t.group == TensorGroup::kTrain ? train_specs : model_specs).push_back(t.spec);
  }
  gguf::PlanOptions options{.alignment = plan.alignment, .uuid_scheme = plan.uuid_scheme};
  auto model_layout = gguf::PlanLayout(std::move(plan.model_metadata), model_specs, options);
  if (!model_layout.ok()) return model_layout.status();
  w->model_ = std::make_unique<File>();
  w->model_->layout = std::move(*model_layout);
  w->model_->written.final_name =
      plan.part ? SplitFileName(plan.step, plan.part->rank, plan.part->world_size)
                : ModelFileName(plan.step);
  if (!train_specs.empty()) {
    plan.train_metadata.Set(std::string(kKeyModelDigest), gguf::ContentDigestPlaceholder());
    auto train_layout = gguf::PlanLayout(std::move(plan.train_metadata), train_specs, options);
    if (!train_layout.ok()) {
      return absl::InvalidArgumentError(
          StrCat("training-state file: ", train_layout.status().message()));
    }
    w->train_ = std::make_unique<File>();
    w->train_->layout = std::move(*train_layout);
    w->train_->written.final_name =
        plan.part ? PartTrainFileName(plan.step, plan.part->rank, plan.part->world_size)
                  : TrainFileName(plan.step);
  }
  if (w->clone_from_) {
    w->model_->clone_source = w->clone_from_->model.get();
    w->model_->clones = MatchClones(w->model_->layout, w->clone_from_->model_header);
    if (w->train_ && w->clone_from_->train) {
      w->train_->clone_source = w->clone_from_->train.get();
      w->train_->clones = MatchClones(w->train_->layout, w->clone_from_->train_header);
    }
  }
  for (const auto& e : plan.exports) {
    auto ew = ExportWriter::Plan(e, model_specs, options);
    if (!ew.ok()) return ew.status();
    w->exports_.push_back(std::move(*ew));
  }
  size_t model_index = 0;
  for (const PlannedTensor& t : plan.tensors) {
    w->route_.push_back(t.group == TensorGroup::kTrain ? w->train_.get() : w->model_.get());
    w->model_index_.push_back(t.group == TensorGroup::kTrain ? SIZE_MAX : model_index++);
    uint64_t n = *gguf::TensorBytes(t.spec.type, t.spec.ne);  // validated by PlanLayout
    w->sizes_.push_back(n);
    w->data_bytes_ += n;
  }
  return w;
}

absl::Status CheckpointWriter::Open(File* f) {
  std::string path = StrCat(weights_dir_, "/", TempFileName(f->written.final_name));
  CKPTD_ASSIGN_OR_RETURN(f->file, env_->NewWritableFile(path, direct_io_));
  f->written.temp_path = path;
  f->sink = std::make_unique<FileSink>(f->file.get(), f->clone_source);
  f->writer = std::make_unique<gguf::Writer>(f->layout, f->sink.get());
  f->writer->SetCloneCandidates(f->clones);
  return f->writer->WriteHeader();
}

uint64_t CheckpointWriter::zero_copy_bytes() const {
  uint64_t total = model_->written.zero_copy_bytes;
  if (train_) total += train_->written.zero_copy_bytes;
  for (const auto& e : exports_) total += e->written().zero_copy_bytes;
  return total;
}

uint64_t CheckpointWriter::shared_bytes() const {
  return model_->written.shared_bytes + (train_ ? train_->written.shared_bytes : 0);
}

void CheckpointWriter::SetKnownDigests(std::span<const std::optional<gguf::Digest128>> known) {
  std::vector<std::optional<gguf::Digest128>> model, train;
  for (size_t i = 0; i < route_.size(); ++i) {
    (route_[i] == model_.get() ? model : train)
        .push_back(i < known.size() ? known[i] : std::nullopt);
  }
  model_->writer->SetKnownDigests(std::move(model));
  if (train_) train_->writer->SetKnownDigests(std::move(train));
}

std::vector<std::optional<gguf::Digest128>> CheckpointWriter::CandidateDigests() const {
  std::vector<std::optional<gguf::Digest128>> out;
  size_t m = 0, t = 0;
  for (const File* f : route_) {
    const size_t i = f == model_.get() ? m++ : t++;
    if (i < f->clones.size() && f->clones[i]) {
      out.push_back(f->clones[i]->digest);
    } else {
      out.push_back(std::nullopt);
    }
  }
  return out;
}

std::vector<gguf::Digest128> CheckpointWriter::TensorDigests() const {
  std::vector<gguf::Digest128> out;
  size_t m = 0, t = 0;
  for (const File* f : route_) {
    const auto& digests = f->written.digest.tensors;
    const size_t i = f == model_.get() ? m++ : t++;
    out.push_back(i < digests.size() ? digests[i] : gguf::Digest128{});
  }
  return out;
}

bool CheckpointWriter::sharing_refused() const {
  return model_->writer->sink_refused_sharing() ||
         (train_ && train_->writer->sink_refused_sharing());
}

uint64_t CheckpointWriter::known_bytes() const {
  return model_->writer->known_bytes() + (train_ ? train_->writer->known_bytes() : 0);
}

uint64_t CheckpointWriter::planned_bytes() const {
  uint64_t total = model_->layout.file_size + (train_ ? train_->layout.file_size : 0);
  for (const auto& e : exports_) total += e->file_size();
  return total;
}

absl::Status CheckpointWriter::WriteData(std::string_view bytes, bool stable) {
  while (!bytes.empty()) {
    if (tensor_ >= sizes_.size()) {
      return absl::InvalidArgumentError(StrCat("received ", bytes.size(),
                                               " bytes past the last tensor (", data_bytes_,
                                               " bytes were declared)"));
    }
    size_t n = std::min<uint64_t>(bytes.size(), sizes_[tensor_] - filled_);
    CKPTD_TRY(route_[tensor_]->writer->WriteData(bytes.substr(0, n), stable));
    filled_ += n;
    if (const size_t m = model_index_[tensor_]; m != SIZE_MAX) {
      for (auto& e : exports_)
        CKPTD_TRY(e->Feed(m, bytes.substr(0, n), filled_ == sizes_[tensor_], stable));
    }
    received_ += n;
    bytes.remove_prefix(n);
    if (filled_ == sizes_[tensor_]) {
      ++tensor_;
      filled_ = 0;
    }
  }
  return absl::OkStatus();
}

absl::Status CheckpointWriter::FinishFile(File* f) {
  CKPTD_ASSIGN_OR_RETURN(f->written.digest, f->writer->Finish());
  CKPTD_TRY(f->file->Sync());
  CKPTD_TRY(f->file->Close());
  f->written.bytes = f->file->size();
  f->written.zero_copy_bytes = f->file->zero_copy_bytes();
  f->written.shared_bytes = f->writer->shared_bytes();
  f->written.direct = f->file->direct();
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Finish() {
  if (received_ != data_bytes_) {
    return absl::InvalidArgumentError(StrCat("stream ended after ", received_, " of ", data_bytes_,
                                             " tensor bytes (tensor ", tensor_, " incomplete)"));
  }
  if (records_shared_) {
    const uint64_t shared =
        model_->writer->shared_bytes() + (train_ ? train_->writer->shared_bytes() : 0);
    CKPTD_TRY(model_->writer->SetSlot(kKeySharedBytes, gguf::Value(shared)));
  }
  CKPTD_TRY(FinishFile(model_.get()));
  if (train_) {
    CKPTD_TRY(train_->writer->SetSlot(
        kKeyModelDigest,
        gguf::Value::String(gguf::ContentDigestString(model_->written.digest.content))));
    CKPTD_TRY(FinishFile(train_.get()));
  }
  // Bases before their adapters (LinkAdapters orders the plans so).
  std::map<std::string, std::string, std::less<>> uuids;
  for (auto& e : exports_) {
    auto base = uuids.find(e->plan().base_export);
    CKPTD_TRY(e->Finish(model_->written.digest.uuid,
                        base == uuids.end() ? std::string_view() : base->second));
    uuids[e->plan().name] = e->written().digest.uuid;
  }
  return absl::OkStatus();
}

}  // namespace ckptd::storage
