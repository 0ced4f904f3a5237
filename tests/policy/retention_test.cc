// The retention planner: each rule, their combination, protections, ties,
// rollbacks and empty catalogs.
#include "daemon/policy/retention.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

RetentionInputs Steps(std::vector<uint64_t> steps, std::optional<uint64_t> latest = std::nullopt) {
  RetentionInputs in;
  for (uint64_t s : steps)
    in.checkpoints.push_back({s, 10, static_cast<double>(s), std::nullopt, std::nullopt});
  in.latest_step =
      latest ? latest
             : (steps.empty() ? std::nullopt
                              : std::optional(*std::max_element(steps.begin(), steps.end())));
  return in;
}

std::vector<uint64_t> Kept(const std::vector<RetentionDecision>& plan) {
  std::vector<uint64_t> out;
  for (const auto& d : plan) {
    if (d.keep) out.push_back(d.step);
  }
  return out;
}

std::string ReasonOf(const std::vector<RetentionDecision>& plan, uint64_t step) {
  for (const auto& d : plan) {
    if (d.step == step) return d.reason;
  }
  return "";
}

TEST(RetentionTest, NoRuleKeepsEverythingAndEmptyCatalogIsEmpty) {
  EXPECT_THAT(Kept(PlanRetention({}, Steps({1, 2, 3}))), ElementsAre(1, 2, 3));
  EXPECT_TRUE(PlanRetention({.keep_last = 3}, Steps({})).empty());
  EXPECT_EQ(ReasonOf(PlanRetention({}, Steps({1, 2})), 1), "no retention rule");
}

TEST(RetentionTest, KeepLast) {
  auto plan = PlanRetention({.keep_last = 2}, Steps({100, 200, 300, 400}));
  EXPECT_THAT(Kept(plan), ElementsAre(300, 400));
  EXPECT_EQ(ReasonOf(plan, 400), "latest");
  EXPECT_EQ(ReasonOf(plan, 300), "keep_last=2");
  EXPECT_THAT(ReasonOf(plan, 100), HasSubstr("not kept by keep_last=2"));
  EXPECT_THAT(Kept(PlanRetention({.keep_last = 9}, Steps({1, 2}))), ElementsAre(1, 2));
}

TEST(RetentionTest, KeepEveryStepsCombinesWithKeepLast) {
  std::vector<uint64_t> steps;
  for (uint64_t s = 100; s <= 1000; s += 100) steps.push_back(s);
  auto plan = PlanRetention({.keep_last = 3, .keep_every_steps = 200}, Steps(steps));
  EXPECT_THAT(Kept(plan), ElementsAre(200, 400, 600, 800, 900, 1000));
  EXPECT_EQ(ReasonOf(plan, 800), "keep_last=3");  // the first rule that keeps it names it
  EXPECT_EQ(ReasonOf(plan, 400), "keep_every_steps=200");
}

TEST(RetentionTest, KeepBestMinMaxTiesAndMissingMetric) {
  RetentionInputs in = Steps({1, 2, 3, 4, 5});
  double loss[] = {0.5, 0.2, 0.2, 0.9, 0.7};
  for (int i = 0; i < 5; ++i) in.checkpoints[i].metric = loss[i];
  in.checkpoints[0].metric.reset();  // step 1 has no loss
  // min: 0.2 twice: the newer (3) ranks first; keep_best=1 keeps 3 (+ latest 5).
  EXPECT_THAT(Kept(PlanRetention({.keep_best = 1}, in)), ElementsAre(3, 5));
  EXPECT_THAT(Kept(PlanRetention({.keep_best = 2}, in)), ElementsAre(2, 3, 5));
  EXPECT_THAT(Kept(PlanRetention({.keep_best = 1, .mode = MetricMode::kMax}, in)),
              ElementsAre(4, 5));
  auto keep_missing = PlanRetention({.keep_best = 1, .missing_metric = MissingMetric::kKeep}, in);
  EXPECT_THAT(Kept(keep_missing), ElementsAre(1, 3, 5));
  EXPECT_THAT(ReasonOf(keep_missing, 1), HasSubstr("no loss metric"));
  EXPECT_THAT(ReasonOf(keep_missing, 3), HasSubstr("keep_best=1 (loss=0.2)"));
  in.checkpoints[1].metric = std::nan("");
  EXPECT_THAT(Kept(PlanRetention({.keep_best = 1}, in)), ElementsAre(3, 5));  // NaN is not best
}

