// The tier's records: each written and parsed back equal, fields a newer
// ckptd added kept through a rewrite, a format from the future refused,
// damaged records named.
#include "daemon/tier/remote_records.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::tier {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

// `text` with `extra` merged in at the top, as a newer writer would add it.
std::string WithExtra(const std::string& text, const Json& extra) {
  Json j = Json::parse(text);
  for (const auto& [k, v] : extra.items()) j[k] = v;
  return j.dump();
}

StepFacts Facts() {
  return {.run_id = "r",
          .step = 20,
          .metrics = {{"loss", 1.5}},
          .uuid = "u-1",
          .content_digest = "cd",
          .time_utc = "2026-12-06T10:00:00Z",
          .part_size = 5 << 20,
          .files = {{.name = "step_20.gguf",
                     .key = "p/r/step_20.gguf",
                     .role = "model",
                     .size = 100,
                     .etag = "e1",
                     .content_digest = "cd"},
                    {.name = "step_20.train.gguf",
                     .key = "p/r/step_20.train.gguf",
                     .role = "train",
                     .size = 50,
                     .etag = "e2"}}};
}

TEST(RemoteRecordsTest, AManifestRoundTripsWithFieldsItDoesNotKnow) {
  StepManifest m{.facts = Facts()};
  Json j = Json::parse(m.ToJson());
  EXPECT_EQ(j["format"], kRecordFormat);
  j["replicas"] = Json::array({"node-2"});     // a newer ckptd's field
  j["files"][0]["storage_class"] = "GLACIER";  // and one in a file entry
  auto parsed = StepManifest::Parse(j.dump(), "p/r/step_20.manifest.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->facts.step, 20u);
  EXPECT_EQ(parsed->facts.metrics.at("loss"), 1.5);
  ASSERT_EQ(parsed->facts.files.size(), 2u);
  EXPECT_EQ(parsed->facts.files[0].etag, "e1");
  EXPECT_EQ(parsed->bytes(), 150u);
  // Written back, the unknown fields are there, unchanged.
  Json again = Json::parse(parsed->ToJson());
  EXPECT_EQ(again["replicas"], Json::array({"node-2"}));
  EXPECT_EQ(again["files"][0]["storage_class"], "GLACIER");
  EXPECT_EQ(again["files"][1]["role"], "train");
  EXPECT_EQ(again, Json::parse(StepManifest::Parse(again.dump(), "x")->ToJson()));
}

TEST(RemoteRecordsTest, AMultiRankManifestKeepsItsParts) {
  StepManifest m{
      .facts = Facts(),
      .world_size = 2,
      .parts = {{.rank = 0, .uuid = "a", .bytes = 10},
                {.rank = 1,
                 .uuid = "b",
                 .bytes = 20,
                 .tensors = {{.name = "w",
                              .ne = {4, 2},
                              .slice = policy::TensorSlice{
                                  .full_ne = {4, 4}, .dim = 1, .offset = 2, .length = 2}}}}}};
  m.facts.files[0].rank = 1;
  Json j = Json::parse(m.ToJson());
  j["parts"][1]["host"] = "node-2";
  auto parsed = StepManifest::Parse(j.dump(), "m");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->world_size, 2u);
  ASSERT_EQ(parsed->parts.size(), 2u);
  EXPECT_EQ(parsed->parts[1].tensors[0].slice->offset, 2u);
  EXPECT_EQ(parsed->facts.files[0].rank, 1u);
  EXPECT_FALSE(parsed->facts.files[1].rank.has_value());
  EXPECT_EQ(Json::parse(parsed->ToJson())["parts"][1]["host"], "node-2");
}

TEST(RemoteRecordsTest, APartReportRoundTripsWithItsSlicesAndUnknownFields) {
  PartReport r{.facts = Facts(),
               .rank = 1,
               .world_size = 3,
               .bytes = 150,
               .split_tensors_count = 6,
               .tensors = {{.name = "a", .ne = {4}},
                           {.name = "b",
                            .ne = {4, 2},
                            .slice = policy::TensorSlice{
                                .full_ne = {4, 6}, .dim = 1, .offset = 2, .length = 2}}}};
  auto parsed = PartReport::Parse(WithExtra(r.ToJson(), {{"gpu", "H100"}}), "rep");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->rank, 1u);
  EXPECT_EQ(parsed->split_tensors_count, 6);
  ASSERT_EQ(parsed->tensors.size(), 2u);
  EXPECT_FALSE(parsed->tensors[0].slice.has_value());
  EXPECT_EQ(parsed->tensors[1].slice->full_ne, (std::vector<uint64_t>{4, 6}));
  EXPECT_EQ(Json::parse(parsed->ToJson())["gpu"], "H100");
  const policy::PartReport p = parsed->ForPolicy();
  EXPECT_EQ(p.world_size, 3u);
  EXPECT_EQ(p.uuid, "u-1");
  ASSERT_EQ(p.tensors.size(), 2u);
  EXPECT_TRUE(p.tensors[1].slice.has_value());
}

