// The coordinator's verdict on a multi-rank step: complete, incomplete,
// timed out, failed, and every way the parts can disagree.
#include "daemon/policy/step_commit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

PartReport Part(uint32_t rank, uint32_t world, std::vector<PartTensor> tensors = {}) {
  return {
      .rank = rank, .world_size = world, .bytes = 100, .uuid = "u", .tensors = std::move(tensors)};
}

PartTensor Whole(std::string name) { return {.name = std::move(name)}; }

PartTensor Rows(std::string name, uint64_t offset, uint64_t length, uint64_t full = 12) {
  return {.name = std::move(name),
          .slice = TensorSlice{.full_ne = {4, full}, .dim = 1, .offset = offset, .length = length}};
}

StepParts Step(uint32_t world, std::vector<PartReport> parts) {
  StepParts s{.step = 100, .world_size = world, .first_report_s = 10};
  for (PartReport& p : parts) s.parts[p.rank] = std::move(p);
  return s;
}

TEST(StepCommitTest, EveryPartDurableCommits) {
  StepDecision d = DecideStep(
      Step(3, {Part(0, 3, {Whole("a")}), Part(1, 3, {Whole("b")}), Part(2, 3, {Whole("c")})}), 11,
      60);
  EXPECT_EQ(d.verdict, StepVerdict::kCommit);
  EXPECT_TRUE(d.missing.empty());
}

TEST(StepCommitTest, AMissingPartWaitsUntilTheDeadlineThenAborts) {
  StepParts s = Step(3, {Part(0, 3), Part(2, 3)});
  StepDecision d = DecideStep(s, 69.9, 60);
  EXPECT_EQ(d.verdict, StepVerdict::kWait);
  EXPECT_THAT(d.missing, ElementsAre(1));
  d = DecideStep(s, 70, 60);
  EXPECT_EQ(d.verdict, StepVerdict::kAbort);
  EXPECT_THAT(d.missing, ElementsAre(1));
  EXPECT_THAT(d.reason, HasSubstr("no part from rank 1 within 60 s"));
  d = DecideStep(Step(3, {Part(0, 3)}), 100, 60);
  EXPECT_THAT(d.reason, HasSubstr("ranks 1, 2"));
}

TEST(StepCommitTest, ARunWithoutRanksIsRefusedNotWaitedFor) {
  StepDecision d = DecideStep(Step(0, {}), 10, 60);
  EXPECT_EQ(d.verdict, StepVerdict::kAbort);
  EXPECT_THAT(d.reason, HasSubstr("world size 0"));
}

TEST(StepCommitTest, ASingleRankRunCommitsItsOnePart) {
  EXPECT_EQ(DecideStep(Step(1, {Part(0, 1, {Whole("w")})}), 10, 60).verdict, StepVerdict::kCommit);
  EXPECT_EQ(DecideStep(Step(1, {}), 10, 60).verdict, StepVerdict::kWait);
}

TEST(StepCommitTest, AFailedRankAbortsAtOnceEvenWithEveryOtherPartIn) {
  StepParts s = Step(2, {Part(0, 2)});
  s.failed[1] = "trainer exited";
  StepDecision d = DecideStep(s, 10, 60);
  EXPECT_EQ(d.verdict, StepVerdict::kAbort);
  EXPECT_THAT(d.reason, HasSubstr("rank 1 failed its part: trainer exited"));
}

TEST(StepCommitTest, PartsThatDisagreeOnTheWorldAbort) {
  StepDecision d = DecideStep(Step(2, {Part(0, 2), Part(1, 3)}), 10, 60);
  EXPECT_EQ(d.verdict, StepVerdict::kAbort);
  EXPECT_THAT(d.reason, HasSubstr("rank 1 saved for world size 3; the run's is 2"));
  StepParts s = Step(2, {Part(0, 2)});
  s.parts[5] = Part(5, 2);
  d = DecideStep(s, 10, 60);
  EXPECT_EQ(d.verdict, StepVerdict::kAbort);
  EXPECT_THAT(d.reason, HasSubstr("reports rank 5; the run has ranks 0..1"));
}

TEST(StepCommitTest, ATensorHeldWholeTwiceAborts) {
  StepDecision d =
      DecideStep(Step(2, {Part(0, 2, {Whole("a"), Whole("b")}), Part(1, 2, {Whole("b")})}), 10, 60);
  EXPECT_EQ(d.verdict, StepVerdict::kAbort);
  EXPECT_THAT(d.reason, HasSubstr("tensor 'b' is held whole by ranks 0 and 1"));
}

TEST(StepCommitTest, SlicesThatTileTheTensorCommitInAnyRankOrder) {
  StepDecision d = DecideStep(Step(3, {Part(0, 3, {Rows("w", 8, 4)}), Part(1, 3, {Rows("w", 0, 5)}),
                                       Part(2, 3, {Rows("w", 5, 3), Whole("norm")})}),
                              10, 60);
  EXPECT_EQ(d.verdict, StepVerdict::kCommit) << d.reason;
}

TEST(StepCommitTest, SlicesWithAGapAnOverlapOrAShortCoverAbort) {
  auto reason = [](std::vector<PartReport> parts) {
    const auto world = static_cast<uint32_t>(parts.size());
    StepDecision d = DecideStep(Step(world, std::move(parts)), 10, 60);
    EXPECT_EQ(d.verdict, StepVerdict::kAbort);
    return d.reason;
  };
  EXPECT_THAT(reason({Part(0, 2, {Rows("w", 0, 5)}), Part(1, 2, {Rows("w", 6, 6)})}),
              HasSubstr("leave a gap at 5"));
  EXPECT_THAT(reason({Part(0, 2, {Rows("w", 0, 7)}), Part(1, 2, {Rows("w", 6, 6)})}),
              HasSubstr("overlap at 6"));
  EXPECT_THAT(reason({Part(0, 2, {Rows("w", 0, 5)}), Part(1, 2, {Rows("w", 5, 5)})}),
              HasSubstr("cover 10 of the 12 entries of dimension 1"));
  EXPECT_THAT(reason({Part(0, 2, {Rows("w", 0, 6)}), Part(1, 2, {Rows("w", 6, 6, 13)})}),
              HasSubstr("rank 0 slices shape [4, 12] along dimension 1, rank 1 shape [4, 13]"));
  EXPECT_THAT(reason({Part(0, 2, {Whole("w")}), Part(1, 2, {Rows("w", 0, 12)})}),
              HasSubstr("held whole by rank 0 and sliced by others"));
  PartTensor bad = Rows("w", 0, 12);
  bad.slice->dim = 2;
  EXPECT_THAT(reason({Part(0, 1, {bad})}), HasSubstr("along dimension 2 of a 2-dimensional shape"));
  EXPECT_THAT(reason({Part(0, 2, {Rows("w", 0, 0)}), Part(1, 2, {Rows("w", 0, 12)})}),
              HasSubstr("the slices of tensor 'w'"));
}

}  // namespace
}  // namespace ckptd::policy
