// The read side on a real registry: what a run's info says, listings paged
// and refused clearly, details, lineage's arguments, readiness, and the
// object store's steps merged into a listing through the replication layer
// (over MemoryStore).
#include "daemon/query/queries.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "daemon/tier/memory_store.h"
#include "tests/scheduler/run_test_peer.h"
#include "tests/scheduler/scheduler_fixture.h"

namespace ckptd::query {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class QueriesTest : public ::testing::Test, public scheduler::testing::SchedulerFixture {
 protected:
  QueriesTest() : queries_(&registry(), {root()}) {}
  std::vector<uint64_t> Steps(const v1::ListCheckpointsResponse& r) {
    std::vector<uint64_t> out;
    for (const auto& c : r.checkpoints()) out.push_back(c.step());
    return out;
  }
  Queries queries_;
};

TEST_F(QueriesTest, RunInfoSaysWhatTheRunHas) {
  Open("r");
  ASSERT_OK(Save("r", 10).status());
  ASSERT_OK(Save("r", 20).status());
  auto info = queries_.GetRun("r");
  ASSERT_OK(info.status());
  EXPECT_EQ(info->last_step(), 20u);
  EXPECT_EQ(info->checkpoint_count(), 2u);
  EXPECT_THAT(info->latest_file(), HasSubstr("step_20.gguf"));
  EXPECT_GT(info->total_bytes(), 512u);
  EXPECT_EQ(info->schedule().every_steps(), 10u);  // the daemon's default
  EXPECT_EQ(info->state(), v1::RUN_STATE_OPEN);
  EXPECT_EQ(queries_.GetRun("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(queries_.ListRuns().runs_size(), 1);
}

TEST_F(QueriesTest, ListingsPageInStepOrderAndRefuseWhatTheyDidNotIssue) {
  Open("r");
  for (uint64_t step : {10, 20, 30, 40, 50}) ASSERT_OK(Save("r", step).status());
  v1::ListCheckpointsRequest req;
  req.set_run_id("r");
  req.set_page_size(2);
  std::vector<uint64_t> all;
  for (int pages = 0; pages < 5; ++pages) {
    auto page = queries_.ListCheckpoints(req);
    ASSERT_OK(page.status());
    for (uint64_t s : Steps(*page)) all.push_back(s);
    if (page->next_page_token().empty()) break;
    req.set_page_token(page->next_page_token());
  }
  EXPECT_THAT(all, ElementsAre(10, 20, 30, 40, 50));
  req.clear_page_token();
  req.set_since_step(30);
  req.set_page_size(0);
  EXPECT_THAT(Steps(*queries_.ListCheckpoints(req)), ElementsAre(40, 50));
  req.set_page_size(1001);
  absl::Status big = queries_.ListCheckpoints(req).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(big.message(), HasSubstr("page_size"));
  req.set_page_size(1);
  req.set_page_token("not-a-step");
  EXPECT_THAT(queries_.ListCheckpoints(req).status().message(), HasSubstr("page_token"));
}

TEST_F(QueriesTest, DetailsNameWhatIsMissingAndLineageTakesOneQuestion) {
  Open("r");
  ASSERT_OK(Save("r", 10, {{"loss", 2.5}}).status());
  auto d = queries_.GetCheckpoint("r", 10);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->info().step(), 10u);
  EXPECT_TRUE(d->info().is_latest());
  EXPECT_EQ(d->info().metrics().at("loss"), 2.5);
  EXPECT_EQ(d->tensors_size(), 1);
  absl::Status missing = queries_.GetCheckpoint("r", 11).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("ListCheckpoints"));
  EXPECT_EQ(queries_.Lineage("u", "r").status().code(), absl::StatusCode::kInvalidArgument);
  auto lineage = queries_.Lineage("", "r");
  ASSERT_OK(lineage.status());
  EXPECT_GE(lineage->nodes_size(), 1);
}

TEST_F(QueriesTest, AnUnresolvedWriteErrorMakesTheDaemonNotReady) {
  auto run = Open("r");
  EXPECT_TRUE(queries_.Ready().ready);
  {
    absl::MutexLock lock(&scheduler::RunTestPeer::mu(*run));
    scheduler::RunTestPeer::write_error(*run) = "pwrite: EIO";
  }
  const Readiness r = queries_.Ready();
  EXPECT_FALSE(r.ready);
  EXPECT_THAT(r.Summary(), HasSubstr("run r has an unresolved write error: pwrite: EIO"));
}

TEST_F(QueriesTest, TheStoresStepsJoinAListingOnlyWithATier) {
  Open("r");
  ASSERT_OK(Save("r", 10).status());
  v1::ListCheckpointsRequest req;
  req.set_run_id("r");
  req.set_include_remote(true);
  EXPECT_EQ(queries_.ListCheckpoints(req).status().code(), absl::StatusCode::kFailedPrecondition);

  auto memory = std::make_unique<tier::MemoryStore>();
  tier::MemoryStore* store = memory.get();
  replication::Replicator replicator(env::Env::Default(), &registry(), std::move(memory),
                                     {.tier = {.prefix = "p"}});
  replicator.Start();
  Queries with_tier(&registry(), {root()}, &replicator);
  ASSERT_OK(Save("r", 20).status());
  // Step 10, committed before the tier was on, is found and sent at Start.
  for (int i = 0; i < 500 && (replicator.UploadState("r", 10) != "uploaded" ||
                              replicator.UploadState("r", 20) != "uploaded");
       ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(replicator.UploadState("r", 10), "uploaded");
  ASSERT_EQ(replicator.UploadState("r", 20), "uploaded");
  // A step only the store holds (its local copy deleted, or another node's).
  tier::StepManifest m{.facts = {.run_id = "r",
                                 .step = 5,
                                 .metrics = {{"loss", 1}},
                                 .uuid = "u5",
                                 .files = {{.name = "step_5.gguf",
                                            .key = "p/r/step_5.gguf",
                                            .role = "model",
                                            .size = 7,
                                            .etag = "e"}}}};
  ASSERT_OK(
      store->Put("p/r/step_5.manifest.json", m.ToJson(), tier::Precondition::kNone, {}).status());
  auto listed = with_tier.ListCheckpoints(req);
  ASSERT_OK(listed.status());
  ASSERT_THAT(Steps(*listed), ElementsAre(5, 10, 20));
  EXPECT_EQ(listed->checkpoints(0).location(), "remote");
  EXPECT_EQ(listed->checkpoints(0).uuid(), "u5");
  EXPECT_EQ(listed->checkpoints(0).file(), "s3://memory/p/r/step_5.gguf");
  EXPECT_EQ(listed->checkpoints(1).location(), "both");
  EXPECT_EQ(listed->checkpoints(2).location(), "both");
  // A manifest gone since the listing leaves its entry bare, not the listing failed.
  ASSERT_OK(store->Delete({"p/r/step_5.manifest.json"}));
  EXPECT_OK(with_tier.ListCheckpoints(req).status());
  replicator.Stop();
}

}  // namespace
}  // namespace ckptd::query
