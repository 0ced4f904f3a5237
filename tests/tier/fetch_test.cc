// Fetching a step back from MemoryStore: exactly the uploaded bytes placed,
// or an error naming the object and the check, with nothing left behind
// (a GET cut short, bytes rotted in the store, a manifest that lies or
// comes from a newer ckptd).
#include "daemon/tier/fetch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "absl/time/clock.h"
#include "daemon/base/strings.h"
#include "daemon/tier/fault_store.h"
#include "daemon/tier/memory_store.h"
#include "daemon/tier/uploader.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/tier/tier_fixtures.h"

namespace ckptd::tier {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::kTestPartSize;

class Done final : public UploadObserver {
 public:
  void OnUploadEvent(const UploadEvent& e) override {
    absl::MutexLock lock(&mu_);
    if (e.type == UploadEventType::kUploaded) uploaded_.insert(e.step);
  }
  bool Wait(uint64_t step) {
    absl::MutexLock lock(&mu_);
    auto done = [&] { return uploaded_.contains(step); };
    return mu_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(20));
  }

 private:
  absl::Mutex mu_;
  std::set<uint64_t> uploaded_ ABSL_GUARDED_BY(mu_);
};

class FetchTest : public ::testing::Test {
 protected:
  explicit FetchTest(MemoryStore::Options options = testing::SmallParts())
      : memory_(options), store_(&memory_), run_(tmp_.Join("run")) {
    record_ = Upload(7);
  }
  // Commits and uploads a step (its model file's header `description_bytes`
  // longer than the fixture's).
  storage::CheckpointRecord Upload(uint64_t step, size_t description_bytes = 0) {
    Uploader uploader(env::Env::Default(), &memory_,
                      {.prefix = "p", .part_size = kTestPartSize, .parallel_parts = 2}, nullptr,
                      &done_);
    uploader.Start();
    absl::StatusOr<storage::CheckpointRecord> record =
        run_.Commit(step, 3 * kTestPartSize + 123, 'z', description_bytes);
    EXPECT_OK(record.status());
    EXPECT_OK(uploader.Enqueue({.run_id = "r", .run_dir = run_.run_dir(), .record = *record}));
    EXPECT_TRUE(done_.Wait(step));
    return *record;
  }
  absl::StatusOr<FetchResult> Fetch(std::optional<uint64_t> step = std::nullopt) {
    return FetchStep(env::Env::Default(), store_,
                     {.prefix = "p", .parallel = 2, .max_memory_bytes = 8 * kTestPartSize}, "r",
                     step, Dest());
  }
  std::string Dest() const { return tmp_.Join("fetched"); }
  std::vector<std::string> Placed() {
    auto names = env::Env::Default()->ListDir(Dest());
    return names.ok() ? *names : std::vector<std::string>{};
  }

  ckptd::testing::TempDir tmp_;
  MemoryStore memory_;
  FaultStore store_;
  testing::RunFiles run_;
  Done done_;
  storage::CheckpointRecord record_;
};

TEST_F(FetchTest, LatestsStepComesBackByteForByte) {
  auto got = Fetch();
  ASSERT_OK(got.status());
  EXPECT_EQ(got->step, 7u);
  EXPECT_EQ(got->uuid, record_.uuid);
  ASSERT_EQ(got->files.size(), 2u);
  EXPECT_EQ(got->files.back(), Dest() + "/step_7.gguf");  // the model file last
  EXPECT_EQ(ckptd::testing::ReadFile(Dest() + "/step_7.gguf"),
            ckptd::testing::ReadFile(record_.model_path));
  EXPECT_EQ(ckptd::testing::ReadFile(Dest() + "/step_7.train.gguf"),
            ckptd::testing::ReadFile(record_.train_path));
  // Into a directory that has the files already: refused, nothing replaced.
  EXPECT_EQ(Fetch(7).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(FetchTest, AGetCutShortIsDataLossAndLeavesNothing) {
  // The train file (no tensor digests of its own to catch it) arrives short.
  store_.Add({.op = StoreOp::kGet,
              .key_contains = "train",
              .action = StoreFault::Action::kTruncate,
              .keep_bytes = 10});
  absl::Status st = Fetch(7).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("step_7.train.gguf"));
  EXPECT_THAT(st.message(), HasSubstr("ETag"));
  EXPECT_THAT(Placed(), IsEmpty());
}

TEST_F(FetchTest, BytesThatRottedInTheStoreAreDataLossAndLeaveNothing) {
  std::string model = ckptd::testing::ReadFile(record_.model_path);
  model[model.size() - 5] ^= 1;
  memory_.Corrupt("p/r/step_7.gguf", model);
  absl::Status st = Fetch(7).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("p/r/step_7.gguf"));
  EXPECT_THAT(Placed(), IsEmpty());
}

