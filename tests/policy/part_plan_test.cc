// The multipart plan: equal ranges copied, the rest sent, S3's minimum part
// size held for every part but the last, the file covered exactly.
#include "daemon/policy/part_plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::policy {
namespace {

using ::testing::ElementsAre;

constexpr uint64_t MiB = 1 << 20;
constexpr uint64_t kMin = 5 * MiB;

// Every part but the last at least kMin, in order, covering [0, size).
void ExpectValid(const std::vector<PlannedPart>& parts, uint64_t size) {
  uint64_t at = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    EXPECT_EQ(parts[i].offset, at) << i;
    if (i + 1 < parts.size()) {
      EXPECT_GE(parts[i].length, kMin) << i;
    }
    at += parts[i].length;
  }
  EXPECT_EQ(at, size);
}

uint64_t Sent(const std::vector<PlannedPart>& parts) {
  uint64_t n = 0;
  for (const PlannedPart& p : parts) n += p.copy_from ? 0 : p.length;
  return n;
}

TEST(PartPlanTest, NothingEqualIsTodaysPlan) {
  auto parts = PlanParts(40 * MiB, 16 * MiB, kMin, 5ull << 30, {});
  EXPECT_THAT(parts, ElementsAre(PlannedPart{0, 16 * MiB, std::nullopt},
                                 PlannedPart{16 * MiB, 16 * MiB, std::nullopt},
                                 PlannedPart{32 * MiB, 8 * MiB, std::nullopt}));
  EXPECT_THAT(PlanParts(3 * MiB, 16 * MiB, kMin, 5ull << 30, {}),
              ElementsAre(PlannedPart{0, 3 * MiB, std::nullopt}));
}

TEST(PartPlanTest, AFrozenPrefixIsCopiedAndTheChangedTailSent) {
  // A 4 KiB header, 180 MiB of frozen tensors (three of 60 MiB, touching
  // in both files), 20 MiB changed at the end.
  const uint64_t h = 4096, size = h + 200 * MiB;
  std::vector<SameRange> same;
  for (uint64_t i = 0; i < 3; ++i) same.push_back({h + i * 60 * MiB, 60 * MiB, h + i * 60 * MiB});
  auto parts = PlanParts(size, 16 * MiB, kMin, 5ull << 30, same);
  ExpectValid(parts, size);
  // The header goes with the first 5 MiB; the rest of the frozen bytes are
  // one copy; the changed 20 MiB are sent.
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_EQ(parts[0], (PlannedPart{0, kMin, std::nullopt}));
  EXPECT_EQ(parts[1], (PlannedPart{kMin, h + 180 * MiB - kMin, kMin}));
  EXPECT_EQ(Sent(parts), kMin + 20 * MiB);
}

TEST(PartPlanTest, ShortEqualRangesAreSentAndShortGapsBorrowFromTheNextCopy) {
  const uint64_t size = 100 * MiB;
  // [10, 11) equal: too short to copy. [20, 60) equal, with a 1 MiB gap to
  // send at [60, 61) before [61, 100) equal at another source offset.
  auto parts = PlanParts(size, 16 * MiB, kMin, 5ull << 30,
                         {{10 * MiB, 1 * MiB, 10 * MiB},
                          {20 * MiB, 40 * MiB, 20 * MiB},
                          {61 * MiB, 39 * MiB, 200 * MiB}});
  ExpectValid(parts, size);
  // [0, 20) to send: 16 MiB and a 4 MiB remainder, too short before a
  // copy, joined to it.
  EXPECT_THAT(parts, ElementsAre(PlannedPart{0, 20 * MiB, std::nullopt},
                                 PlannedPart{20 * MiB, 40 * MiB, 20 * MiB},
                                 PlannedPart{60 * MiB, kMin, std::nullopt},
                                 PlannedPart{65 * MiB, 35 * MiB, 204 * MiB}));
}

TEST(PartPlanTest, AFollowingCopyTooShortAfterLendingIsSentWhole) {
  const uint64_t size = 30 * MiB;
  // 1 MiB to send, then 7 MiB equal: lending 4 MiB leaves 3, so all 8 go.
  auto parts = PlanParts(size, 16 * MiB, kMin, 5ull << 30,
                         {{1 * MiB, 7 * MiB, 1 * MiB}, {8 * MiB, 22 * MiB, 50 * MiB}});
  ExpectValid(parts, size);
  EXPECT_THAT(parts, ElementsAre(PlannedPart{0, 8 * MiB, std::nullopt},
                                 PlannedPart{8 * MiB, 22 * MiB, 50 * MiB}));
}

TEST(PartPlanTest, LongCopiesAreSplitAndRangesOutsideTheFileIgnored) {
  const uint64_t size = 30 * MiB;
  auto parts =
      PlanParts(size, 16 * MiB, kMin, 12 * MiB, {{0, 30 * MiB, 0}, {29 * MiB, 10 * MiB, 0}});
  ExpectValid(parts, size);
  EXPECT_THAT(parts,
              ElementsAre(PlannedPart{0, 10 * MiB, 0}, PlannedPart{10 * MiB, 10 * MiB, 10 * MiB},
                          PlannedPart{20 * MiB, 10 * MiB, 20 * MiB}));
  EXPECT_EQ(Sent(parts), 0u);
}

}  // namespace
}  // namespace ckptd::policy
