// ReplicaStore: replicas held for peers arrive whole and verified or not at
// all, stay within their byte budget (oldest arrivals evicted) and their
// per-run count, and a damaged one is refused when read back.
#include "daemon/replication/replica_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/env/env.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/checkpoint_writer.h"
#include "daemon/storage/file_names.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::replication {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ReplicaStoreTest : public ::testing::Test {
 protected:
  // A real step's two files, as a run directory commits them.
  // With `part`: rank part->rank's part of a multi-rank step.
  std::vector<std::pair<std::string, std::string>> Step(
      uint64_t step, std::optional<storage::SplitName> part = std::nullopt) {
    storage::SavePlan plan;
    plan.step = step;
    plan.part = part;
    const std::string save_id = storage::NewSaveId();
    plan.model_metadata.Set(std::string(storage::kKeyStep), gguf::Value(step));
    plan.model_metadata.Set(std::string(storage::kKeyRole), gguf::Value("model"));
    plan.model_metadata.Set(std::string(storage::kKeySaveId), gguf::Value::String(save_id));
    plan.tensors.push_back({{"w", gguf::TensorType::kF32, {4096}}, storage::TensorGroup::kModel});
    plan.tensors.push_back({{"m", gguf::TensorType::kF32, {1024}}, storage::TensorGroup::kTrain});
    plan.train_metadata.Set(std::string(storage::kKeyStep), gguf::Value(step));
    plan.train_metadata.Set(std::string(storage::kKeyRole), gguf::Value("train"));
    plan.train_metadata.Set(std::string(storage::kKeySaveId), gguf::Value::String(save_id));
    const std::string dir = tmp_.Join("src");
    EXPECT_TRUE(env_->CreateDirs(dir).ok());
    auto w = storage::CheckpointWriter::Create(env_, dir, std::move(plan));
    EXPECT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE((*w)->WriteData(std::string((*w)->data_bytes(), static_cast<char>(step))).ok());
    EXPECT_TRUE((*w)->Finish().ok());
    auto read = [&](const std::string& path) { return *env::ReadWholeFile(env_, path); };
    if (part) {
      return {{storage::SplitFileName(step, part->rank, part->world_size),
               read((*w)->model().temp_path)},
              {storage::PartTrainFileName(step, part->rank, part->world_size),
               read((*w)->train()->temp_path)}};
    }
    return {{storage::ModelFileName(step), read((*w)->model().temp_path)},
            {storage::TrainFileName(step), read((*w)->train()->temp_path)}};
  }
  absl::StatusOr<ReplicaInfo> Put(ReplicaStore& store, const std::string& run, uint64_t step,
                                  std::vector<std::pair<std::string, std::string>> files,
                                  size_t chunk = 777, uint32_t rank = 0, uint32_t world = 0) {
    std::vector<ReplicaFileSpec> specs;
    std::string bytes;
    for (const auto& [name, data] : files) {
      specs.push_back({name, data.size()});
      bytes += data;
    }
    auto in = store.Begin(run, rank, world, step, "node-a", specs);
    if (!in.ok()) return in.status();
    for (size_t off = 0; off < bytes.size(); off += chunk) {
      if (absl::Status st = (*in)->Write(std::string_view(bytes).substr(off, chunk)); !st.ok()) {
        return st;
      }
    }
    return (*in)->Finish();
  }
  std::vector<uint64_t> Steps(const ReplicaStore& store, const std::string& run) {
    std::vector<uint64_t> out;
    for (const ReplicaInfo& r : store.List(run)) out.push_back(r.step);
    return out;
  }
  std::unique_ptr<ReplicaStore> Open(uint64_t max_bytes, uint32_t keep_last = 2) {
    auto s = ReplicaStore::Open(env_, {tmp_.Join("replicas"), max_bytes, keep_last});
    EXPECT_TRUE(s.ok()) << s.status();
    return std::move(*s);
  }
  env::Env* env_ = env::Env::Default();
  testing::TempDir tmp_;
};

TEST_F(ReplicaStoreTest, AReplicaIsHeldWholeVerifiedAndGivenBack) {
  auto store = Open(1 << 20);
  auto files = Step(10);
  auto info = Put(*store, "run", 10, files);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->bytes, files[0].second.size() + files[1].second.size());
  EXPECT_FALSE(info->content_digest.empty());
  auto back = store->Checked("run", std::nullopt, 10);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ(*env::ReadWholeFile(env_, (*back)[0].name), files[0].second);
  EXPECT_EQ(*env::ReadWholeFile(env_, (*back)[1].name), files[1].second);
  // Found again after a restart.
  store.reset();
  store = Open(1 << 20);
  EXPECT_THAT(Steps(*store, "run"), ElementsAre(10));
}

