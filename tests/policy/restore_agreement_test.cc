// The step every rank of a multi-rank run restores: the newest in every
// rank's report, waiting for a missing rank, none, and reports that
// cannot come from one run.
#include "daemon/policy/restore_agreement.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

AvailabilityReport Rank(uint32_t rank, std::set<uint64_t> steps, uint32_t world = 3) {
  return {.rank = rank, .world_size = world, .steps = std::move(steps)};
}

TEST(RestoreAgreementTest, TheNewestStepEveryRankHolds) {
  // Rank 1 lost its memory steps above 500 (its node was replaced, and a
  // peer held only 510); 520 and 530 are not everywhere.
  Agreement a = AgreeOnStep(
      3, {Rank(0, {500, 510, 520, 530}), Rank(2, {500, 510, 520}), Rank(1, {500, 510})});
  EXPECT_EQ(a.state, AgreementState::kAgreed);
  EXPECT_EQ(a.step, 510u);
  EXPECT_TRUE(a.missing.empty());
}

TEST(RestoreAgreementTest, ARankHoldingOnlyOlderStepsPullsEveryoneBack) {
  Agreement a = AgreeOnStep(3, {Rank(0, {10, 20, 30}), Rank(1, {10, 20, 30}), Rank(2, {10})});
  EXPECT_EQ(a.state, AgreementState::kAgreed);
  EXPECT_EQ(a.step, 10u);
}

TEST(RestoreAgreementTest, WaitsForEveryRank) {
  Agreement a = AgreeOnStep(3, {Rank(1, {10})});
  EXPECT_EQ(a.state, AgreementState::kWait);
  EXPECT_THAT(a.missing, ElementsAre(0u, 2u));
  EXPECT_EQ(AgreeOnStep(3, {}).missing, (std::vector<uint32_t>{0, 1, 2}));
}

TEST(RestoreAgreementTest, NoCommonStepNamesWhatEachRankHas) {
  Agreement a = AgreeOnStep(2, {Rank(0, {10, 30}, 2), Rank(1, {20}, 2)});
  EXPECT_EQ(a.state, AgreementState::kNone);
  EXPECT_THAT(a.reason, HasSubstr("rank 0 has 2 (newest 30, oldest 10)"));
  EXPECT_THAT(a.reason, HasSubstr("rank 1 has 1 (newest 20, oldest 20)"));
  Agreement one_empty = AgreeOnStep(2, {Rank(0, {}, 2), Rank(1, {20}, 2)});
  EXPECT_EQ(one_empty.state, AgreementState::kNone);
  EXPECT_THAT(one_empty.reason, HasSubstr("rank 0 has none"));
  // A new run: no rank holds anything, which is not an error.
  EXPECT_EQ(AgreeOnStep(2, {Rank(0, {}, 2), Rank(1, {}, 2)}).state, AgreementState::kEmpty);
}

TEST(RestoreAgreementTest, ReportsFromAnotherWorldConflict) {
  Agreement a = AgreeOnStep(3, {Rank(0, {10}), Rank(1, {10}, 4)});
  EXPECT_EQ(a.state, AgreementState::kConflict);
  EXPECT_THAT(a.reason, HasSubstr("rank 1 reported a world of 4 ranks, this run has 3"));
  EXPECT_EQ(AgreeOnStep(3, {Rank(0, {10}), Rank(0, {10})}).state, AgreementState::kConflict);
  Agreement out_of_range = AgreeOnStep(3, {Rank(3, {10})});
  EXPECT_EQ(out_of_range.state, AgreementState::kConflict);
  EXPECT_THAT(out_of_range.reason, HasSubstr("rank 3 of a world of 3"));
}

TEST(RestoreAgreementTest, OneRankAgreesWithItself) {
  Agreement a = AgreeOnStep(1, {Rank(0, {7, 9}, 1)});
  EXPECT_EQ(a.state, AgreementState::kAgreed);
  EXPECT_EQ(a.step, 9u);
}

}  // namespace
}  // namespace ckptd::policy
