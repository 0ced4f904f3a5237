// The store's object names for a run, and the part reports the coordinator
// reads: built and parsed back, foreign names and bad reports refused.
#include "daemon/tier/remote_names.h"

#include <gtest/gtest.h>

#include "daemon/tier/step_coordinator.h"

namespace ckptd::tier {
namespace {

TEST(RemoteNamesTest, RoundTripAndForeignNames) {
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

TEST(RemoteNamesTest, PartReportsParseWithTheirSlices) {
  auto r = ParsePartReport(nlohmann::json::parse(R"({
    "rank": 1, "world_size": 3, "bytes": 100, "uuid": "u",
    "tensors": [{"name": "a", "ne": [4]},
                {"name": "b", "ne": [4, 2], "slice": {"full_ne": [4, 6], "dim": 1, "offset": 2, "length": 2}}]
  })"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rank, 1u);
  EXPECT_EQ(r->world_size, 3u);
  ASSERT_EQ(r->tensors.size(), 2u);
  EXPECT_FALSE(r->tensors[0].slice.has_value());
  ASSERT_TRUE(r->tensors[1].slice.has_value());
  EXPECT_EQ(r->tensors[1].slice->offset, 2u);
  EXPECT_EQ(r->tensors[1].slice->full_ne, (std::vector<uint64_t>{4, 6}));
  for (const char* bad :
       {R"({"world_size": 3, "tensors": []})", R"({"rank": "x", "world_size": 3, "tensors": []})",
        R"({"rank": 0, "world_size": 3})",
        R"({"rank": 0, "world_size": 3, "tensors": [{"name": "a", "slice": {"dim": 0}}]})"}) {
    EXPECT_EQ(ParsePartReport(nlohmann::json::parse(bad)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

}  // namespace
}  // namespace ckptd::tier
