// Restore against checkpoints committed by the storage layer: every dtype
// read back bit for bit (O_DIRECT and buffered, one tensor or many, pieces
// smaller than a tensor, unaligned destinations), a flipped byte named by
// tensor, the training-state file tied to its own model file, and files
// without digests refused unless verify is off.
#include "ckptd/restore.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "daemon/gguf/writer.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/checkpoint_writer.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/run_dir.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd {
namespace {

using ::testing::HasSubstr;

struct Tensor {
  std::string name;
  gguf::TensorType type;
  std::vector<uint64_t> ne;
  storage::TensorGroup group = storage::TensorGroup::kModel;
  std::string bytes;
};

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// One tensor of every type the API accepts, shapes that leave the file
// unaligned, and training-state tensors.
std::vector<Tensor> AllTypes() {
  std::vector<Tensor> ts = {
      {"f32", gguf::TensorType::kF32, {7, 3}},
      {"f16", gguf::TensorType::kF16, {5}},
      {"bf16", gguf::TensorType::kBF16, {3, 3, 3}},
      {"f64", gguf::TensorType::kF64, {2, 1, 1, 2}},
      {"i8", gguf::TensorType::kI8, {13}},
      {"i16", gguf::TensorType::kI16, {1}},
      {"i32", gguf::TensorType::kI32, {9}},
      {"i64", gguf::TensorType::kI64, {4}},
      {"q8_0", gguf::TensorType::kQ8_0, {64}},
      {"big", gguf::TensorType::kF32, {300000}},  // spans several pieces
      {"opt.m", gguf::TensorType::kF32, {7, 3}, storage::TensorGroup::kTrain},
      {"rng", gguf::TensorType::kI8, {2500}, storage::TensorGroup::kTrain},
  };
  uint32_t seed = 1;
  for (Tensor& t : ts) {
    t.bytes = RandomBytes(*gguf::TensorBytes(t.type, t.ne), seed++);
  }
  return ts;
}

class RestoreTest : public ::testing::Test {
 protected:
  // Commits `tensors` as step `step` of a run and returns the model path.
  std::string Commit(uint64_t step, const std::vector<Tensor>& tensors) {
    env::Env* env = env::Env::Default();
    auto dir = storage::RunDir::Open(env, tmp_.Join("run"), nullptr);
    EXPECT_OK(dir.status());
    storage::SavePlan plan;
    plan.step = step;
    plan.model_metadata.Set("general.architecture", gguf::Value("llama"));
    plan.model_metadata.Set(std::string(storage::kKeyStep), gguf::Value(step));
    plan.train_metadata.Set("training.seed", gguf::Value(uint64_t{42}));
    // As a save writes them: the step and one save id in both files.
    const std::string save_id = storage::NewSaveId();
    plan.model_metadata.Set(std::string(storage::kKeySaveId), gguf::Value::String(save_id));
    plan.train_metadata.Set(std::string(storage::kKeyStep), gguf::Value(step));
    plan.train_metadata.Set(std::string(storage::kKeySaveId), gguf::Value::String(save_id));
    plan.train_metadata.Set(std::string(storage::kKeyRole), gguf::Value("train"));
    std::string data;
    for (const Tensor& t : tensors) {
      plan.tensors.push_back({{t.name, t.type, t.ne}, t.group});
      data += t.bytes;
    }
    auto w = storage::CheckpointWriter::Create(env, (*dir)->weights_dir(), plan);
    EXPECT_OK(w.status());
    EXPECT_OK((*w)->WriteData(data));
    EXPECT_OK((*w)->Finish());
    auto rec = (*dir)->Commit(w->get(), storage::Overwrite::kNo);
    EXPECT_OK(rec.status());
    return rec->model_path;
  }
  std::string Weights() const { return tmp_.Join("run/weights"); }
  testing::TempDir tmp_;
};

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x20);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

