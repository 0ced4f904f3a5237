// RunDir: the commit protocol, `latest`, overwrite rules and recovery, with
// faults injected at each step (invariants 1, 2 and 4 of ARCHITECTURE.md).
#include "daemon/storage/run_dir.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>

#include "daemon/base/status.h"
#include "daemon/env/fault_env.h"
#include "daemon/env/posix_error.h"
#include "daemon/gguf/reader.h"
#include "daemon/storage/file_names.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::storage {
namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

// As a save plans it: ckpt.step and one ckpt.save_id in both files.
SavePlan Plan(uint64_t step, bool with_train, uint64_t floats = 1024) {
  SavePlan plan;
  plan.step = step;
  const std::string save_id = NewSaveId();
  plan.model_metadata.Set("general.architecture", gguf::Value("llama"));
  plan.model_metadata.Set(std::string(kKeyStep), gguf::Value(step));
  plan.model_metadata.Set(std::string(kKeySaveId), gguf::Value::String(save_id));
  plan.tensors.push_back({{"w", gguf::TensorType::kF32, {floats}}, TensorGroup::kModel});
  if (with_train) {
    plan.tensors.push_back({{"adam.m", gguf::TensorType::kF32, {floats}}, TensorGroup::kTrain});
    plan.train_metadata.Set("opt.lr", gguf::Value(1e-4));
    plan.train_metadata.Set(std::string(kKeyStep), gguf::Value(step));
    plan.train_metadata.Set(std::string(kKeySaveId), gguf::Value::String(save_id));
  }
  return plan;
}

std::string Bytes(uint64_t n, char fill) { return std::string(n, fill); }

absl::StatusOr<CheckpointRecord> Save(env::Env* env, RunDir* dir, uint64_t step, bool with_train,
                                      char fill = 'a', Overwrite ow = Overwrite::kNo) {
  CKPTD_TRY(dir->CheckCanSave(step, ow));
  auto w = CheckpointWriter::Create(env, dir->weights_dir(), Plan(step, with_train));
  if (!w.ok()) return w.status();
  CKPTD_TRY((*w)->WriteData(Bytes((*w)->data_bytes(), fill)));
  CKPTD_TRY((*w)->Finish());
  return dir->Commit(w->get(), ow);
}

std::vector<std::string> Names(const std::string& dir) {
  return *env::Env::Default()->ListDir(dir);
}

class RunDirTest : public ::testing::Test {
 protected:
  std::unique_ptr<RunDir> OpenDir(env::Env* env = env::Env::Default(),
                                  RecoveryReport* report = nullptr) {
    auto d = RunDir::Open(env, tmp_.Join("run"), report);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? std::move(*d) : nullptr;
  }
  std::string Weights() const { return tmp_.Join("run/weights"); }
  std::string Latest() const { return *env::Env::Default()->ReadLink(Weights() + "/latest"); }
  testing::TempDir tmp_;
};

TEST_F(RunDirTest, CommitsBothFilesAndPointsLatestAtTheHighestStep) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  auto r100 = Save(env, dir.get(), 100, /*with_train=*/true);
  ASSERT_TRUE(r100.ok()) << r100.status();
  EXPECT_EQ(Latest(), "step_100.gguf");
  ASSERT_TRUE(Save(env, dir.get(), 200, false).ok());
  EXPECT_EQ(Latest(), "step_200.gguf");
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_100.gguf", "step_100.train.gguf",
                                                     "step_200.gguf", "latest"));
  // The train file records the model file's digest; both verify.
  auto train = ReadGgufHeader(env, Weights() + "/step_100.train.gguf");
  ASSERT_TRUE(train.ok());
  EXPECT_EQ(StringValue(train->metadata, kKeyModelDigest), r100->content_digest);
  EXPECT_EQ(train->tensors.size(), 1u);
  EXPECT_EQ(train->tensors[0].name, "adam.m");
  auto model = ReadGgufHeader(env, r100->model_path);
  ASSERT_EQ(model->tensors.size(), 1u);  // llama.cpp sees model tensors only
  auto src = env->OpenForRead(r100->model_path);
  EXPECT_TRUE(gguf::Verify(**src, *model).ok());
  EXPECT_EQ(r100->tensor_count, 1u);
  EXPECT_FALSE(r100->uuid.empty());
}

