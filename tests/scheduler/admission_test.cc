// Admit: every rule that decides whether a save is accepted, one edge each.
#include "daemon/scheduler/admission.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/base/time.h"
#include "tests/scheduler/run_test_peer.h"
#include "tests/scheduler/scheduler_fixture.h"

namespace ckptd::scheduler {
namespace {

using ::testing::HasSubstr;
using Peer = RunTestPeer;

class AdmissionTest : public ::testing::Test, public testing::SchedulerFixture {
 protected:
  absl::StatusOr<Admission> AdmitNow(scheduler::Run& run, const AdmitRequest& r,
                                     std::optional<uint64_t> queued = std::nullopt,
                                     policy::Schedule schedule = {.every_steps = 10}) {
    absl::MutexLock lock(&Peer::mu(run));
    return Admit(run, schedule, r, queued, NowSeconds());
  }
};

TEST_F(AdmissionTest, ARunNeverOpenedOrFinishedTakesNoSaveAndSaysWhatToDo) {
  auto run = Open("r");
  {
    absl::MutexLock lock(&Peer::mu(*run));
    Peer::settings(*run).reset();  // found on disk, never opened since the start
  }
  absl::StatusOr<Admission> a = AdmitNow(*run, {.step = 10, .tensor_count = 1});
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(a.status().message(), HasSubstr("call OpenRun"));
  run = Open("r");
  ASSERT_OK(registry().MarkFinished(run.get()));
  a = AdmitNow(*run, {.step = 10, .tensor_count = 1});
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(a.status().message(), HasSubstr("finished"));
}

TEST_F(AdmissionTest, TheScheduleDecidesUnlessForcedAndAZeroTensorSaveIsRefused) {
  auto run = Open("r");
  EXPECT_FALSE(AdmitNow(*run, {.step = 7})->due);
  EXPECT_TRUE(AdmitNow(*run, {.step = 10})->due);
  absl::StatusOr<Admission> forced = AdmitNow(*run, {.step = 7, .force = true, .tensor_count = 1});
  ASSERT_OK(forced.status());
  EXPECT_TRUE(forced->due);
  EXPECT_EQ(forced->reason, "forced");
  EXPECT_EQ(AdmitNow(*run, {.step = 10, .tensor_count = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AdmissionTest, StepsGoUpAgainstQueuedAndCommittedSteps) {
  auto run = Open("r");
  ASSERT_OK(Save("r", 20).status());
  // Below a queued step, or at it.
  absl::Status below = AdmitNow(*run, {.step = 30, .force = true, .tensor_count = 1}, 30).status();
  EXPECT_EQ(below.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(below.message(), HasSubstr("still queued"));
  EXPECT_OK(AdmitNow(*run, {.step = 31, .force = true, .tensor_count = 1}, 30).status());
  // A committed step, or below it, only with overwrite.
  EXPECT_EQ(AdmitNow(*run, {.step = 20, .force = true, .tensor_count = 1}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(AdmitNow(*run, {.step = 10, .force = true, .tensor_count = 1}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<Admission> ow =
      AdmitNow(*run, {.step = 20, .force = true, .overwrite = true, .tensor_count = 1});
  ASSERT_OK(ow.status());
  EXPECT_TRUE(ow->overwrite);
}

TEST_F(AdmissionTest, TheFinalSnapshotReplacesACommittedStepOrIsSkippedWhenOff) {
  auto run = Open("r");
  ASSERT_OK(Save("r", 20).status());
  absl::StatusOr<Admission> final_save =
      AdmitNow(*run, {.step = 20, .kind = SaveKind::kClose, .tensor_count = 1});
  ASSERT_OK(final_save.status());
  EXPECT_TRUE(final_save->due);
  EXPECT_TRUE(final_save->overwrite);
  EXPECT_EQ(final_save->reason, "final snapshot");
  absl::StatusOr<Admission> off =
      AdmitNow(*run, {.step = 21, .kind = SaveKind::kClose, .tensor_count = 1}, std::nullopt,
               {.every_steps = 10, .final_on_close = false});
  ASSERT_OK(off.status());
  EXPECT_FALSE(off->due);
  EXPECT_THAT(off->reason, HasSubstr("final_on_close"));
}

TEST_F(AdmissionTest, AMultiRankRunsMemoryStepsCountFromItsNewestPartPendingOrNot) {
  RunSettings settings;
  settings.multi_rank = {.world_size = 3, .rank = 1};
  auto run = Open("mr", settings);
  // Staged: durable here, pending until every rank's part is; every rank
  // counts its memory steps from it, committed or not.
  ASSERT_OK(Save("mr", 20).status());
  ASSERT_EQ(run->Snapshot().latest_step, std::nullopt);
  const policy::Schedule schedule{.every_steps = 20, .memory_every_steps = 5};
  absl::StatusOr<Admission> below = AdmitNow(*run, {.step = 15}, std::nullopt, schedule);
  ASSERT_OK(below.status());
  EXPECT_FALSE(below->due) << below->reason;
  absl::StatusOr<Admission> after = AdmitNow(*run, {.step = 25}, std::nullopt, schedule);
  ASSERT_OK(after.status());
  EXPECT_TRUE(after->due);
  EXPECT_EQ(after->tier, Tier::kMemory);
  EXPECT_FALSE(AdmitNow(*run, {.step = 27}, std::nullopt, schedule)->due);
}

}  // namespace
}  // namespace ckptd::scheduler
