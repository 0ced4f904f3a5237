// The multi-rank coordinator on MemoryStore: every verdict written through
// the store (commit, abort on timeout, on a world that disagrees, on a
// tensor count llama.cpp would refuse, a verdict already given), applied on
// this node, and never two verdicts for one step whatever the store does.
#include "daemon/tier/step_coordinator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "daemon/base/strings.h"
#include "daemon/storage/file_names.h"
#include "daemon/tier/fault_store.h"
#include "daemon/tier/memory_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::tier {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

constexpr uint32_t kWorld = 3;

class Node final : public MultiRankNode {
 public:
  std::vector<MultiRankRun> MultiRankRuns() override { return {run}; }
  void CommitPart(const std::string& run_id, uint64_t step) override {
    commits.emplace_back(run_id, step);
    run.pending.erase(step);
  }
  void AbortPart(const std::string& run_id, uint64_t step, const std::string& reason) override {
    aborts.emplace_back(run_id, step);
    reasons.push_back(reason);
    run.pending.erase(step);
  }
  MultiRankRun run{.run_id = "r",
                   .rank = 0,
                   .world_size = kWorld,
                   .coordinator = true,
                   .part_timeout_s = 600,
                   .pending = {5}};
  std::vector<std::pair<std::string, uint64_t>> commits, aborts;
  std::vector<std::string> reasons;
};

class StepCoordinatorTest : public ::testing::Test {
 protected:
  StepCoordinatorTest()
      : store_(&memory_),
        uploader_(env::Env::Default(), &store_, TierSettings{.prefix = "p"}, nullptr, nullptr),
        coordinator_(&uploader_, &node_, 0.05) {}

  // Rank `rank`'s part of `step`: its file in the store, then its report.
  void Report(uint32_t rank, uint64_t step = 5, uint32_t world = kWorld,
              std::optional<int64_t> split_count = kWorld) {
    const std::string name = storage::SplitFileName(step, rank, world);
    const std::string key = StrCat("p/r/", name);
    auto etag = memory_.Put(key, StrCat("part ", rank), Precondition::kNone, {});
    ASSERT_OK(etag.status());
    PartReport r{.facts = {.run_id = "r",
                           .step = step,
                           .uuid = StrCat("u", rank),
                           .time_utc = "t",
                           .part_size = 5 << 20,
                           .files = {{.name = name,
                                      .key = key,
                                      .role = "model",
                                      .size = 6,
                                      .etag = *etag,
                                      .rank = rank}}},
                 .rank = rank,
                 .world_size = world,
                 .bytes = 6,
                 .tensors = {{.name = StrCat("t", rank), .ne = {4}}}};
    if (rank == 0) r.split_tensors_count = split_count;
    ASSERT_OK(memory_
                  .Put(StrCat("p/r/parts/step_", step, "/rank-", rank, ".json"), r.ToJson(),
                       Precondition::kNone, {})
                  .status());
  }
  bool Has(const std::string& key) { return memory_.Head(key)->has_value(); }
  std::vector<std::string> Reports() {
    std::vector<std::string> out;
    for (const std::string& k : memory_.Keys()) {
      if (k.starts_with("p/r/parts/")) out.push_back(k);
    }
    return out;
  }

  MemoryStore memory_;
  FaultStore store_;
  Uploader uploader_;
  Node node_;
  StepCoordinator coordinator_;
};

TEST_F(StepCoordinatorTest, EveryRanksPartReportedCommitsTheStep) {
  Report(0);
  Report(1);
  coordinator_.PollOnce();
  EXPECT_FALSE(Has("p/r/step_5.manifest.json"));  // rank 2 has not reported: wait
  EXPECT_THAT(node_.commits, IsEmpty());
  Report(2);
  coordinator_.PollOnce();
  auto m = StepManifest::Parse(*memory_.Get("p/r/step_5.manifest.json", std::nullopt), "m");
  ASSERT_OK(m.status());
  EXPECT_EQ(m->world_size, kWorld);
  EXPECT_EQ(m->facts.files.size(), 3u);
  ASSERT_EQ(m->parts.size(), 3u);
  EXPECT_EQ(m->parts[2].uuid, "u2");
  EXPECT_EQ(LatestRecord::Parse(*memory_.Get("p/r/latest", std::nullopt), "l")->step, 5u);
  EXPECT_FALSE(Has("p/r/step_5.failed.json"));
  EXPECT_THAT(Reports(), IsEmpty());
  // This node's part is committed from the verdict (the same round).
  EXPECT_THAT(node_.commits, ElementsAre(Pair("r", 5u)));
}

TEST_F(StepCoordinatorTest, APartThatDoesNotComeAbortsTheStepAndTakesTheOthersFiles) {
  node_.run.part_timeout_s = 0.2;
  Report(0);
  Report(1);
  coordinator_.PollOnce();
  EXPECT_FALSE(Has("p/r/step_5.failed.json"));
  absl::SleepFor(absl::Milliseconds(300));
  coordinator_.PollOnce();
  auto f = FailedStep::Parse(*memory_.Get("p/r/step_5.failed.json", std::nullopt), "f");
  ASSERT_OK(f.status());
  EXPECT_EQ(f->missing_ranks, std::vector<uint32_t>{2});
  EXPECT_FALSE(Has("p/r/step_5.manifest.json"));
  EXPECT_FALSE(Has(StrCat("p/r/", storage::SplitFileName(5, 1, kWorld))));
  EXPECT_THAT(Reports(), IsEmpty());
  EXPECT_THAT(node_.aborts, ElementsAre(Pair("r", 5u)));
  EXPECT_THAT(node_.reasons[0], HasSubstr("2"));
}