TEST_F(RestoreTest, EveryTypeReadsBackBitForBit) {
  const auto tensors = AllTypes();
  const std::string model = Commit(100, tensors);
  for (bool direct : {true, false}) {
    for (size_t chunk : {size_t{4096}, size_t{8} << 20}) {
      RestoreOptions opt;
      opt.direct_io = direct;
      opt.chunk_bytes = chunk;
      opt.reads_in_flight = 3;
      auto r = Restore::Open(model, "", opt);
      ASSERT_OK(r.status());
      EXPECT_EQ((*r)->step(), 100u);
      EXPECT_EQ((*r)->source(), "disk");
      EXPECT_EQ((*r)->train_path(), Weights() + "/" + storage::TrainFileName(100));
      ASSERT_EQ((*r)->tensors().size(), tensors.size());
      // One read of everything, destinations deliberately unaligned.
      std::vector<std::string> out;
      out.reserve(tensors.size());
      std::vector<ReadTarget> targets;
      for (const Tensor& t : tensors) out.push_back(std::string(t.bytes.size() + 1, '\0'));
      for (size_t i = tensors.size(); i-- > 0;) {  // any order
        targets.push_back({tensors[i].name, out[i].data() + 1, tensors[i].bytes.size()});
      }
      ASSERT_OK((*r)->ReadMany(targets));
      for (size_t i = 0; i < tensors.size(); ++i) {
        EXPECT_EQ(out[i].substr(1), tensors[i].bytes) << tensors[i].name << " direct=" << direct;
        const RestoreTensor* info = (*r)->Find(tensors[i].name);
        ASSERT_NE(info, nullptr);
        EXPECT_EQ(info->ne, tensors[i].ne);
        EXPECT_EQ(static_cast<uint32_t>(info->type), static_cast<uint32_t>(tensors[i].type));
        EXPECT_EQ(info->digest.size(), 32u);
        EXPECT_EQ(info->group, tensors[i].group == storage::TensorGroup::kModel
                                   ? v1::TENSOR_GROUP_MODEL
                                   : v1::TENSOR_GROUP_TRAIN);
      }
      // One at a time.
      for (const Tensor& t : tensors) {
        std::string one(t.bytes.size(), '\0');
        ASSERT_OK((*r)->ReadInto(t.name, one.data(), one.size()));
        EXPECT_EQ(one, t.bytes) << t.name;
      }
    }
  }
}

TEST_F(RestoreTest, AFlippedByteIsNamedByTensor) {
  const auto tensors = AllTypes();
  const std::string model = Commit(100, tensors);
  auto header = storage::ReadGgufHeader(env::Env::Default(), model);
  ASSERT_OK(header.status());
  const gguf::TensorInfo& big = header->tensors[9];
  ASSERT_EQ(big.name, "big");
  FlipByte(model, header->data_offset + big.offset + 777777);
  auto r = Restore::Open(model);
  ASSERT_OK(r.status());
  std::string f32(tensors[0].bytes.size(), '\0');
  EXPECT_OK((*r)->ReadInto("f32", f32.data(), f32.size()));  // the others are intact
  std::string dst(big.nbytes, '\0');
  absl::Status st = (*r)->ReadInto("big", dst.data(), dst.size());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("tensor 'big'"));
  // verify = false reads what is there.
  RestoreOptions unchecked;
  unchecked.verify = false;
  auto u = Restore::Open(model, "", unchecked);
  ASSERT_OK(u.status());
  EXPECT_OK((*u)->ReadInto("big", dst.data(), dst.size()));
  EXPECT_NE(dst, tensors[9].bytes);
}

TEST_F(RestoreTest, ARenamedTensorFailsAtOpen) {
  const std::string model = Commit(100, AllTypes());
  auto header = storage::ReadGgufHeader(env::Env::Default(), model);
  ASSERT_OK(header.status());
  // "f16" -> "g16" in the tensor table: the stored content digest no longer matches.
  std::ifstream in(model, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  size_t at = bytes.find(std::string("\x03\0\0\0\0\0\0\0f16", 11));
  ASSERT_NE(at, std::string::npos);
  FlipByte(model, at + 8);
  auto r = Restore::Open(model);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("tensor table"));
}

// Equal model tensors at two steps (frozen weights) give equal content
// digests: the step and the save id tie the train file to its model file.
TEST_F(RestoreTest, ATrainFileOfAnotherStepWithEqualModelTensorsIsRefused) {
  const auto a = AllTypes();
  const std::string m1 = Commit(1, a);
  Commit(2, a);
  const std::string t2 = Weights() + "/" + storage::TrainFileName(2);
  auto r = Restore::Open(m1, t2);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("it is step 2's training state, the model file is step 1"));
  // The same step saved twice with the same tensors: another save's file.
  std::filesystem::copy_file(t2, tmp_.Join("t2"));
  std::filesystem::remove_all(Weights());
  Commit(2, a);
  auto again = Restore::Open(Weights() + "/step_2.gguf", tmp_.Join("t2"));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition) << again.status();
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("(equal tensors, another save)"));
}