TEST_F(RunDirTest, OverwriteAndRollbackRules) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  ASSERT_TRUE(Save(env, dir.get(), 500, true).ok());
  auto again = Save(env, dir.get(), 500, false);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("pass overwrite"));
  auto lower = Save(env, dir.get(), 300, false);
  EXPECT_EQ(lower.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(lower.status().message()),
              HasSubstr("below the last committed step 500"));
  // Rollback with overwrite: allowed, latest still names the highest step.
  ASSERT_TRUE(Save(env, dir.get(), 300, false, 'b', Overwrite::kYes).ok());
  EXPECT_EQ(Latest(), "step_500.gguf");
  // Overwriting 500 without train tensors removes its stale train file.
  auto r = Save(env, dir.get(), 500, false, 'c', Overwrite::kYes);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_300.gguf", "step_500.gguf", "latest"));
  EXPECT_TRUE(r->train_path.empty());
}

TEST_F(RunDirTest, DeleteAboveRemovesNewerStepsAndRepointsLatest) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  for (uint64_t step : {10, 20, 30, 40}) ASSERT_TRUE(Save(env, dir.get(), step, true).ok());
  auto deleted = dir->DeleteAbove(20);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, (std::vector<uint64_t>{40, 30}));  // newest first
  EXPECT_EQ(Latest(), "step_20.gguf");
  EXPECT_THAT(Names(Weights()),
              UnorderedElementsAre("step_10.gguf", "step_10.train.gguf", "step_20.gguf",
                                   "step_20.train.gguf", "latest"));
  EXPECT_EQ(dir->DeleteAbove(20)->size(), 0u);
  ASSERT_EQ(dir->DeleteAbove(0)->size(), 2u);  // everything: latest goes too
  EXPECT_FALSE(env->ReadLink(Weights() + "/latest").ok());
  EXPECT_TRUE(dir->catalog().empty());
}

TEST_F(RunDirTest, RecoveryRemovesTempsAndOrphansAndRepairsLatest) {
  env::Env* env = env::Env::Default();
  {
    auto dir = OpenDir();
    ASSERT_TRUE(Save(env, dir.get(), 1, true).ok());
    ASSERT_TRUE(Save(env, dir.get(), 2, true).ok());
  }
  // Damage: temps of a save in progress, an orphaned train file, a stale
  // train file of step 2, latest pointing at an older step, a foreign file.
  testing::WriteFile(Weights() + "/" + TempFileName("step_3.gguf"), "partial");
  testing::WriteFile(Weights() + "/" + TempFileName("step_3.train.gguf"), "partial");
  testing::WriteFile(Weights() + "/" + TempFileName("latest"), "x");
  std::rename((Weights() + "/step_1.train.gguf").c_str(),
              (Weights() + "/step_9.train.gguf").c_str());
  testing::WriteFile(Weights() + "/notes.txt", "keep me");
  std::remove((Weights() + "/latest").c_str());
  ASSERT_EQ(::symlink("step_1.gguf", (Weights() + "/latest").c_str()), 0);

  RecoveryReport report;
  auto dir = OpenDir(env, &report);
  EXPECT_EQ(report.removed.size(), 3u);  // the temps
  // The train file without its model file may be all that is left of step
  // 9: moved aside, not deleted.
  ASSERT_EQ(report.quarantined.size(), 1u);
  EXPECT_EQ(report.quarantined[0].path, tmp_.Join("run/quarantine/step_9.train.gguf"));
  EXPECT_THAT(report.quarantined[0].reason, HasSubstr("its model file step_9.gguf is missing"));
  EXPECT_TRUE(report.latest_repaired);
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_1.gguf", "step_2.gguf",
                                                     "step_2.train.gguf", "latest", "notes.txt"));
  EXPECT_EQ(Latest(), "step_2.gguf");
  EXPECT_EQ(dir->catalog().size(), 2u);
  EXPECT_FALSE(dir->Find(2)->train_path.empty());
  ASSERT_EQ(dir->quarantined().size(), 1u);
}

