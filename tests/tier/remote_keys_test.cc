// The store's object names for a run: built and parsed back, foreign names
// refused, one run's keys never taken for another's.
#include "daemon/tier/remote_keys.h"

#include <gtest/gtest.h>

namespace ckptd::tier {
namespace {

TEST(RemoteKeysTest, RoundTripAndForeignNames) {
  EXPECT_EQ(ManifestName(20), "step_20.manifest.json");
  EXPECT_EQ(FailedName(20), "step_20.failed.json");
  EXPECT_EQ(PartReportName(20, 2), "parts/step_20/rank-2.json");
  EXPECT_EQ(ParseManifestName("step_20.manifest.json"), 20u);
  auto k = ParsePartReportName(PartReportName(18446744073709551615ull, 65534));
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->step, 18446744073709551615ull);
  EXPECT_EQ(k->rank, 65534u);
  for (const char* bad : {"step_020.manifest.json", "step_.manifest.json", "step_1.failed.json",
                          "latest", "step_1.gguf"}) {
    EXPECT_FALSE(ParseManifestName(bad).has_value()) << bad;
  }
  for (const char* bad :
       {"parts/step_1/rank-01.json", "parts/step_1/rank-.json", "parts/step_/rank-1.json",
        "parts/step_1/rank-1.jsn", "step_1/rank-1.json", "parts/step_1/x/rank-1.json",
        "parts/step_1rank-1.json"}) {
    EXPECT_FALSE(ParsePartReportName(bad).has_value()) << bad;
  }
}

TEST(RemoteKeysTest, EveryKeyOfARunLiesUnderItsRoot) {
  const RunKeys keys("team/ckpt", "run-1");
  EXPECT_EQ(keys.root(), "team/ckpt/run-1/");
  EXPECT_EQ(keys.Object("step_5.gguf"), "team/ckpt/run-1/step_5.gguf");
  EXPECT_EQ(keys.Manifest(5), "team/ckpt/run-1/step_5.manifest.json");
  EXPECT_EQ(keys.Failed(5), "team/ckpt/run-1/step_5.failed.json");
  EXPECT_EQ(keys.PartReport(5, 2), "team/ckpt/run-1/parts/step_5/rank-2.json");
  EXPECT_EQ(keys.PartsDir(), "team/ckpt/run-1/parts/");
  EXPECT_EQ(keys.Latest(), "team/ckpt/run-1/latest");
  EXPECT_EQ(RunKeys("", "run-1").Latest(), "run-1/latest");
  EXPECT_EQ(keys.NameOf(keys.Manifest(7)), "step_7.manifest.json");
  // "run-10" shares "run-1" as a string prefix, not as a run.
  EXPECT_FALSE(keys.NameOf("team/ckpt/run-10/latest").has_value());
  EXPECT_FALSE(keys.NameOf("other/run-1/latest").has_value());
}

}  // namespace
}  // namespace ckptd::tier
