// Exports committed with a checkpoint: written in the same pass, renamed
// before the model file, `latest.E`, deleted and overwritten with it, and
// recovery dropping exports whose checkpoint never committed or is another.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "daemon/base/byte_source.h"
#include "daemon/base/status.h"
#include "daemon/env/fault_env.h"
#include "daemon/export/plan.h"
#include "daemon/gguf/reader.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/run_dir.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::storage {
namespace {

using ::testing::UnorderedElementsAre;

// "half": every tensor as f16, renamed with a prefix.
std::shared_ptr<const exports::ExportPlan> HalfPlan(const std::vector<PlannedTensor>& tensors,
                                                    const gguf::Metadata& md,
                                                    std::string name = "half") {
  auto spec = exports::ParseProfileToml(
      "name = \"half\"\nrename = [{ from = \"{X}\", to = \"x.{X}\" }]\n"
      "cast = [{ match = \"*\", type = \"f16\" }]\n",
      "half.toml");
  auto profile = exports::CompileProfile(*spec);
  std::vector<gguf::TensorSpec> model;
  for (const auto& t : tensors) {
    if (t.group == TensorGroup::kModel) model.push_back(t.spec);
  }
  auto plan = exports::PlanExport(*profile, name, model, md, "test");
  EXPECT_TRUE(plan.ok()) << plan.status();
  return std::make_shared<const exports::ExportPlan>(std::move(*plan));
}

SavePlan Plan(uint64_t step, bool with_export) {
  SavePlan plan;
  plan.step = step;
  plan.direct_io = env::DirectIo::kOff;
  plan.model_metadata.Set(std::string(kKeyStep), gguf::Value(step));
  plan.tensors.push_back({{"w", gguf::TensorType::kF32, {256}}, TensorGroup::kModel});
  plan.tensors.push_back({{"m", gguf::TensorType::kF32, {64}}, TensorGroup::kTrain});
  plan.tensors.push_back({{"b", gguf::TensorType::kF32, {32}}, TensorGroup::kModel});
  if (with_export) plan.exports.push_back(HalfPlan(plan.tensors, plan.model_metadata));
  return plan;
}

absl::StatusOr<CheckpointRecord> Save(env::Env* env, RunDir* dir, uint64_t step, bool with_export,
                                      float value = 1.5f, Overwrite ow = Overwrite::kNo) {
  CKPTD_ASSIGN_OR_RETURN(
      auto w, CheckpointWriter::Create(env, dir->weights_dir(), Plan(step, with_export)));
  std::vector<float> data(w->data_bytes() / 4, value);
  // Odd chunking: exports must not care where chunks end.
  std::string_view bytes(reinterpret_cast<const char*>(data.data()), w->data_bytes());
  while (!bytes.empty()) {
    size_t n = std::min<size_t>(bytes.size(), 100);
    CKPTD_TRY(w->WriteData(bytes.substr(0, n)));
    bytes.remove_prefix(n);
  }
  CKPTD_TRY(w->Finish());
  return dir->Commit(w.get(), ow);
}

class ExportCommitTest : public ::testing::Test {
 protected:
  std::unique_ptr<RunDir> OpenDir(env::Env* env = env::Env::Default(),
                                  RecoveryReport* report = nullptr) {
    auto d = RunDir::Open(env, tmp_.Join("run"), report);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? std::move(*d) : nullptr;
  }
  std::string Weights() const { return tmp_.Join("run/weights"); }
  std::vector<std::string> Names() const { return *env::Env::Default()->ListDir(Weights()); }
  std::string Link(const std::string& name) const {
    return env::Env::Default()->ReadLink(Weights() + "/" + name).value_or("(none)");
  }
  testing::TempDir tmp_;
};

TEST_F(ExportCommitTest, WrittenWithTheCheckpointAndNamingItsSource) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  auto r = Save(env, dir.get(), 10, true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(Names(), UnorderedElementsAre("step_10.gguf", "step_10.train.gguf",
                                            "step_10.half.gguf", "latest", "latest.half"));
  EXPECT_EQ(Link("latest.half"), "step_10.half.gguf");
  ASSERT_EQ(r->exports.size(), 1u);
  auto header = ReadGgufHeader(env, Weights() + "/step_10.half.gguf");
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(StringValue(header->metadata, exports::kKeySourceUuid), r->uuid);
  EXPECT_EQ(StringValue(header->metadata, gguf::kKeyUuid), r->exports[0].uuid);
  ASSERT_EQ(header->tensors.size(), 2u);  // the train tensor is not exported
  EXPECT_EQ(header->tensors[0].name, "x.w");
  EXPECT_EQ(header->tensors[0].type, gguf::TensorType::kF16);
  // Its data verifies, and the catalog rebuilt from disk says the same.
  auto file = env->OpenForRead(Weights() + "/step_10.half.gguf");
  EXPECT_TRUE(gguf::Verify(**file, *header).ok());
  auto again = OpenDir();
  EXPECT_EQ(again->Find(10)->exports, r->exports);
  EXPECT_EQ(again->total_bytes(), dir->total_bytes());
}

// Outputs that need their sources whole (split parts, a transpose) are built
// when the last source lands, whatever the chunking, and read back exactly.
TEST_F(ExportCommitTest, SplitAndTransposedOutputsHoldTheRightBytes) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  SavePlan plan;
  plan.step = 5;
  plan.direct_io = env::DirectIo::kOff;
  plan.tensors.push_back({{"w", gguf::TensorType::kF32, {4, 6}}, TensorGroup::kModel});
  plan.tensors.push_back({{"t", gguf::TensorType::kF32, {2, 3}}, TensorGroup::kModel});
  auto spec = exports::ParseProfileToml(
      "name = \"parts\"\nsplit = [{ from = \"w\", axis = \"rows\", to = [\"w0\", \"w1\", \"w2\"] "
      "}]\n"
      "rename = [{ from = \"t\", to = \"t\" }]\ntransform = [{ match = \"t\", transpose = true "
      "}]\n",
      "parts.toml");
  ASSERT_OK(spec.status());
  auto profile = exports::CompileProfile(*spec);
  ASSERT_OK(profile.status());
  std::vector<gguf::TensorSpec> model{plan.tensors[0].spec, plan.tensors[1].spec};
  auto ep = exports::PlanExport(*profile, "", model, plan.model_metadata, "test");
  ASSERT_OK(ep.status());
  plan.exports.push_back(std::make_shared<const exports::ExportPlan>(std::move(*ep)));
  auto w = CheckpointWriter::Create(env, dir->weights_dir(), std::move(plan));
  ASSERT_OK(w.status());
  std::vector<float> data(30);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  std::string_view bytes(reinterpret_cast<const char*>(data.data()), data.size() * 4);
  while (!bytes.empty()) {  // 7-byte chunks: no chunk ends on a float
    ASSERT_OK((*w)->WriteData(bytes.substr(0, 7)));
    bytes.remove_prefix(std::min<size_t>(7, bytes.size()));
  }
  ASSERT_OK((*w)->Finish());
  ASSERT_OK(dir->Commit(w->get(), Overwrite::kNo).status());
  const std::string path = Weights() + "/step_5.parts.gguf";
  auto header = ReadGgufHeader(env, path);
  ASSERT_OK(header.status());
  auto file = env->OpenForRead(path);
  auto values = [&](const std::string& name) {
    for (const auto& t : header->tensors) {
      if (t.name != name) continue;
      std::vector<float> v(t.nbytes / 4);
      EXPECT_OK((*file)->ReadAt(header->data_offset + t.offset, t.nbytes, v.data()));
      return v;
    }
    return std::vector<float>{};
  };
  EXPECT_EQ(values("w0"), (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(values("w1"), (std::vector<float>{8, 9, 10, 11, 12, 13, 14, 15}));
  EXPECT_EQ(values("w2"), (std::vector<float>{16, 17, 18, 19, 20, 21, 22, 23}));
  EXPECT_EQ(values("t"), (std::vector<float>{24, 26, 28, 25, 27,
                                             29}));  // rows {24 25} {26 27} {28 29}, transposed
}

TEST_F(ExportCommitTest, LatestFollowsTheNewestStepWithTheExport) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  ASSERT_OK(Save(env, dir.get(), 10, true).status());
  ASSERT_OK(Save(env, dir.get(), 20, true).status());
  ASSERT_OK(Save(env, dir.get(), 30, false).status());  // this save has no export
  EXPECT_EQ(Link("latest"), "step_30.gguf");
  EXPECT_EQ(Link("latest.half"), "step_20.half.gguf");
  ASSERT_OK(dir->Delete(20));
  EXPECT_EQ(Link("latest.half"), "step_10.half.gguf");
  ASSERT_OK(dir->Delete(10));
  EXPECT_THAT(Names(), UnorderedElementsAre("step_30.gguf", "step_30.train.gguf", "latest"));
}

TEST_F(ExportCommitTest, OverwriteWithoutTheExportRemovesTheStaleOne) {
  env::Env* env = env::Env::Default();
  auto dir = OpenDir();
  ASSERT_OK(Save(env, dir.get(), 10, true).status());
  ASSERT_OK(Save(env, dir.get(), 10, false, 2.5f, Overwrite::kYes).status());
  EXPECT_THAT(Names(), UnorderedElementsAre("step_10.gguf", "step_10.train.gguf", "latest"));
  EXPECT_TRUE(dir->Find(10)->exports.empty());
}

TEST_F(ExportCommitTest, AFailedCommitLeavesNoExportBehind) {
  // Renames: train -> .next 1, export 2, model 3 (the commit point).
  for (const char* fault : {"fail=rename:2:EIO", "fail=rename:3:EIO", "fail=syncdir:1:EIO"}) {
    SCOPED_TRACE(fault);
    std::filesystem::remove_all(tmp_.Join("run"));
    auto faulty = env::NewFaultInjectionEnv(env::Env::Default(), fault);
    ASSERT_TRUE(faulty.ok());
    auto dir = OpenDir(faulty->get());
    EXPECT_FALSE(Save(faulty->get(), dir.get(), 10, true).ok());
    EXPECT_THAT(Names(), ::testing::IsEmpty());
  }
}

TEST_F(ExportCommitTest, RecoveryDropsExportsOfCheckpointsThatDoNotExist) {
  env::Env* env = env::Env::Default();
  {
    auto dir = OpenDir();
    ASSERT_OK(Save(env, dir.get(), 10, true).status());
    ASSERT_OK(Save(env, dir.get(), 20, true, 3.0f).status());
  }
  namespace fs = std::filesystem;
  // A crash after the exports' rename but before the model's: step 30's
  // export without its model file.
  fs::copy_file(Weights() + "/step_20.half.gguf", Weights() + "/step_30.half.gguf");
  // An interrupted overwrite: step 10's export replaced by another
  // checkpoint's (its general.source.uuid names step 20).
  fs::copy_file(Weights() + "/step_20.half.gguf", Weights() + "/step_10.half.gguf",
                fs::copy_options::overwrite_existing);
  // Temps of an export and of its link.
  fs::copy_file(Weights() + "/step_20.half.gguf",
                Weights() + "/.step_40.half.gguf.tmp-0123456789abcdef");
  fs::create_symlink("step_20.half.gguf", Weights() + "/.latest.half.tmp-0123456789abcdef");
  fs::remove(Weights() + "/latest.half");
  RecoveryReport report;
  auto dir = OpenDir(env, &report);
  EXPECT_THAT(Names(), UnorderedElementsAre("step_10.gguf", "step_10.train.gguf", "step_20.gguf",
                                            "step_20.train.gguf", "step_20.half.gguf", "latest",
                                            "latest.half"));
  EXPECT_TRUE(dir->Find(10)->exports.empty());
  EXPECT_EQ(dir->Find(20)->exports.size(), 1u);
  EXPECT_EQ(Link("latest.half"), "step_20.half.gguf");
  EXPECT_TRUE(report.latest_repaired);
  EXPECT_EQ(report.removed.size(), 4u);
}

// 1,000 random single-bit flips over a committed checkpoint's model, train
// and export files, headers and data alike: Verify catches every one, so no
// restore (which checks the same digests) returns a flipped byte.
TEST_F(ExportCommitTest, EveryRandomBitFlipInAnyFileOfACheckpointIsCaught) {
  auto dir = OpenDir();
  auto r = Save(env::Env::Default(), dir.get(), 7, true);
  ASSERT_OK(r.status());
  ASSERT_FALSE(r->train_path.empty());
  ASSERT_EQ(r->exports.size(), 1u);
  std::vector<std::string> files;
  for (const std::string& path : {r->model_path, r->train_path, r->exports[0].path}) {
    files.push_back(testing::ReadFile(path));
    MemorySource src(files.back());
    auto header = gguf::ReadHeader(src);
    ASSERT_OK(header.status());
    ASSERT_OK(gguf::Verify(src, *header).status()) << path;
  }
  std::mt19937_64 rng(31);
  int caught = 0, in_header = 0;
  for (int i = 0; i < 1000; ++i) {
    const size_t f = rng() % files.size();
    std::string bytes = files[f];
    const uint64_t bit = rng() % (8 * bytes.size());
    bytes[bit / 8] ^= static_cast<char>(1 << (bit % 8));
    MemorySource src(bytes);
    auto header = gguf::ReadHeader(src);
    const absl::Status st = header.ok() ? gguf::Verify(src, *header).status() : header.status();
    if (!st.ok()) {
      ++caught;
    } else {
      ADD_FAILURE() << "file " << f << ": a flip of bit " << bit % 8 << " of byte " << bit / 8
                    << " passed";
    }
    if (header.ok() && bit / 8 < header->data_offset) ++in_header;
  }
  EXPECT_EQ(caught, 1000);
  std::printf("1000 flips over 3 files (%d landing in a header or its padding): %d caught\n",
              in_header, caught);
}

TEST_F(ExportCommitTest, ADamagedFileIsQuarantinedAloneOrWithItsStep) {
  auto dir = OpenDir();
  ASSERT_OK(Save(env::Env::Default(), dir.get(), 1, true).status());
  auto r2 = Save(env::Env::Default(), dir.get(), 2, true);
  ASSERT_OK(r2.status());
  // A damaged export goes alone; step 2 stays, latest.half moves back.
  auto alone = dir->QuarantineDamaged(2, r2->exports[0].path, "scrub: export damaged");
  ASSERT_OK(alone.status());
  EXPECT_FALSE(alone->step_lost);
  ASSERT_EQ(alone->files.size(), 1u);
  EXPECT_TRUE(dir->Find(2)->exports.empty());
  EXPECT_EQ(Link("latest"), "step_2.gguf");
  EXPECT_EQ(Link("latest.half"), "step_1.half.gguf");
  // A damaged train file takes its step: latest moves back to step 1.
  auto step = dir->QuarantineDamaged(2, r2->train_path, "scrub: train damaged");
  ASSERT_OK(step.status());
  EXPECT_TRUE(step->step_lost);
  ASSERT_EQ(step->files.size(), 2u);  // the model file first, then the train file
  EXPECT_THAT(step->files[0].reason, ::testing::HasSubstr("saved with step_2.train.gguf"));
  EXPECT_EQ(step->files[1].reason, "scrub: train damaged");
  EXPECT_EQ(dir->Find(2), nullptr);
  EXPECT_EQ(Link("latest"), "step_1.gguf");
  EXPECT_THAT(Names(), UnorderedElementsAre("step_1.gguf", "step_1.train.gguf", "step_1.half.gguf",
                                            "latest", "latest.half"));
  EXPECT_EQ(dir->quarantined().size(), 3u);
  // Gone already: NOT_FOUND, nothing moved.
  EXPECT_EQ(dir->QuarantineDamaged(2, r2->model_path, "x").status().code(),
            absl::StatusCode::kNotFound);
  // Recovery agrees: step 1 is latest, the quarantine stays.
  dir = OpenDir();
  EXPECT_EQ(dir->latest_step(), 1u);
  EXPECT_EQ(dir->quarantined().size(), 3u);
}

}  // namespace
}  // namespace ckptd::storage