// Recovery never deletes a file that verifies: a damaged model file goes to
// quarantine/ with the intact train file saved with it, each with a reason.
TEST_F(RunDirTest, ADamagedModelFileIsQuarantinedWithItsIntactTrainFile) {
  env::Env* env = env::Env::Default();
  {
    auto dir = OpenDir();
    ASSERT_OK(Save(env, dir.get(), 1, true, 'a').status());
    ASSERT_OK(Save(env, dir.get(), 2, true, 'b').status());
  }
  const std::string train = testing::ReadFile(Weights() + "/step_2.train.gguf");
  ASSERT_EQ(::truncate((Weights() + "/step_2.gguf").c_str(), 1000), 0);
  RecoveryReport report;
  auto dir = OpenDir(env, &report);
  EXPECT_TRUE(report.removed.empty());
  ASSERT_EQ(report.quarantined.size(), 2u);
  EXPECT_THAT(report.quarantined[0].reason, HasSubstr("runs past the end of the file"));
  EXPECT_THAT(report.quarantined[1].reason,
              HasSubstr("saved with step_2.gguf, which was quarantined: "));
  EXPECT_EQ(Latest(), "step_1.gguf");
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_1.gguf", "step_1.train.gguf", "latest"));
  EXPECT_THAT(Names(tmp_.Join("run/quarantine")),
              UnorderedElementsAre("step_2.gguf", "step_2.gguf.why", "step_2.train.gguf",
                                   "step_2.train.gguf.why"));
  EXPECT_EQ(testing::ReadFile(tmp_.Join("run/quarantine/step_2.train.gguf")), train);
  // Listed after a restart too, reasons and all; a second damaged step 2
  // does not overwrite the first.
  ASSERT_OK(Save(env, dir.get(), 2, true, 'c').status());
  ASSERT_EQ(::truncate((Weights() + "/step_2.gguf").c_str(), 1000), 0);
  dir = OpenDir();
  ASSERT_EQ(dir->quarantined().size(), 4u);
  EXPECT_EQ(dir->quarantined()[1].path, tmp_.Join("run/quarantine/step_2.gguf.1"));
  EXPECT_THAT(dir->quarantined()[1].reason, HasSubstr("runs past the end of the file"));
}

// Equal model tensors at two steps give equal content digests: the step and
// the save id tie a train file to its model file.
TEST_F(RunDirTest, ATrainFileOfAnotherStepWithEqualTensorsIsNotTied) {
  env::Env* env = env::Env::Default();
  {
    auto dir = OpenDir();
    ASSERT_OK(Save(env, dir.get(), 1, true, 'a').status());
    ASSERT_OK(Save(env, dir.get(), 2, true, 'a').status());  // the same bytes
  }
  ASSERT_EQ(std::rename((Weights() + "/step_2.train.gguf").c_str(),
                        (Weights() + "/step_1.train.gguf").c_str()),
            0);
  RecoveryReport report;
  auto dir = OpenDir(env, &report);
  ASSERT_EQ(report.quarantined.size(), 1u);
  EXPECT_THAT(report.quarantined[0].reason,
              HasSubstr("it is step 2's training state, the model file is step 1"));
  ASSERT_NE(dir->Find(1), nullptr);
  EXPECT_TRUE(dir->Find(1)->train_path.empty());
  EXPECT_TRUE(dir->Find(2)->train_path.empty());  // it moved away
}

TEST_F(RunDirTest, AnotherSavesTrainFileOfTheSameStepIsNotTied) {
  env::Env* env = env::Env::Default();
  {
    auto dir = OpenDir();
    ASSERT_OK(Save(env, dir.get(), 1, true, 'a').status());
  }
  const std::string first = testing::ReadFile(Weights() + "/step_1.train.gguf");
  {
    auto dir = OpenDir();
    ASSERT_OK(Save(env, dir.get(), 1, true, 'a', Overwrite::kYes).status());  // same tensors
  }
  testing::WriteFile(Weights() + "/step_1.train.gguf", first);  // the first save's, put back
  auto dir = OpenDir();
  // Same step, same model content, another save: an overwrite's leftover,
  // never this model file's training state.
  EXPECT_TRUE(dir->Find(1)->train_path.empty());
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_1.gguf", "latest"));
}

