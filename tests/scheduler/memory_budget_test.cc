// The memory budget's accounting: charges, run settings, refusals.
#include "daemon/scheduler/memory_budget.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::scheduler {
namespace {

using ::testing::HasSubstr;

TEST(MemoryBudgetTest, ChargesAreReturnedWhenTheyEnd) {
  MemoryBudget b(100);
  {
    MemoryBudget::Charge a, c;
    ASSERT_TRUE(b.Reserve(60, "a", &a).ok());
    EXPECT_EQ(b.used(), 60u);
    absl::Status st = b.Reserve(41, "the save of run 'x' step 3", &c);
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(st.message(), HasSubstr("the save of run 'x' step 3 needs 41 bytes"));
    EXPECT_THAT(st.message(), HasSubstr("has 40 of 100 left (server.memory_budget_bytes)"));
    EXPECT_EQ(b.used(), 60u);                  // a refusal charges nothing
    ASSERT_TRUE(b.Reserve(40, "c", &c).ok());  // exactly full
    MemoryBudget::Charge moved = std::move(c);
    EXPECT_EQ(b.used(), 100u);
    moved.Release();
    moved.Release();  // once only
    EXPECT_EQ(b.used(), 60u);
  }
  EXPECT_EQ(b.used(), 0u);
}

TEST(MemoryBudgetTest, ARunsSettingsAreReplacedNotAdded) {
  MemoryBudget b(100);
  ASSERT_TRUE(b.ReserveForRun("r", 40).ok());
  ASSERT_TRUE(b.ReserveForRun("r", 40).ok());
  ASSERT_TRUE(b.ReserveForRun("r", 90).ok());  // 90 fits once r's 40 are given back
  EXPECT_EQ(b.used(), 90u);
  EXPECT_EQ(b.HeldByRun("r"), 90u);
  EXPECT_THAT(b.ReserveForRun("s", 20).message(),
              HasSubstr("the settings of run 's' needs 20 bytes"));
  EXPECT_EQ(b.HeldByRun("s"), 0u);
  // Runs found at startup are counted even past the budget.
  EXPECT_FALSE(b.ReserveForRun("s", 20, /*force=*/true).ok());
  EXPECT_EQ(b.used(), 110u);
  MemoryBudget::Charge c;
  EXPECT_THAT(b.Reserve(1, "x", &c).message(), HasSubstr("has 0 of 100 left"));
  ASSERT_TRUE(b.ReserveForRun("r", 0).ok());
  EXPECT_EQ(b.used(), 20u);
  // An unloaded run holds nothing; releasing twice (or an unknown run) is harmless.
  b.ReleaseRun("s");
  b.ReleaseRun("s");
  b.ReleaseRun("never");
  EXPECT_EQ(b.used(), 0u);
  EXPECT_EQ(b.HeldByRun("s"), 0u);
}

}  // namespace
}  // namespace ckptd::scheduler