// Over TLS (the transport proves the bytes arrived), checkpoint files are
// not MD5-summed against their ETags: their own digests, which cover every
// byte, prove them, so bytes that rotted in the store are still refused.
class FetchOverTlsTest : public FetchTest {
 protected:
  FetchOverTlsTest()
      : FetchTest(
            {.bucket = "test", .min_part_size = kTestPartSize, .transport_protects_bytes = true}) {}
};

TEST_F(FetchOverTlsTest, FilesComeBackByteForByteAndRotIsStillRefused) {
  ASSERT_OK(Fetch(7).status());
  EXPECT_EQ(ckptd::testing::ReadFile(Dest() + "/step_7.gguf"),
            ckptd::testing::ReadFile(record_.model_path));
  EXPECT_EQ(ckptd::testing::ReadFile(Dest() + "/step_7.train.gguf"),
            ckptd::testing::ReadFile(record_.train_path));
  ASSERT_TRUE(std::filesystem::remove_all(Dest()));
  for (const char* name : {"step_7.train.gguf", "step_7.gguf"}) {
    const std::string key = std::string("p/r/") + name;
    const std::string good = *memory_.Get(key, std::nullopt);
    std::string rotted = good;
    rotted[rotted.size() - 3] ^= 0x10;  // in the last tensor's bytes
    memory_.Corrupt(key, rotted);
    absl::Status st = Fetch(7).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << name;
    EXPECT_THAT(st.message(), HasSubstr(key));
    EXPECT_THAT(Placed(), IsEmpty()) << name;
    memory_.Corrupt(key, good);
  }
}

// The digests are checked as the windows arrive, from a header parsed out of
// the first window; a header longer than a window (here 64 KiB) is checked
// by reading the file back instead, and rot is caught either way.
TEST_F(FetchOverTlsTest, AHeaderLongerThanTheFirstWindowIsStillChecked) {
  const storage::CheckpointRecord long_header = Upload(9, kTestPartSize + 1000);
  ASSERT_OK(Fetch(9).status());
  EXPECT_EQ(ckptd::testing::ReadFile(Dest() + "/step_9.gguf"),
            ckptd::testing::ReadFile(long_header.model_path));
  ASSERT_TRUE(std::filesystem::remove_all(Dest()));
  const std::string key = "p/r/step_9.gguf";
  std::string rotted = *memory_.Get(key, std::nullopt);
  rotted[rotted.size() / 2] ^= 0x10;  // past the header, in the tensor's bytes
  memory_.Corrupt(key, rotted);
  absl::Status st = Fetch(9).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr(StrCat(key, ": tensor 'w'")));
  EXPECT_THAT(Placed(), IsEmpty());
}

TEST_F(FetchTest, AManifestThatDescribesAnotherStepIsRefused) {
  ASSERT_OK(memory_
                .Put("p/r/step_8.manifest.json",
                     *memory_.Get("p/r/step_7.manifest.json", std::nullopt), Precondition::kNone,
                     {})
                .status());
  absl::Status st = Fetch(8).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("describes step 7, not 8"));
  EXPECT_THAT(Placed(), IsEmpty());
}

TEST_F(FetchTest, RecordsFromANewerCkptdAreRefusedNotGuessedAt) {
  nlohmann::json latest = nlohmann::json::parse(*memory_.Get("p/r/latest", std::nullopt));
  latest["format"] = 2;
  ASSERT_OK(memory_.Put("p/r/latest", latest.dump(), Precondition::kNone, {}).status());
  absl::Status st = Fetch().status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("newer ckptd"));
  // A field it does not know is fine.
  nlohmann::json m = nlohmann::json::parse(*memory_.Get("p/r/step_7.manifest.json", std::nullopt));
  m["replicas"] = {"node-2"};
  ASSERT_OK(memory_.Put("p/r/step_7.manifest.json", m.dump(), Precondition::kNone, {}).status());
  ASSERT_OK(Fetch(7).status());
}

TEST_F(FetchTest, AStoreThatFailsMidDownloadLeavesNothing) {
  store_.Add({.op = StoreOp::kGet, .nth = 4});
  absl::Status st = Fetch(7).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Placed(), IsEmpty());
}

}  // namespace
}  // namespace ckptd::tier
