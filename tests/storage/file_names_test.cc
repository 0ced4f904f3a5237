// The weights/ file-name grammar: builders and the parser agree, and names
// that are not exactly ours never parse (so recovery never touches them).
#include "daemon/storage/file_names.h"

#include <gtest/gtest.h>

#include <tuple>

namespace ckptd::storage {
namespace {

TEST(FileNamesTest, BuildersRoundTrip) {
  for (uint64_t step : {0ull, 1ull, 1200ull, 18446744073709551615ull}) {
    auto m = ParseFileName(ModelFileName(step));
    ASSERT_TRUE(m);
    EXPECT_EQ(m->kind, FileKind::kModel);
    EXPECT_EQ(m->step, step);
    auto t = ParseFileName(TrainFileName(step));
    ASSERT_TRUE(t);
    EXPECT_EQ(t->kind, FileKind::kTrain);
    auto mt = ParseFileName(TempFileName(ModelFileName(step)));
    ASSERT_TRUE(mt);
    EXPECT_EQ(mt->kind, FileKind::kModelTemp);
    EXPECT_EQ(mt->step, step);
    EXPECT_EQ(ParseFileName(TempFileName(TrainFileName(step)))->kind, FileKind::kTrainTemp);
  }
  EXPECT_EQ(ModelFileName(1200), "step_1200.gguf");
  EXPECT_EQ(TrainFileName(7), "step_7.train.gguf");
  EXPECT_EQ(ParseFileName("latest")->kind, FileKind::kLatest);
  EXPECT_EQ(ParseFileName(TempFileName("latest"))->kind, FileKind::kLatestTemp);
  EXPECT_NE(TempFileName("latest"), TempFileName("latest"));
  EXPECT_EQ(TrainNextFileName(7), ".step_7.train.gguf.next");
  auto next = ParseFileName(TrainNextFileName(7));
  ASSERT_TRUE(next);
  EXPECT_EQ(next->kind, FileKind::kTrainNext);
  EXPECT_EQ(next->step, 7u);
  // A model file or part being deleted.
  EXPECT_EQ(DeletingFileName(ModelFileName(9)), ".step_9.gguf.deleting");
  for (const std::string& name : {ModelFileName(9), SplitFileName(9, 1, 2)}) {
    auto deleting = ParseFileName(DeletingFileName(name));
    ASSERT_TRUE(deleting) << name;
    EXPECT_EQ(deleting->kind, FileKind::kDeleting);
    EXPECT_EQ(deleting->step, 9u);
  }
  // The run's state files and their temps (one temp recipe for everything).
  EXPECT_EQ(ParseFileName(kPinsFile)->kind, FileKind::kStateFile);
  EXPECT_EQ(ParseFileName(kRunStateFile)->kind, FileKind::kStateFile);
  EXPECT_EQ(ParseFileName(TempFileName(kPinsFile))->kind, FileKind::kStateTemp);
  EXPECT_EQ(ParseFileName(TempFileName(kRunStateFile))->kind, FileKind::kStateTemp);
  for (std::string_view f : {kRunOwnerFile, kRunSettingsFile}) {
    EXPECT_EQ(ParseFileName(f)->kind, FileKind::kStateFile) << f;
    EXPECT_EQ(ParseFileName(TempFileName(f))->kind, FileKind::kStateTemp) << f;
  }
}

TEST(FileNamesTest, ExportsAndTheirLinks) {
  EXPECT_EQ(ExportFileName(1200, "llama-q8_0"), "step_1200.llama-q8_0.gguf");
  auto e = ParseFileName("step_1200.llama-q8_0.gguf");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, FileKind::kExport);
  EXPECT_EQ(e->step, 1200u);
  EXPECT_EQ(e->export_name, "llama-q8_0");
  auto t = ParseFileName(TempFileName(ExportFileName(3, "hf-llama")));
  ASSERT_TRUE(t);
  EXPECT_EQ(t->kind, FileKind::kExportTemp);
  EXPECT_EQ(t->export_name, "hf-llama");
  EXPECT_EQ(ParseFileName(ExportLatestName("hf-llama"))->kind, FileKind::kExportLatest);
  EXPECT_EQ(ParseFileName(TempFileName(ExportLatestName("x")))->kind, FileKind::kExportLatestTemp);
  // "train" is the training-state file, never an export; bad export names are foreign.
  EXPECT_EQ(ParseFileName("step_5.train.gguf")->kind, FileKind::kTrain);
  for (const char* name : {"step_5.Bad.gguf", "step_5.a.b.gguf", "step_5..gguf", "latest.",
                           "latest.A", "step_05.x.gguf"}) {
    EXPECT_FALSE(ParseFileName(name)) << name;
  }
}

TEST(FileNamesTest, ForeignNamesDoNotParse) {
  for (const char* name : {"step_01.gguf",
                           "step_.gguf",
                           "step_1.ggufx",
                           "step_1.gguf.bak",
                           "step_-1.gguf",
                           "step_18446744073709551616.gguf",
                           "Step_1.gguf",
                           "step_1.train.gguf.tmp",
                           ".step_1.gguf.tmp-",
                           ".step_1.gguf.tmp-XYZ",
                           ".step_1.gguf",
                           "latest2",
                           ".latest",
                           "model.gguf",
                           "step_1-00001-of-00002.gguf.old",
                           "",
                           ".",
                           ".tmp-00",
                           "..step_1.gguf.tmp-ab",
                           ".step_1.gguf.next",
                           "step_1.train.gguf.next",
                           ".step_01.train.gguf.next",
                           ".step_1.train.gguf.deleting",
                           ".step_1.f16.gguf.deleting",
                           "step_1.gguf.deleting",
                           ".pins.json.tmp-",
                           "pins.json.tmp-00",
                           ".other.json.tmp-00"}) {
    EXPECT_FALSE(ParseFileName(name).has_value()) << name;
  }
}

TEST(FileNamesTest, SplitPartsAreNamedAsGgufSplitNamesShards) {
  EXPECT_EQ(SplitFileName(100, 0, 3), "step_100-00001-of-00003.gguf");
  EXPECT_EQ(SplitFileName(7, 65534, 65535), "step_7-65535-of-65535.gguf");
  for (auto [step, rank, world] : {std::tuple{0ull, 0u, 1u}, std::tuple{100ull, 2u, 3u},
                                   std::tuple{18446744073709551615ull, 65534u, 65535u}}) {
    auto p = ParseSplitFileName(SplitFileName(step, rank, world));
    ASSERT_TRUE(p.has_value());
    EXPECT_EQ(p->step, step);
    EXPECT_EQ(p->rank, rank);
    EXPECT_EQ(p->world_size, world);
  }
  for (std::string_view bad :
       {"step_100.gguf", "step_100-00000-of-00003.gguf", "step_100-00004-of-00003.gguf",
        "step_100-0001-of-00003.gguf", "step_100-00001-of-0003.gguf", "step_-00001-of-00003.gguf",
        "step_01-00001-of-00003.gguf", "step_1-00001-0f-00003.gguf", "step_1-0000a-of-00003.gguf",
        "step_1-00001-of-99999.gguf", "step_1-00001-of-00003.train.gguf",
        "x-00001-of-00001.gguf"}) {
    EXPECT_FALSE(ParseSplitFileName(bad).has_value()) << bad;
  }
  // In the grammar recovery acts on: parts, their train files, commit
  // markers and the temps of all three.
  auto part = ParseFileName("step_100-00002-of-00003.gguf");
  ASSERT_TRUE(part.has_value());
  EXPECT_EQ(part->kind, FileKind::kPart);
  EXPECT_EQ(part->step, 100u);
  EXPECT_EQ(part->rank, 1u);
  EXPECT_EQ(part->world_size, 3u);
  EXPECT_EQ(PartTrainFileName(100, 1, 3), "step_100-00002-of-00003.train.gguf");
  auto train = ParseFileName(PartTrainFileName(100, 1, 3));
  ASSERT_TRUE(train.has_value());
  EXPECT_EQ(train->kind, FileKind::kPartTrain);
  EXPECT_EQ(train->rank, 1u);
  EXPECT_EQ(CommitMarkerName(100), "step_100.commit");
  EXPECT_EQ(ParseFileName("step_100.commit")->kind, FileKind::kCommitMarker);
  EXPECT_EQ(ParseFileName(TempFileName(SplitFileName(100, 1, 3)))->kind, FileKind::kModelTemp);
  EXPECT_EQ(ParseFileName(TempFileName(PartTrainFileName(100, 1, 3)))->kind, FileKind::kTrainTemp);
  EXPECT_EQ(ParseFileName(TempFileName(CommitMarkerName(100)))->kind, FileKind::kStateTemp);
  for (std::string_view bad :
       {"step_01.commit", "step_.commit", "step_1-00004-of-00003.train.gguf", "step_1.x.commit"}) {
    EXPECT_FALSE(ParseFileName(bad).has_value()) << bad;
  }
}

TEST(FileNamesTest, RunIds) {
  for (const char* ok : {"a", "run-1", "llama_7b.ft.v2", "A0"}) EXPECT_TRUE(IsValidRunId(ok)) << ok;
  EXPECT_TRUE(IsValidRunId(std::string(128, 'x')));
  for (const char* bad : {"", ".", "..", "a/b", "../x", "a b", "r\xc3\xa9", "a\n"}) {
    EXPECT_FALSE(IsValidRunId(bad)) << bad;
  }
  EXPECT_FALSE(IsValidRunId(std::string(129, 'x')));
}

}  // namespace
}  // namespace ckptd::storage