TEST_F(RunDirTest, StepOnesFilesUnderStepThreesNamesAreNotStepThree) {
  env::Env* env = env::Env::Default();
  {
    auto dir = OpenDir();
    ASSERT_OK(Save(env, dir.get(), 1, true, 'a').status());
    ASSERT_OK(Save(env, dir.get(), 3, true, 'b').status());
  }
  for (const char* suffix : {".gguf", ".train.gguf"}) {
    testing::WriteFile(Weights() + "/step_3" + suffix,
                       testing::ReadFile(Weights() + "/step_1" + suffix));
  }
  RecoveryReport report;
  auto dir = OpenDir(env, &report);
  ASSERT_EQ(report.quarantined.size(), 2u);
  EXPECT_THAT(report.quarantined[0].reason,
              HasSubstr("its header says step 1 (ckpt.step), its name says step 3"));
  EXPECT_EQ(dir->Find(3), nullptr);
  EXPECT_EQ(Latest(), "step_1.gguf");
}

TEST_F(RunDirTest, AChangedMetadataValueQuarantinesTheFile) {
  env::Env* env = env::Env::Default();
  {
    auto dir = OpenDir();
    ASSERT_OK(Save(env, dir.get(), 1, true, 'a').status());
    ASSERT_OK(Save(env, dir.get(), 2, true, 'a').status());
  }
  for (const char* name : {"step_2.gguf", "step_1.train.gguf"}) {
    std::string bytes = testing::ReadFile(Weights() + "/" + name);
    const size_t at = bytes.find("llama");  // general.architecture, or opt.lr's neighbour
    const size_t lr = bytes.find("opt.lr");
    const size_t flip = at != std::string::npos ? at + 4 : lr + 16;  // a value byte
    ASSERT_LT(flip, bytes.size());
    bytes[flip] ^= 0x01;  // "llama" -> "llamb"; a bit of opt.lr's f64
    testing::WriteFile(Weights() + "/" + name, bytes);
  }
  RecoveryReport report;
  auto dir = OpenDir(env, &report);
  ASSERT_EQ(report.quarantined.size(), 3u);  // step 2's model file and train file; step 1's train
  for (const auto& q : report.quarantined) EXPECT_THAT(q.reason, HasSubstr("metadata digest"));
  EXPECT_EQ(Latest(), "step_1.gguf");
  EXPECT_TRUE(dir->Find(1)->train_path.empty());
}

TEST_F(RunDirTest, DanglingLatestIsRepairedAndEmptyRunHasNoLatest) {
  ASSERT_TRUE(env::Env::Default()->CreateDirs(Weights()).ok());
  ASSERT_EQ(::symlink("step_7.gguf", (Weights() + "/latest").c_str()), 0);
  auto dir = OpenDir();
  EXPECT_THAT(Names(Weights()), ::testing::IsEmpty());
  EXPECT_FALSE(dir->latest_step().has_value());
}

TEST_F(RunDirTest, FailedModelRenameLeavesEverythingAsItWas) {
  auto fault = env::NewFaultInjectionEnv(env::Env::Default(), "fail=rename:6:EIO");
  auto dir = OpenDir(fault->get());
  // Renames: train -> .next 1, model 2, .next -> train 3, latest 4.
  ASSERT_TRUE(Save(fault->get(), dir.get(), 1, true).ok());
  auto st = Save(fault->get(), dir.get(), 2, true);  // train -> .next 5, model rename 6 fails
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_1.gguf", "step_1.train.gguf", "latest"));
  EXPECT_EQ(Latest(), "step_1.gguf");
}

TEST_F(RunDirTest, AnErrorAfterTheCommitPointStillUpdatesTheCatalog) {
  // Dir fsyncs: step 1's commit 1 and latest 2; the overwrite's commit fsync 3 fails.
  auto fault = env::NewFaultInjectionEnv(env::Env::Default(), "fail=syncdir:3:EIO");
  auto dir = OpenDir(fault->get());
  auto first = Save(fault->get(), dir.get(), 1, false, 'a');
  ASSERT_OK(first.status());
  auto again = Save(fault->get(), dir.get(), 1, false, 'b', Overwrite::kYes);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(env::IsIoError(again.status())) << again.status();
  // The file on disk is the new one, and so is what listings show.
  auto on_disk = ReadCheckpointRecord(env::Env::Default(), 1, Weights() + "/step_1.gguf");
  ASSERT_OK(on_disk.status());
  EXPECT_NE(on_disk->content_digest, first->content_digest);
  ASSERT_NE(dir->Find(1), nullptr);
  EXPECT_EQ(dir->Find(1)->content_digest, on_disk->content_digest);
  EXPECT_EQ(dir->Find(1)->uuid, on_disk->uuid);
}