TEST_F(RestoreTest, AFileUnderAnotherStepsNameIsRefused) {
  const auto a = AllTypes();
  const std::string m1 = Commit(1, a);
  std::filesystem::copy_file(m1, Weights() + "/step_3.gguf");
  auto r = Restore::Open(Weights() + "/step_3.gguf", "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("its header says step 1 (ckpt.step), its name says step 3"));
  auto train = Restore::Open(Weights() + "/" + storage::TrainFileName(1), "");
  EXPECT_EQ(train.status().code(), absl::StatusCode::kInvalidArgument) << train.status();
}

TEST_F(RestoreTest, AFlippedMetadataValueIsRefused) {
  const std::string m = Commit(4, AllTypes());
  const std::string t = Weights() + "/" + storage::TrainFileName(4);
  std::ifstream in(t, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const size_t at = bytes.find("training.seed");
  ASSERT_NE(at, std::string::npos);
  FlipByte(t, at + 13 + 4);  // the seed's u64: 42 -> 10
  auto r = Restore::Open(m);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("metadata digest mismatch"));
  RestoreOptions unchecked;
  unchecked.verify = false;
  EXPECT_OK(Restore::Open(m, "", unchecked).status());  // asked for: unchecked
}

TEST_F(RestoreTest, TheTrainFileMustBelongToItsModelFile) {
  auto a = AllTypes();
  const std::string m100 = Commit(100, a);
  a[0].bytes[0] ^= 1;
  const std::string m200 = Commit(200, a);
  const std::string t100 = Weights() + "/" + storage::TrainFileName(100);
  auto r = Restore::Open(m200, t100);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("not one checkpoint"));
  EXPECT_OK(Restore::Open(m100, t100).status());
  // A model file without a train file has only model tensors.
  std::filesystem::remove(Weights() + "/" + storage::TrainFileName(200));
  auto only = Restore::Open(m200);
  ASSERT_OK(only.status());
  EXPECT_EQ((*only)->train_path(), "");
  EXPECT_EQ((*only)->Find("opt.m"), nullptr);
}

TEST_F(RestoreTest, BadRequestsAreNamed) {
  const auto tensors = AllTypes();
  auto r = Restore::Open(Commit(100, tensors));
  ASSERT_OK(r.status());
  std::string dst(16, '\0');
  absl::Status missing = (*r)->ReadInto("nope", dst.data(), dst.size());
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  absl::Status size = (*r)->ReadInto("f32", dst.data(), dst.size());
  EXPECT_EQ(size.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(size.message()), HasSubstr("84 bytes"));
  auto gone = Restore::Open(tmp_.Join("none.gguf"));
  EXPECT_FALSE(gone.ok());
}

// A destination that states its type and dims gets the saved tensor only
// when both are the same: an F16 tensor is never read into BF16 memory, a
// [16, 4] one never into [4, 16], even with the byte counts equal.
TEST_F(RestoreTest, ATypeOrShapeOtherThanTheSavedOneIsRefusedBeforeReading) {
  const std::vector<Tensor> tensors = {
      {"w", gguf::TensorType::kF16, {16, 4}, storage::TensorGroup::kModel, RandomBytes(128, 3)}};
  auto r = Restore::Open(Commit(100, tensors));
  ASSERT_OK(r.status());
  std::string dst(128, '\0');
  const std::vector<uint64_t> saved = {16, 4}, turned = {4, 16};
  absl::Status type = (*r)->ReadInto("w", dst.data(), dst.size(), v1::TENSOR_TYPE_BF16, saved);
  EXPECT_EQ(type.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(type.message()),
              HasSubstr("tensor 'w': the checkpoint holds TENSOR_TYPE_F16 [16, 4], the "
                        "destination is TENSOR_TYPE_BF16 [16, 4]"));
  absl::Status shape = (*r)->ReadInto("w", dst.data(), dst.size(), v1::TENSOR_TYPE_F16, turned);
  EXPECT_EQ(shape.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(shape.message()), HasSubstr("[16, 4], the destination is"));
  EXPECT_EQ(dst, std::string(128, '\0'));  // nothing was read
  ASSERT_OK((*r)->ReadInto("w", dst.data(), dst.size(), v1::TENSOR_TYPE_F16, saved));
  EXPECT_EQ(dst, tensors[0].bytes);
}

TEST_F(RestoreTest, AFileWithoutDigestsNeedsVerifyOff) {
  gguf::Metadata md;
  md.Set("general.architecture", gguf::Value("llama"));
  const std::string bytes = RandomBytes(64, 9);
  const std::string path = tmp_.Join("plain.gguf");
  auto layout = gguf::PlanLayout(md, {{"w", gguf::TensorType::kF32, {16}}},
                                 {.digest_slots = gguf::DigestSlots::kNone});
  ASSERT_OK(layout.status());
  gguf::StringSink sink;
  gguf::Writer w(*layout, &sink);
  ASSERT_OK(w.WriteHeader());
  ASSERT_OK(w.WriteData(bytes));
  ASSERT_OK(w.Finish().status());
  std::ofstream(path, std::ios::binary) << sink.data();
  auto r = Restore::Open(path);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("verify = false"));
  RestoreOptions off;
  off.verify = false;
  auto u = Restore::Open(path, "", off);
  ASSERT_OK(u.status());
  std::string dst(64, '\0');
  ASSERT_OK((*u)->ReadInto("w", dst.data(), dst.size()));
  EXPECT_EQ(dst, bytes);
}

}  // namespace
}  // namespace ckptd