// This node's part reached the store but its report did not (the node
// was cut off between the two): no report names it, so the coordinator's
// cleanup cannot; the abort withdraws it through this node's uploader.
TEST_F(StepCoordinatorTest, ThisNodesUnreportedPartIsWithdrawnWhenItsStepAborts) {
  node_.run.rank = 2;
  node_.run.part_timeout_s = 0.2;
  const std::string mine = StrCat("p/r/", storage::SplitFileName(5, 2, kWorld));
  ASSERT_OK(memory_.Put(mine, "part 2", Precondition::kNone, {}).status());
  uploader_.Start();
  Report(0);
  Report(1);
  coordinator_.PollOnce();
  absl::SleepFor(absl::Milliseconds(300));
  coordinator_.PollOnce();
  ASSERT_TRUE(Has("p/r/step_5.failed.json"));
  EXPECT_THAT(node_.aborts, ElementsAre(Pair("r", 5u)));
  for (int i = 0; i < 500 && Has(mine); ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_FALSE(Has(mine));
}

TEST_F(StepCoordinatorTest, APartForAnotherWorldAbortsNamingIt) {
  Report(0);
  Report(1, 5, /*world=*/4);
  coordinator_.PollOnce();
  auto f = FailedStep::Parse(*memory_.Get("p/r/step_5.failed.json", std::nullopt), "f");
  ASSERT_OK(f.status());
  EXPECT_THAT(f->reason, HasSubstr("world of 4"));
  EXPECT_THAT(node_.aborts, ElementsAre(Pair("r", 5u)));
}

TEST_F(StepCoordinatorTest, ATensorCountLlamaCppWouldRefuseAbortsWithTheNumberToSet) {
  Report(0, 5, kWorld, /*split_count=*/7);
  Report(1);
  Report(2);
  coordinator_.PollOnce();
  auto f = FailedStep::Parse(*memory_.Get("p/r/step_5.failed.json", std::nullopt), "f");
  ASSERT_OK(f.status());
  EXPECT_THAT(f->reason, HasSubstr("multi_rank.total_tensors to 3"));
}

TEST_F(StepCoordinatorTest, AReportAfterTheVerdictIsOnlyCleanedUp) {
  Report(0);
  Report(1);
  Report(2);
  coordinator_.PollOnce();
  ASSERT_TRUE(Has("p/r/step_5.manifest.json"));
  Report(1);  // a rank that reported again (its answer was lost)
  coordinator_.PollOnce();
  EXPECT_THAT(Reports(), IsEmpty());
  EXPECT_FALSE(Has("p/r/step_5.failed.json"));
  EXPECT_TRUE(Has(StrCat("p/r/", storage::SplitFileName(5, 1, kWorld))));  // files kept
}

// A round makes about eight calls; failing every seventh from the third on
// lands a failure between each pair of writes in turn (the manifest but
// not latest, latest but not the cleanup, ...).
TEST_F(StepCoordinatorTest, FailuresBetweenAnyTwoWritesNeverGiveAStepBothVerdicts) {
  store_.Add({.nth = 3, .every = 7});
  Report(0);
  Report(1);
  Report(2);
  for (int round = 0; round < 60 && !(Reports().empty() && node_.run.pending.empty()); ++round) {
    coordinator_.PollOnce();
  }
  EXPECT_GT(store_.injected(), 1);
  EXPECT_TRUE(Has("p/r/step_5.manifest.json"));
  EXPECT_FALSE(Has("p/r/step_5.failed.json"));
  // The commit finished whatever the round it was cut in: latest too.
  ASSERT_TRUE(Has("p/r/latest"));
  EXPECT_EQ(LatestRecord::Parse(*memory_.Get("p/r/latest", std::nullopt), "l")->step, 5u);
  EXPECT_THAT(Reports(), IsEmpty());
  EXPECT_THAT(node_.commits, ElementsAre(Pair("r", 5u)));
  EXPECT_THAT(node_.aborts, IsEmpty());
}

TEST_F(StepCoordinatorTest, AListingThatLagsDelaysTheVerdictAndNeverChangesIt) {
  store_.LagListings(1);
  Report(0);
  Report(1);
  // Written through the lagging store: the index has not caught up.
  const std::string name = storage::SplitFileName(5, 2, kWorld);
  PartReport r{.facts = {.run_id = "r", .step = 5, .files = {}},
               .rank = 2,
               .world_size = kWorld,
               .tensors = {{.name = "t2", .ne = {4}}}};
  ASSERT_OK(
      store_.Put("p/r/parts/step_5/rank-2.json", r.ToJson(), Precondition::kNone, {}).status());
  coordinator_.PollOnce();
  EXPECT_FALSE(Has("p/r/step_5.manifest.json"));
  EXPECT_FALSE(Has("p/r/step_5.failed.json"));
  store_.LagListings(0);
  coordinator_.PollOnce();
  EXPECT_TRUE(Has("p/r/step_5.manifest.json"));
  EXPECT_THAT(node_.commits, ElementsAre(Pair("r", 5u)));
}

}  // namespace
}  // namespace ckptd::tier