TEST_F(RunDirTest, RecoveryRemovesStateFileTemps) {
  auto dir = OpenDir();
  const std::string stale = tmp_.Join("run/" + TempFileName(kPinsFile));
  ckptd::testing::WriteFile(stale, "{");
  ckptd::testing::WriteFile(tmp_.Join("run/notes.txt"), "mine");
  RecoveryReport report;
  dir = OpenDir(env::Env::Default(), &report);
  EXPECT_THAT(report.removed, UnorderedElementsAre(stale));
  EXPECT_TRUE(env::Env::Default()->Stat(tmp_.Join("run/notes.txt")).ok());
}

TEST_F(RunDirTest, DiskFullMidWriteLeavesNoTrace) {
  auto fault = env::NewFaultInjectionEnv(env::Env::Default(), "enospc_after_bytes=12000");
  auto dir = OpenDir(fault->get());
  ASSERT_TRUE(Save(fault->get(), dir.get(), 1, false).ok());
  auto st = Save(fault->get(), dir.get(), 2, true);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("No space left on device"));
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_1.gguf", "latest"));
}

TEST_F(RunDirTest, FsyncErrorFailsTheSaveBeforeTheCommitPoint) {
  auto fault = env::NewFaultInjectionEnv(env::Env::Default(), "fail=sync:1:EIO");
  auto dir = OpenDir(fault->get());
  auto st = Save(fault->get(), dir.get(), 1, false);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("Input/output error"));
  EXPECT_THAT(Names(Weights()), ::testing::IsEmpty());
}

// Counts bytes read through OpenForRead, to prove listing reads headers only.
class CountingEnv : public env::EnvWrapper {
 public:
  explicit CountingEnv(env::Env* base) : EnvWrapper(base) {}
  class File : public env::RandomAccessFile {
   public:
    File(std::unique_ptr<env::RandomAccessFile> f, std::atomic<uint64_t>* n)
        : RandomAccessFile(f->path()), f_(std::move(f)), n_(n) {}
    uint64_t size() const override { return f_->size(); }
    absl::Status ReadAt(uint64_t off, size_t n, void* dst) const override {
      *n_ += n;
      return f_->ReadAt(off, n, dst);
    }
    absl::StatusOr<size_t> ReadUpTo(uint64_t off, size_t n, void* dst) const override {
      *n_ += n;
      return f_->ReadUpTo(off, n, dst);
    }

   private:
    std::unique_ptr<env::RandomAccessFile> f_;
    std::atomic<uint64_t>* n_;
  };
  absl::StatusOr<std::unique_ptr<env::RandomAccessFile>> OpenForRead(
      const std::string& p) override {
    auto f = target()->OpenForRead(p);
    if (!f.ok()) return f.status();
    return std::unique_ptr<env::RandomAccessFile>(new File(std::move(*f), &bytes_read));
  }
  absl::StatusOr<std::unique_ptr<env::MappedFile>> MapForRead(const std::string& p) override {
    ADD_FAILURE() << "mapped " << p;
    return target()->MapForRead(p);
  }

  std::atomic<uint64_t> bytes_read{0};
};

TEST_F(RunDirTest, CatalogIsRebuiltFromHeadersWithoutReadingTensorData) {
  env::Env* env = env::Env::Default();
  {
    auto dir = OpenDir();
    for (uint64_t step = 1; step <= 5; ++step) {
      auto w = CheckpointWriter::Create(env, dir->weights_dir(), Plan(step, true, 4u << 20));
      ASSERT_TRUE(w.ok());
      ASSERT_TRUE((*w)->WriteData(Bytes((*w)->data_bytes(), 'z')).ok());
      ASSERT_TRUE((*w)->Finish().ok());
      ASSERT_TRUE(dir->Commit(w->get(), Overwrite::kNo).ok());
    }
  }
  CountingEnv counting(env);
  auto dir = OpenDir(&counting);
  ASSERT_EQ(dir->catalog().size(), 5u);
  const uint64_t data = 5 * 2 * (16u << 20);  // 160 MiB of tensors on disk
  // Ten headers (model + train), each read through the reader's first 8 KiB window.
  EXPECT_LE(counting.bytes_read.load(), 10 * 8 * 1024u) << "of " << data << " data bytes";
  EXPECT_EQ(dir->Find(3)->model_bytes, env->Stat(dir->Find(3)->model_path)->size);
}

