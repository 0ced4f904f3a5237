// Ranks agreeing on a restore step through a store: every rank gets the
// same step from the same reports, a repeated call the same answer, and a
// missing rank, a reused attempt id, a bad one and no common step are each
// refused naming what is wrong.
#include "daemon/tier/restore_agreement.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <future>

#include "daemon/tier/memory_store.h"

namespace ckptd::tier {
namespace {

using ::testing::HasSubstr;

RestoreAgreementRequest Req(uint32_t rank, std::set<uint64_t> steps,
                            std::string attempt = "job-7:1") {
  std::optional<uint64_t> newest;
  if (!steps.empty()) newest = *steps.rbegin();
  return {.run_id = "r",
          .attempt = std::move(attempt),
          .mine = {.rank = rank, .world_size = 3, .steps = std::move(steps)},
          .newest_local = newest,
          .node = "node" + std::to_string(rank),
          .timeout_s = 20,
          .poll_s = 0.01};
}

class RestoreAgreementTest : public ::testing::Test {
 protected:
  ObjectStore& Store() { return store_; }
  MemoryStore store_{MemoryStore::Options{.checks_if_absent = true}};
  RunKeys keys_{"pre", "r"};
};

TEST_F(RestoreAgreementTest, EveryRankTakesTheNewestStepAllHold) {
  const std::vector<std::set<uint64_t>> held = {{500, 510, 520}, {500, 510}, {500, 510, 520, 530}};
  std::vector<std::future<absl::StatusOr<AgreedRestore>>> ranks;
  for (uint32_t r = 0; r < 3; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r] {
      return AgreeOnRestore(store_, keys_, Req(r, held[r]), nullptr);
    }));
  }
  for (auto& f : ranks) {
    absl::StatusOr<AgreedRestore> got = f.get();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->step, 510u);
    ASSERT_EQ(got->reports.size(), 3u);
    EXPECT_EQ(got->reports[1].node, "node1");
  }
  EXPECT_TRUE(Store().Head("pre/r/restores/job-7:1/rank-2.json")->has_value());
}

TEST_F(RestoreAgreementTest, AskingAgainInTheSameAttemptGivesTheSameStep) {
  for (uint32_t r = 1; r < 3; ++r) {
    RestoreReport rep{.run_id = "r", .attempt = "a", .rank = r, .world_size = 3, .steps = {10, 20}};
    ASSERT_TRUE(Store().Put(keys_.RestoreReport("a", r), rep.ToJson()).ok());
  }
  absl::StatusOr<AgreedRestore> first =
      AgreeOnRestore(store_, keys_, Req(0, {10, 20}, "a"), nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->reported_before);
  // Step 20 was evicted meanwhile: the report put first stands, so the
  // answer cannot change between this rank's calls (nor differ from the
  // other ranks').
  RestoreAgreementRequest again = Req(0, {10}, "a");
  absl::StatusOr<AgreedRestore> second = AgreeOnRestore(store_, keys_, again, nullptr);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->reported_before);
  EXPECT_EQ(second->step, 20u);
}

TEST_F(RestoreAgreementTest, AReusedAttemptIdIsRefused) {
  for (uint32_t r = 1; r < 3; ++r) {
    RestoreReport rep{.run_id = "r", .attempt = "a", .rank = r, .world_size = 3, .steps = {10}};
    ASSERT_TRUE(Store().Put(keys_.RestoreReport("a", r), rep.ToJson()).ok());
  }
  ASSERT_TRUE(AgreeOnRestore(store_, keys_, Req(0, {10}, "a"), nullptr).ok());
  // Training went on to step 40; the next restart reuses "a".
  absl::StatusOr<AgreedRestore> reused =
      AgreeOnRestore(store_, keys_, Req(0, {10, 40}, "a"), nullptr);
  ASSERT_EQ(reused.status().code(), absl::StatusCode::kFailedPrecondition) << reused.status();
  EXPECT_THAT(reused.status().message(), HasSubstr("was used already"));
  EXPECT_THAT(reused.status().message(), HasSubstr("has saved step 40 since"));
}

TEST_F(RestoreAgreementTest, AMissingRankTimesOutNamingIt) {
  RestoreAgreementRequest r = Req(0, {10});
  r.timeout_s = 0.05;
  absl::StatusOr<AgreedRestore> got = AgreeOnRestore(store_, keys_, r, nullptr);
  ASSERT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("rank(s) 1, 2 did not report"));
  RestoreAgreementRequest c = Req(0, {10});
  EXPECT_EQ(AgreeOnRestore(store_, keys_, c, [] { return true; }).status().code(),
            absl::StatusCode::kCancelled);
}

TEST_F(RestoreAgreementTest, NoCommonStepAndBadAttemptsAreRefused) {
  for (uint32_t r = 1; r < 3; ++r) {
    RestoreReport rep{.run_id = "r", .attempt = "a", .rank = r, .world_size = 3, .steps = {5}};
    ASSERT_TRUE(Store().Put(keys_.RestoreReport("a", r), rep.ToJson()).ok());
  }
  absl::StatusOr<AgreedRestore> none = AgreeOnRestore(store_, keys_, Req(0, {10}, "a"), nullptr);
  ASSERT_EQ(none.status().code(), absl::StatusCode::kNotFound) << none.status();
  EXPECT_THAT(none.status().message(), HasSubstr("no step is held by every rank"));
  for (const std::string& bad :
       std::vector<std::string>{"", "../x", ".hidden", "a/b", std::string(129, 'x')}) {
    EXPECT_EQ(AgreeOnRestore(store_, keys_, Req(0, {10}, bad), nullptr).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(Store().List("pre/r/restores/")->size(), 3u) << "a refused attempt wrote nothing";
}

}  // namespace
}  // namespace ckptd::tier