TEST(RetentionTest, KeepTimeIntervalKeepsTheNewestPerIntervalWithinTheWindow) {
  RetentionInputs in;
  // Times: 0..7200 s every 900 s; steps 1..9; now = 7200.
  for (uint64_t i = 0; i < 9; ++i) in.checkpoints.push_back({i + 1, 1, 900.0 * i, {}, {}});
  in.latest_step = 9;
  in.now_s = 7200;
  // One per hour, all ages: buckets [0,3600): steps 1-4 -> 4; [3600,7200): 5-8 -> 8; 7200: 9.
  EXPECT_THAT(Kept(PlanRetention({.keep_time_interval_seconds = 3600}, in)), ElementsAre(4, 8, 9));
  // Only the last 3000 s count: steps with time >= 4200: 6, 7, 8, 9 -> 8 and 9.
  EXPECT_THAT(Kept(PlanRetention(
                  {.keep_time_interval_seconds = 3600, .keep_time_window_seconds = 3000}, in)),
              ElementsAre(8, 9));
}

TEST(RetentionTest, MaxBytesDeletesOldestUnprotectedFirst) {
  RetentionInputs in = Steps({1, 2, 3, 4, 5});  // 10 bytes each
  in.checkpoints[1].pin = "eval";
  auto plan = PlanRetention({.keep_every_steps = 1, .max_bytes = 25}, in);
  // Kept by the rule: all (50 bytes); budget 25: delete 1, 3, 4 (2 pinned, 5 latest).
  EXPECT_THAT(Kept(plan), ElementsAre(2, 5));
  EXPECT_THAT(ReasonOf(plan, 1), HasSubstr("over max_bytes=25"));
  EXPECT_EQ(ReasonOf(plan, 2), "pinned: eval");
  // Protections can exceed the budget: nothing else to delete.
  in.checkpoints[0].pin = "a";
  in.checkpoints[2].pin = "b";
  EXPECT_THAT(Kept(PlanRetention({.max_bytes = 1}, in)), ElementsAre(1, 2, 3, 5));
}

TEST(RetentionTest, ProtectionsAlwaysWin) {
  RetentionInputs in = Steps({1, 2, 3, 4});
  in.checkpoints[0].pin = "release candidate";
  in.in_flight = {2};
  auto plan = PlanRetention({.keep_last = 1}, in);
  EXPECT_THAT(Kept(plan), ElementsAre(1, 2, 4));
  EXPECT_EQ(ReasonOf(plan, 1), "pinned: release candidate");
  EXPECT_EQ(ReasonOf(plan, 2), "in flight");
}

TEST(RetentionTest, RollbackKeepsLatestAtTheHighestStepAndCountsStepsNotTimes) {
  // Step 300 was rewritten after 500 (a rollback): it is the newest by time
  // but keep_last counts steps, and latest stays 500.
  RetentionInputs in = Steps({100, 200, 300, 400, 500}, 500);
  in.checkpoints[2].time_s = 10000;
  auto plan = PlanRetention({.keep_last = 2}, in);
  EXPECT_THAT(Kept(plan), ElementsAre(400, 500));
  // Out-of-order input gives the same plan.
  std::reverse(in.checkpoints.begin(), in.checkpoints.end());
  EXPECT_EQ(PlanRetention({.keep_last = 2}, in), plan);
}

TEST(RetentionTest, Describe) {
  EXPECT_EQ(Describe({}), "keep everything (no retention rule)");
  EXPECT_EQ(Describe({.keep_last = 3, .keep_every_steps = 1000}),
            "keep_last=3, keep_every_steps=1000");
}

TEST(DiskGuardTest, BytesToFree) {
  EXPECT_EQ(BytesToFree({}, 100, 1000, 50), 0u);
  EXPECT_EQ(BytesToFree({}, 100, 1000, 150), 50u);
  EXPECT_EQ(BytesToFree({.min_free_bytes = 200}, 300, 1000, 50), 0u);
  EXPECT_EQ(BytesToFree({.min_free_bytes = 200}, 300, 1000, 150), 50u);
  EXPECT_EQ(BytesToFree({.min_free_percent = 10}, 150, 1000, 100), 50u);  // keeps 100 free
  EXPECT_EQ(BytesToFree({.min_free_bytes = 50, .min_free_percent = 10}, 150, 1000, 100), 50u);
}

}  // namespace
}  // namespace ckptd::policy
