// Schedule decisions, including their edge cases.
#include "daemon/policy/schedule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::policy {
namespace {

using ::testing::HasSubstr;

TEST(ScheduleTest, EverySteps) {
  Schedule s{.every_steps = 100};
  ScheduleState st;
  EXPECT_FALSE(IsDue(s, st, 0, 0).due);  // step 0 is the untrained model
  EXPECT_FALSE(IsDue(s, st, 99, 0).due);
  Decision d = IsDue(s, st, 100, 0);
  EXPECT_TRUE(d.due);
  EXPECT_EQ(d.reason, "every_steps=100");
  EXPECT_TRUE(IsDue(s, st, 300, 0).due);
  EXPECT_THAT(IsDue(s, st, 150, 0).reason, HasSubstr("next by every_steps at 200"));
}

TEST(ScheduleTest, EverySecondsCountsFromTheLastCheckpoint) {
  Schedule s{.every_seconds = 600};
  ScheduleState st{.last_step = 10, .reference_time_s = 1000};
  EXPECT_FALSE(IsDue(s, st, 11, 1599).due);
  Decision d = IsDue(s, st, 11, 1612);
  EXPECT_TRUE(d.due);
  EXPECT_THAT(d.reason, HasSubstr("612s since"));
}

TEST(ScheduleTest, AtSteps) {
  Schedule s{.at_steps = {5, 17}};
  EXPECT_TRUE(IsDue(s, {}, 5, 0).due);
  EXPECT_TRUE(IsDue(s, {}, 17, 0).due);
  EXPECT_FALSE(IsDue(s, {}, 6, 0).due);
}

TEST(ScheduleTest, AnyRuleSuffices) {
  Schedule s{.every_steps = 1000, .every_seconds = 60, .at_steps = {7}};
  EXPECT_TRUE(IsDue(s, {.reference_time_s = 0}, 7, 1).due);
  EXPECT_TRUE(IsDue(s, {.reference_time_s = 0}, 8, 61).due);
  EXPECT_TRUE(IsDue(s, {.reference_time_s = 0}, 2000, 1).due);
  EXPECT_FALSE(IsDue(s, {.reference_time_s = 0}, 8, 1).due);
}

TEST(ScheduleTest, NeverAfterTheLastCommittedStep) {
  Schedule s{.every_steps = 100};
  ScheduleState st{.last_step = 500};
  Decision d = IsDue(s, st, 500, 0);
  EXPECT_FALSE(d.due);
  EXPECT_THAT(d.reason, HasSubstr("not after the last committed step 500"));
  EXPECT_FALSE(IsDue(s, st, 400, 0).due);
  EXPECT_TRUE(IsDue(s, st, 600, 0).due);
}

TEST(ScheduleTest, EmptyScheduleNeverDue) {
  Decision d = IsDue({}, {}, 100, 1e9);
  EXPECT_FALSE(d.due);
  EXPECT_THAT(d.reason, HasSubstr("never (forced saves only)"));
  EXPECT_EQ(Describe({.every_steps = 10, .at_steps = {1, 2}}), "every_steps=10, at_steps=[1, 2]");
}

TEST(ScheduleTest, MemoryStepsAreMultiplesAboveTheLastStepOfAnyTier) {
  Schedule s{.every_steps = 100, .memory_every_steps = 10};
  EXPECT_FALSE(IsMemoryDue(s, std::nullopt, 0).due);  // step 0 is the untrained model
  EXPECT_FALSE(IsMemoryDue(s, std::nullopt, 15).due);
  EXPECT_THAT(IsMemoryDue(s, std::nullopt, 15).reason, HasSubstr("next memory step at 20"));
  Decision d = IsMemoryDue(s, std::nullopt, 20);
  EXPECT_TRUE(d.due);
  EXPECT_EQ(d.reason, "memory_every_steps=10");
  EXPECT_FALSE(IsMemoryDue(s, 30, 30).due);  // already saved (in either tier)
  EXPECT_THAT(IsMemoryDue(s, 40, 30).reason, HasSubstr("not after the last saved step 40"));
  EXPECT_TRUE(IsMemoryDue(s, 30, 40).due);
  EXPECT_FALSE(IsMemoryDue(Schedule{.every_steps = 100}, std::nullopt, 20).due);
  EXPECT_THAT(IsMemoryDue(Schedule{}, std::nullopt, 20).reason, HasSubstr("memory tier is off"));
  EXPECT_THAT(Describe(s), HasSubstr("memory_every_steps=10"));
}

TEST(ScheduleTest, MemoryEvictionsKeepTheNewestWithinCountAndBytes) {
  std::vector<MemoryStep> held = {{10, 100}, {20, 100}, {30, 100}, {40, 100}};
  EXPECT_EQ(MemoryEvictions(held, 40, 2, 0), (std::vector<uint64_t>{10, 20}));
  EXPECT_EQ(MemoryEvictions(held, 40, 4, 0), (std::vector<uint64_t>{}));
  EXPECT_EQ(MemoryEvictions(held, 40, 0, 0), (std::vector<uint64_t>{10, 20, 30}));  // at least 1
  EXPECT_EQ(MemoryEvictions(held, 40, 4, 250), (std::vector<uint64_t>{10, 20}));    // bytes too
  EXPECT_EQ(MemoryEvictions(held, 40, 4, 400), (std::vector<uint64_t>{}));          // exactly fits
  // The step just kept is never evicted, even alone over the cap, and even
  // when it is not the newest (an older step retaken after a restore).
  EXPECT_EQ(MemoryEvictions(held, 40, 4, 50), (std::vector<uint64_t>{10, 20, 30}));
  EXPECT_EQ(MemoryEvictions(held, 20, 1, 0), (std::vector<uint64_t>{10, 30, 40}));
  EXPECT_EQ(MemoryEvictions({}, 10, 2, 0), (std::vector<uint64_t>{}));
}

TEST(ScheduleTest, AutoMemoryIntervalIsTheMostFrequentWithinTheBudget) {
  // A 2 ms stall every N steps of 100 ms stays within 1 % from N = 2.
  EXPECT_EQ(AutoMemoryInterval(0.002, 0.1, 0.01), 2u);
  EXPECT_EQ(AutoMemoryInterval(0.001, 0.1, 0.01), 1u);   // exactly at the budget
  EXPECT_EQ(AutoMemoryInterval(0.0001, 0.1, 0.01), 1u);  // never below 1
  EXPECT_EQ(AutoMemoryInterval(0.05, 0.01, 0.01), 500u);
  EXPECT_EQ(AutoMemoryInterval(0.05, 0.01, 0), 500u);  // 0 = the default 1 %
  EXPECT_EQ(AutoMemoryInterval(0.05, 0.01, 0.05), 100u);
  EXPECT_EQ(AutoMemoryInterval(0, 0.1, 0.01), std::nullopt);  // not measured yet
  EXPECT_EQ(AutoMemoryInterval(0.002, 0, 0.01), std::nullopt);
  EXPECT_EQ(AutoMemoryInterval(1e9, 1e-9, 0.01), 1000000000000u);  // capped, no overflow
}

TEST(ScheduleTest, TheExpectedCommitIntervalIsTheSoonerOfTheRulesThatApply) {
  Schedule s;
  EXPECT_EQ(ExpectedCommitInterval(s, 0.5), std::nullopt);  // forced saves only
  s.at_steps = {10, 20};
  EXPECT_EQ(ExpectedCommitInterval(s, 0.5), std::nullopt);  // exact steps: no interval
  s.every_steps = 100;
  EXPECT_EQ(ExpectedCommitInterval(s, 0), std::nullopt);  // steps not measured yet
  EXPECT_DOUBLE_EQ(*ExpectedCommitInterval(s, 0.5), 50.0);
  s.every_seconds = 30;
  EXPECT_DOUBLE_EQ(*ExpectedCommitInterval(s, 0.5), 30.0);  // the clock comes first
  EXPECT_DOUBLE_EQ(*ExpectedCommitInterval(s, 0.1), 10.0);  // the steps come first
  EXPECT_DOUBLE_EQ(*ExpectedCommitInterval(s, 0), 30.0);    // only the clock is known
  s.every_steps = 0;
  EXPECT_DOUBLE_EQ(*ExpectedCommitInterval(s, 0.5), 30.0);
}

}  // namespace
}  // namespace ckptd::policy