// A multi-rank run's part: staged (invisible), then committed by its
// marker or aborted; recovery keeps a pending part pending.
absl::StatusOr<CheckpointRecord> StageRankPart(env::Env* env, RunDir* dir, uint64_t step,
                                               uint32_t rank, uint32_t world) {
  SavePlan plan = Plan(step, /*with_train=*/true);
  plan.part = SplitName{.step = step, .rank = rank, .world_size = world};
  auto w = CheckpointWriter::Create(env, dir->weights_dir(), std::move(plan));
  if (!w.ok()) return w.status();
  CKPTD_TRY((*w)->WriteData(Bytes((*w)->data_bytes(), 'p')));
  CKPTD_TRY((*w)->Finish());
  return dir->StagePart(w->get());
}

TEST_F(RunDirTest, APartIsInvisibleUntilItsCommitMarker) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  auto staged = StageRankPart(env, dir.get(), 100, 1, 3);
  ASSERT_TRUE(staged.ok()) << staged.status();
  EXPECT_EQ(staged->rank, 1u);
  EXPECT_EQ(staged->world_size, 3u);
  EXPECT_TRUE(dir->catalog().empty());
  EXPECT_EQ(dir->pending().size(), 1u);
  EXPECT_FALSE(env->ReadLink(Weights() + "/latest").ok());
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_100-00002-of-00003.gguf",
                                                     "step_100-00002-of-00003.train.gguf"));
  // The same step again is refused while it waits.
  EXPECT_EQ(dir->CheckCanSave(100, Overwrite::kYes).code(), absl::StatusCode::kAlreadyExists);
  {  // a restart keeps it pending
    RecoveryReport report;
    auto again = OpenDir(env, &report);
    EXPECT_TRUE(again->catalog().empty());
    ASSERT_EQ(again->pending().count(100), 1u);
    EXPECT_EQ(again->pending().at(100).train_path, staged->train_path);
    EXPECT_TRUE(report.removed.empty());
  }
  auto committed = dir->CommitPart(100);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_TRUE(dir->pending().empty());
  ASSERT_NE(dir->Find(100), nullptr);
  EXPECT_EQ(Latest(), "step_100-00002-of-00003.gguf");
  EXPECT_TRUE(dir->CommitPart(100).ok());  // idempotent
  {                                        // a restart finds it committed, with its training state
    auto again = OpenDir();
    ASSERT_NE(again->Find(100), nullptr);
    EXPECT_EQ(again->Find(100)->rank, 1u);
    EXPECT_EQ(again->Find(100)->train_path, staged->train_path);
    EXPECT_TRUE(again->pending().empty());
  }
  // Deleting it takes the marker first, then its files.
  ASSERT_TRUE(StageRankPart(env, dir.get(), 200, 1, 3).ok());
  ASSERT_TRUE(dir->CommitPart(200).ok());
  EXPECT_EQ(Latest(), "step_200-00002-of-00003.gguf");
  ASSERT_TRUE(dir->Delete(100).ok());
  EXPECT_THAT(Names(Weights()), UnorderedElementsAre("step_200-00002-of-00003.gguf",
                                                     "step_200-00002-of-00003.train.gguf",
                                                     "step_200.commit", "latest"));
}

TEST_F(RunDirTest, AnAbortedPartLeavesNothingAndRecoveryDropsOrphans) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  ASSERT_TRUE(StageRankPart(env, dir.get(), 100, 0, 2).ok());
  ASSERT_TRUE(dir->AbortPart(100).ok());
  EXPECT_TRUE(Names(Weights()).empty());
  EXPECT_TRUE(dir->pending().empty());
  // A marker without its part, and a part's train file without its part.
  ASSERT_TRUE(env::WriteFileAtomically(env, Weights() + "/step_7.commit", "{}").ok());
  ASSERT_TRUE(StageRankPart(env, dir.get(), 8, 0, 2).ok());
  ASSERT_TRUE(env->RemoveFile(Weights() + "/step_8-00001-of-00002.gguf").ok());
  RecoveryReport report;
  auto again = OpenDir(env, &report);
  EXPECT_TRUE(Names(Weights()).empty());
  EXPECT_EQ(report.removed.size(), 2u);
}

}  // namespace
}  // namespace ckptd::storage