TEST(RemoteRecordsTest, FailedStepsLatestAndUploadStateRoundTripWithUnknownFields) {
  FailedStep f{.run_id = "r",
               .step = 8,
               .world_size = 3,
               .reason = "rank 1 timed out",
               .missing_ranks = {1},
               .time_utc = "t"};
  auto pf = FailedStep::Parse(WithExtra(f.ToJson(), {{"by", "node-0"}}), "f");
  ASSERT_TRUE(pf.ok()) << pf.status();
  EXPECT_EQ(pf->missing_ranks, std::vector<uint32_t>{1});
  EXPECT_EQ(pf->reason, "rank 1 timed out");
  EXPECT_EQ(Json::parse(pf->ToJson())["by"], "node-0");

  LatestRecord l{.step = 4, .manifest = "p/r/step_4.manifest.json"};
  auto pl = LatestRecord::Parse(WithExtra(l.ToJson(), {{"etag", "x"}}), "l");
  ASSERT_TRUE(pl.ok()) << pl.status();
  EXPECT_EQ(pl->step, 4u);
  EXPECT_EQ(pl->manifest, "p/r/step_4.manifest.json");
  EXPECT_EQ(Json::parse(pl->ToJson())["etag"], "x");

  UploadState s;
  s.uploaded = {3, 5};
  s.waiting[7].files["step_7.gguf"] = {
      .upload_id = "id", .key = "p/r/step_7.gguf", .part_size = 5 << 20, .parts = {"a", "", "c"}};
  s.withdrawn[8] = {"p/r/step_8-00002-of-00003.gguf", "p/r/parts/step_8/rank-1.json"};
  Json j = Json::parse(s.ToJson());
  EXPECT_TRUE(j["waiting"]["7"]["files"]["step_7.gguf"]["parts"][1].is_null());
  j["waiting"]["7"]["files"]["step_7.gguf"]["checksum"] = "crc64";
  j["host"] = "node-1";
  auto ps = UploadState::Parse(j.dump(), "state");
  ASSERT_TRUE(ps.ok()) << ps.status();
  EXPECT_EQ(ps->uploaded, (std::set<uint64_t>{3, 5}));
  const UploadState::FileProgress& fp = ps->waiting.at(7).files.at("step_7.gguf");
  EXPECT_EQ(fp.parts, (std::vector<std::string>{"a", "", "c"}));
  EXPECT_EQ(ps->withdrawn, s.withdrawn);
  EXPECT_FALSE(Json::parse(UploadState{}.ToJson()).contains("withdrawn"));  // only when some are
  Json back = Json::parse(ps->ToJson());
  EXPECT_EQ(back["host"], "node-1");
  EXPECT_EQ(back["waiting"]["7"]["files"]["step_7.gguf"]["checksum"], "crc64");
}

TEST(RemoteRecordsTest, RecordsFromBeforeVersionsAreFormatOne) {
  // As ckptd wrote them before the format field existed.
  auto l = LatestRecord::Parse(R"({"step": 4, "manifest": "k"})", "l");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(Json::parse(l->ToJson())["format"], 1);
  auto s = UploadState::Parse(R"({"waiting": {"3": {"files": {}}}, "uploaded": [1, 2]})", "s");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->waiting.contains(3));
}

TEST(RemoteRecordsTest, AFormatFromTheFutureIsRefusedNamingTheUpgrade) {
  const std::string future = R"({"format": 2, "step": 4, "manifest": "k"})";
  absl::Status st = LatestRecord::Parse(future, "p/r/latest").status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("p/r/latest"));
  EXPECT_THAT(st.message(), HasSubstr("newer ckptd"));
  EXPECT_EQ(StepManifest::Parse(R"({"format": 9, "step": 1, "files": []})", "m").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(RemoteRecordsTest, DamagedRecordsAreDataLossNamingWhere) {
  for (const char* bad : {"", "[]", "not json", R"({"step": "x", "files": []})", R"({"step": 1})",
                          R"({"step": 1, "files": {}})", R"({"step": 1, "files": [{"name": "a"}]})",
                          R"({"format": "1"})"}) {
    absl::Status st = StepManifest::Parse(bad, "p/r/step_1.manifest.json").status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << bad;
    EXPECT_THAT(st.message(), HasSubstr("p/r/step_1.manifest.json")) << bad;
  }
  for (const char* bad :
       {R"({"world_size": 3, "tensors": [], "step": 1, "files": []})",
        R"({"rank": "x", "world_size": 3, "tensors": [], "step": 1, "files": []})",
        R"({"rank": 0, "world_size": 3, "step": 1, "files": []})",
        R"({"rank": 0, "world_size": 3, "step": 1, "files": [],
            "tensors": [{"name": "a", "slice": {"dim": 0}}]})"}) {
    EXPECT_EQ(PartReport::Parse(bad, "rep").status().code(), absl::StatusCode::kDataLoss) << bad;
  }
  for (const char* bad : {R"({"waiting": {"x": {}}})", R"({"withdrawn": {"x": []}})",
                          R"({"withdrawn": {"3": "k"}})", R"({"withdrawn": {"3": [1]}})"}) {
    EXPECT_EQ(UploadState::Parse(bad, "s").status().code(), absl::StatusCode::kDataLoss) << bad;
  }
  EXPECT_EQ(LatestRecord::Parse(R"({"step": 1})", "l").status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace ckptd::tier