TEST_F(ReplicaStoreTest, ADamagedOrShortReplicaIsNeverHeld) {
  auto store = Open(1 << 20);
  auto files = Step(20);
  files[0].second[files[0].second.size() - 5] ^= 0x40;  // a tensor byte
  auto bad = Put(*store, "run", 20, files);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("digest"));
  // Another step's train file beside this model file: not tied.
  auto mixed = Step(30);
  mixed[1] = Step(40)[1];
  mixed[1].first = storage::TrainFileName(30);
  EXPECT_EQ(Put(*store, "run", 30, mixed).status().code(), absl::StatusCode::kDataLoss);
  // Cut short: the files are not whole.
  auto files50 = Step(50);
  std::vector<ReplicaFileSpec> specs = {{files50[0].first, files50[0].second.size()},
                                        {files50[1].first, files50[1].second.size()}};
  {
    auto in = store->Begin("run", 0, 0, 50, "node-a", specs);
    ASSERT_TRUE(in.ok());
    ASSERT_TRUE((*in)->Write(files50[0].second).ok());
    EXPECT_THAT(std::string((*in)->Finish().status().message()), HasSubstr("ended after 0 of"));
  }
  EXPECT_TRUE(store->List("run").empty());
  EXPECT_EQ(store->bytes(), 0u);
  EXPECT_THAT(*env_->ListDir(tmp_.Join("replicas/run")), ::testing::IsEmpty());  // no temps left
  // Names other than the step's own are refused before a byte is taken.
  EXPECT_EQ(store->Begin("run", 0, 0, 60, "a", {{"../x.gguf", 10}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      store->Begin("../run", 0, 0, 60, "a", {{storage::ModelFileName(60), 10}}).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(ReplicaStoreTest, PartsOfSeveralRanksOfOneRunAreKeptPerRank) {
  auto store = Open(1 << 20, /*keep_last=*/1);
  auto part = [](uint64_t step, uint32_t rank) {
    return storage::SplitName{.step = step, .rank = rank, .world_size = 3};
  };
  ASSERT_TRUE(Put(*store, "mr", 10, Step(10, part(10, 1)), 777, 1, 3).ok());
  ASSERT_TRUE(Put(*store, "mr", 10, Step(10, part(10, 2)), 777, 2, 3).ok());
  // Rank 2's newer part evicts only rank 2's older one (keep_last 1 per rank).
  ASSERT_TRUE(Put(*store, "mr", 20, Step(20, part(20, 2)), 777, 2, 3).ok());
  auto listed = store->List("mr");
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].rank, 1u);
  EXPECT_EQ(listed[0].step, 10u);
  EXPECT_EQ(listed[1].rank, 2u);
  EXPECT_EQ(listed[1].step, 20u);
  EXPECT_EQ(listed[1].world_size, 3u);
  auto back = store->Checked("mr", 1, 10);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_THAT((*back)[0].name, HasSubstr("rank-1/step_10-00002-of-00003.gguf"));
  EXPECT_EQ(store->Checked("mr", 2, 10).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Checked("mr", std::nullopt, 10).status().code(), absl::StatusCode::kNotFound);
  // A part under a whole step's name, or a rank beyond its world, is refused.
  EXPECT_EQ(Put(*store, "mr", 30, Step(30), 777, 1, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Put(*store, "mr", 30, Step(30, part(30, 1)), 777, 3, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Found again, per rank, after a restart.
  store.reset();
  store = Open(1 << 20, 1);
  listed = store->List("mr");
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].rank, 1u);
  EXPECT_EQ(listed[1].step, 20u);
  EXPECT_TRUE(store->Checked("mr", 2, 20).ok());
}

TEST_F(ReplicaStoreTest, TheBudgetEvictsTheOldestArrivalsAndRefusesWhatCannotFit) {
  const uint64_t one = [&] {
    auto f = Step(1);
    return f[0].second.size() + f[1].second.size();
  }();
  auto store = Open(one * 5 / 2, /*keep_last=*/5);
  ASSERT_TRUE(Put(*store, "x", 10, Step(10)).ok());
  ASSERT_TRUE(Put(*store, "y", 10, Step(10)).ok());
  ASSERT_TRUE(Put(*store, "x", 20, Step(20)).ok());  // evicts x/10, the oldest arrival
  EXPECT_THAT(Steps(*store, "x"), ElementsAre(20));
  EXPECT_THAT(Steps(*store, "y"), ElementsAre(10));
  EXPECT_LE(store->bytes(), one * 5 / 2);
  auto small = Open(one / 2);
  auto refused = Put(*small, "x", 30, Step(30));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("[peers] max_bytes"));
}

TEST_F(ReplicaStoreTest, EachRunKeepsItsNewestAndARetakenStepDropsThoseAbove) {
  auto store = Open(1 << 20, /*keep_last=*/2);
  for (uint64_t s : {10, 20, 30}) ASSERT_TRUE(Put(*store, "run", s, Step(s)).ok());
  EXPECT_THAT(Steps(*store, "run"), ElementsAre(20, 30));
  ASSERT_TRUE(Put(*store, "run", 25, Step(25)).ok());  // resumed from older: 30 is abandoned
  EXPECT_THAT(Steps(*store, "run"), ElementsAre(20, 25));
}

TEST_F(ReplicaStoreTest, AReplicaDamagedWhileHeldIsRefusedAndDropped) {
  auto store = Open(1 << 20);
  ASSERT_TRUE(Put(*store, "run", 10, Step(10)).ok());
  const std::string path = tmp_.Join("replicas/run/") + storage::ModelFileName(10);
  std::string bytes = *env::ReadWholeFile(env_, path);
  bytes[bytes.size() - 7] ^= 0x01;
  testing::WriteFile(path, bytes);
  auto back = store->Checked("run", std::nullopt, 10);
  EXPECT_EQ(back.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(back.status().message()), HasSubstr("damaged (dropped)"));
  EXPECT_TRUE(store->List("run").empty());
  EXPECT_EQ(store->Checked("run", std::nullopt, 10).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ckptd::replication
