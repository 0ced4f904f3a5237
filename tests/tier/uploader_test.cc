// The uploader against MemoryStore, with FaultStore between them: a step
// goes up whole and in order whatever the store does (fails every Nth call,
// refuses, stalls, keeps a truncated body, forgets an upload, lists late),
// and nothing the store holds ever names bytes other than the node's.
#include "daemon/tier/uploader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "daemon/base/strings.h"
#include "daemon/storage/file_names.h"
#include "daemon/tier/fault_store.h"
#include "daemon/tier/memory_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/tier/tier_fixtures.h"

namespace ckptd::tier {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::kTestPartSize;
using ::testing::Not;

// The runs above the tier, as the replication layer would answer.
class FakeRuns final : public TierRuns {
 public:
  std::optional<std::string> PrefixOf(const std::string&) const override { return "p"; }
  std::optional<RemoteRules> RulesOf(const std::string&) const override { return rules; }
  RemoteRules rules{.prefix = "p"};
};

class Events final : public UploadObserver {
 public:
  void OnUploadEvent(const UploadEvent& e) override {
    absl::MutexLock lock(&mu_);
    events_.push_back(e);
  }
  bool Seen(uint64_t step, UploadEventType type) {
    absl::MutexLock lock(&mu_);
    for (const UploadEvent& e : events_) {
      if (e.step == step && e.type == type) return true;
    }
    return false;
  }
  // The first event for `step` of `type`, waiting up to 20 s.
  std::optional<UploadEvent> WaitFor(uint64_t step, UploadEventType type) {
    absl::MutexLock lock(&mu_);
    auto found = [&] {
      for (const UploadEvent& e : events_) {
        if (e.step == step && e.type == type) return true;
      }
      return false;
    };
    mu_.AwaitWithTimeout(absl::Condition(&found), absl::Seconds(20));
    for (const UploadEvent& e : events_) {
      if (e.step == step && e.type == type) return e;
    }
    return std::nullopt;
  }

 private:
  absl::Mutex mu_;
  std::vector<UploadEvent> events_ ABSL_GUARDED_BY(mu_);
};

TierSettings Settings() {
  return {.prefix = "p",
          .part_size = kTestPartSize,
          .parallel_parts = 2,
          .max_memory_bytes = 4 * kTestPartSize,
          .retry_initial_s = 0.01,
          .retry_max_s = 0.05,
          .failed_retry_s = 0.3};
}

class UploaderTest : public ::testing::Test {
 protected:
  explicit UploaderTest(MemoryStore::Options options = testing::SmallParts())
      : memory_(options), store_(&memory_), run_(tmp_.Join("run")) {}

  std::unique_ptr<Uploader> Make(TierSettings settings = Settings()) {
    auto u = std::make_unique<Uploader>(env::Env::Default(), &store_, settings, &runs_, &events_);
    u->Start();
    return u;
  }
  storage::CheckpointRecord Commit(uint64_t step, uint64_t bytes = 3 * kTestPartSize + 1000) {
    auto r = run_.Commit(step, bytes, 'a');
    EXPECT_OK(r.status());
    return *r;
  }
  StepUpload Job(const storage::CheckpointRecord& r) {
    return {.run_id = "r", .run_dir = run_.run_dir(), .record = r};
  }
  std::string Stored(const std::string& key) {
    auto got = memory_.Get(key, std::nullopt);
    return got.ok() ? *got : "";
  }
  bool InStore(const std::string& key) { return memory_.Head(key)->has_value(); }
  // The run's state file names no step waiting or withdrawn.
  bool StateForgot() {
    auto text = env::ReadWholeFile(env::Env::Default(), run_.run_dir() + "/" + kUploadStateFile);
    auto state = UploadState::Parse(text.ok() ? *text : "{}", "state");
    return state.ok() && state->withdrawn.empty() && state->waiting.empty();
  }
  // Every manifest in the store names objects holding exactly the node's
  // bytes (the invariant each fault below must leave intact).
  void ExpectManifestsTrue() {
    for (const std::string& key : memory_.Keys()) {
      if (!key.ends_with(".manifest.json")) continue;
      auto m = StepManifest::Parse(Stored(key), key);
      ASSERT_OK(m.status());
      for (const RemoteFile& f : m->facts.files) {
        const std::string local = ckptd::testing::ReadFile(
            StrCat(run_.run_dir(), "/", storage::kWeightsDir, "/", f.name));
        EXPECT_EQ(Stored(f.key), local) << f.key;
        EXPECT_EQ(f.size, local.size());
      }
    }
  }

  ckptd::testing::TempDir tmp_;
  MemoryStore memory_;
  FaultStore store_;
  testing::RunFiles run_;
  FakeRuns runs_;
  Events events_;
};

TEST_F(UploaderTest, AStepGoesUpWholeWithItsManifestAndThenLatest) {
  auto uploader = Make();
  const storage::CheckpointRecord r = Commit(10);
  ASSERT_OK(uploader->Enqueue(Job(r)));
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));
  EXPECT_EQ(uploader->StateOf("r", 10), "uploaded");
  EXPECT_EQ(Stored("p/r/step_10.gguf"), ckptd::testing::ReadFile(r.model_path));
  EXPECT_EQ(Stored("p/r/step_10.train.gguf"), ckptd::testing::ReadFile(r.train_path));
  auto m = StepManifest::Parse(Stored("p/r/step_10.manifest.json"), "m");
  ASSERT_OK(m.status());
  EXPECT_EQ(m->facts.uuid, r.uuid);
  EXPECT_EQ(m->facts.part_size, kTestPartSize);
  ASSERT_EQ(m->facts.files.size(), 2u);
  EXPECT_EQ(m->facts.files[0].etag, (*memory_.Head("p/r/step_10.gguf"))->etag);
  EXPECT_THAT(m->facts.files[0].etag, HasSubstr("-4"));  // four parts
  auto latest = LatestRecord::Parse(Stored("p/r/latest"), "latest");
  ASSERT_OK(latest.status());
  EXPECT_EQ(latest->step, 10u);
  EXPECT_EQ(latest->manifest, "p/r/step_10.manifest.json");
  // An older step uploaded after a newer one leaves latest alone.
  ASSERT_OK(uploader->Enqueue(Job(Commit(20))));
  ASSERT_TRUE(events_.WaitFor(20, UploadEventType::kUploaded));
  EXPECT_EQ(LatestRecord::Parse(Stored("p/r/latest"), "l")->step, 20u);
  ExpectManifestsTrue();
}

TEST_F(UploaderTest, FailuresOnEveryThirdCallAreRetriedIntoTheSameBytes) {
  store_.Add({.nth = 1, .every = 3});  // UNAVAILABLE, transient
  auto uploader = Make();
  const storage::CheckpointRecord r = Commit(10);
  ASSERT_OK(uploader->Enqueue(Job(r)));
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));
  EXPECT_FALSE(events_.Seen(10, UploadEventType::kFailed));
  EXPECT_GT(store_.injected(), 3);
  EXPECT_TRUE(uploader->health().healthy);  // the last request succeeded
  EXPECT_TRUE(InStore("p/r/latest"));
  ExpectManifestsTrue();
}

TEST_F(UploaderTest, APermanentRefusalFailsTheStepWithoutAManifestAndItIsTriedAgain) {
  store_.Add({.op = StoreOp::kUploadPart,
              .nth = 2,
              .error = absl::PermissionDeniedError("HTTP 403 AccessDenied")});
  auto uploader = Make();
  ASSERT_OK(uploader->Enqueue(Job(Commit(10))));
  std::optional<UploadEvent> failed = events_.WaitFor(10, UploadEventType::kFailed);
  ASSERT_TRUE(failed);
  EXPECT_THAT(failed->error, HasSubstr("403"));
  EXPECT_FALSE(InStore("p/r/step_10.manifest.json"));
  EXPECT_FALSE(InStore("p/r/latest"));
  // Tried again after failed_retry_s: it goes up.
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));
  ExpectManifestsTrue();
}

TEST_F(UploaderTest, ABodyTheStoreKeptTruncatedNeverBecomesPartOfAStep) {
  // The train file (one PUT) arrives cut short, and the store says OK.
  store_.Add({.op = StoreOp::kPut,
              .key_contains = "train",
              .action = StoreFault::Action::kTruncate,
              .keep_bytes = 10});
  auto uploader = Make();
  ASSERT_OK(uploader->Enqueue(Job(Commit(10))));
  std::optional<UploadEvent> failed = events_.WaitFor(10, UploadEventType::kFailed);
  ASSERT_TRUE(failed);
  EXPECT_THAT(failed->error, HasSubstr("ETag"));
  EXPECT_FALSE(InStore("p/r/step_10.manifest.json"));
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));  // sent whole the next time
  ExpectManifestsTrue();
}

TEST_F(UploaderTest, APartTheStoreKeptTruncatedNeverBecomesPartOfAStep) {
  store_.Add({.op = StoreOp::kUploadPart,
              .nth = 4,  // the last part: no EntityTooSmall to catch it first
              .action = StoreFault::Action::kTruncate,
              .keep_bytes = 100});
  TierSettings s = Settings();
  s.parallel_parts = 1;  // parts in order: the 4th is the last
  auto uploader = Make(s);
  ASSERT_OK(uploader->Enqueue(Job(Commit(10))));
  std::optional<UploadEvent> failed = events_.WaitFor(10, UploadEventType::kFailed);
  ASSERT_TRUE(failed);
  EXPECT_FALSE(InStore("p/r/step_10.manifest.json"));
  EXPECT_FALSE(InStore("p/r/step_10.gguf"));
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));
  ExpectManifestsTrue();
}

// Over TLS (a store whose transport proves the bytes arrived: S3 over
// https), bodies go without the MD5 the ETag check needs, and a body or part
// the store kept cut short is still caught, by the size it then reports.
class UploaderOverTlsTest : public UploaderTest {
 protected:
  UploaderOverTlsTest()
      : UploaderTest(
            {.bucket = "test", .min_part_size = kTestPartSize, .transport_protects_bytes = true}) {}
};

TEST_F(UploaderOverTlsTest, BodiesGoWithoutMd5AndOneKeptCutShortIsStillCaught) {
  store_.Add({.op = StoreOp::kPut,
              .key_contains = "train",
              .action = StoreFault::Action::kTruncate,
              .keep_bytes = 10});
  store_.Add({.op = StoreOp::kUploadPart,
              .nth = 4,
              .action = StoreFault::Action::kTruncate,
              .keep_bytes = 100});
  TierSettings s = Settings();
  s.parallel_parts = 1;
  auto uploader = Make(s);
  ASSERT_OK(uploader->Enqueue(Job(Commit(10))));
  std::optional<UploadEvent> failed = events_.WaitFor(10, UploadEventType::kFailed);
  ASSERT_TRUE(failed);
  EXPECT_THAT(failed->error, HasSubstr("the store holds"));
  EXPECT_FALSE(InStore("p/r/step_10.manifest.json"));
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));
  ExpectManifestsTrue();
  const auto [with_md5, without_md5] = memory_.BodiesWithAndWithoutMd5();
  EXPECT_EQ(with_md5, 0);
  EXPECT_GT(without_md5, 4);
}

TEST_F(UploaderTest, AStalledRequestIsRetriedLikeAnyTransientFailure) {
  store_.Add(
      {.op = StoreOp::kUploadPart, .nth = 2, .action = StoreFault::Action::kHang, .hang_s = 0.3});
  auto uploader = Make();
  ASSERT_OK(uploader->Enqueue(Job(Commit(10))));
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));
  EXPECT_EQ(store_.injected(), 1);
  // Retried in place: the step never failed.
  EXPECT_FALSE(events_.Seen(10, UploadEventType::kFailed));
  ExpectManifestsTrue();
}

TEST_F(UploaderTest, AResumedUploadSendsOnlyThePartsNotDone) {
  const storage::CheckpointRecord r = Commit(10, 6 * kTestPartSize);
  const uint64_t parts = (r.model_bytes + kTestPartSize - 1) / kTestPartSize;  // the header: 7
  {
    TierSettings s = Settings();
    s.parallel_parts = 1;
    s.failed_retry_s = 3600;  // not again in this life
    store_.Add({.op = StoreOp::kUploadPart,
                .nth = 4,
                .error = absl::PermissionDeniedError("HTTP 403 AccessDenied")});
    auto uploader = Make(s);
    ASSERT_OK(uploader->Enqueue(Job(r)));
    ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kFailed));
    uploader->Stop();
  }
  store_.Clear();
  const int parts_before = store_.calls(StoreOp::kUploadPart);
  auto uploader = Make();
  ASSERT_OK(uploader->Recover("r", run_.run_dir(), {r}));
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));
  // Parts 1-3 were recorded done; the rest of the model file is sent now.
  EXPECT_EQ(store_.calls(StoreOp::kUploadPart) - parts_before, static_cast<int>(parts - 3));
  EXPECT_EQ(store_.calls(StoreOp::kCreateMultipart), 1);
  ExpectManifestsTrue();
}

TEST_F(UploaderTest, AnUploadTheStoreForgotIsStartedAgain) {
  const storage::CheckpointRecord r = Commit(10);
  {
    TierSettings s = Settings();
    s.failed_retry_s = 3600;
    store_.Add({.op = StoreOp::kUploadPart,
                .nth = 3,
                .error = absl::PermissionDeniedError("HTTP 403 AccessDenied")});
    auto uploader = Make(s);
    ASSERT_OK(uploader->Enqueue(Job(r)));
    ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kFailed));
    uploader->Stop();
  }
  store_.Clear();
  // The store drops the upload (an expiry rule, an operator's abort).
  auto open = memory_.ListMultipartUploads("p/r/");
  ASSERT_OK(open.status());
  ASSERT_EQ(open->size(), 1u);
  ASSERT_OK(memory_.AbortMultipartUpload((*open)[0].key, (*open)[0].upload_id));
  const int created = store_.calls(StoreOp::kCreateMultipart);
  auto uploader = Make();
  ASSERT_OK(uploader->Recover("r", run_.run_dir(), {r}));
  ASSERT_TRUE(events_.WaitFor(10, UploadEventType::kUploaded));
  EXPECT_EQ(store_.calls(StoreOp::kCreateMultipart) - created, 1);  // started again, once
  ExpectManifestsTrue();
}

TEST_F(UploaderTest, MultipartUploadsNoStateNamesAreAbortedAtRecovery) {
  ASSERT_OK(memory_.CreateMultipartUpload("p/r/step_5.gguf").status());
  ASSERT_OK(memory_.CreateMultipartUpload("p/other/step_5.gguf").status());  // another run's
  auto uploader = Make();
  ASSERT_OK(uploader->Recover("r", run_.run_dir(), {}));
  for (int i = 0; i < 200 && !memory_.ListMultipartUploads("p/r/")->empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_THAT(*memory_.ListMultipartUploads("p/r/"), IsEmpty());
  EXPECT_EQ(memory_.ListMultipartUploads("p/other/")->size(), 1u);
}

TEST_F(UploaderTest, RemoteRetentionAppliesTheRunsPolicyAfterEachUpload) {
  runs_.rules = {.prefix = "p", .remote_retention = true, .policy = {.keep_last = 1}};
  auto uploader = Make();
  for (uint64_t step : {1, 2, 3}) {
    ASSERT_OK(uploader->Enqueue(Job(Commit(step, 1000))));
    ASSERT_TRUE(events_.WaitFor(step, UploadEventType::kUploaded));
  }
  EXPECT_FALSE(InStore("p/r/step_1.manifest.json"));
  EXPECT_FALSE(InStore("p/r/step_1.gguf"));
  EXPECT_FALSE(InStore("p/r/step_2.train.gguf"));
  EXPECT_TRUE(InStore("p/r/step_3.manifest.json"));
  EXPECT_TRUE(InStore("p/r/step_3.gguf"));
  ExpectManifestsTrue();
}

TEST_F(UploaderTest, ARetentionPlanToleratesAListingThatLagsADelete) {
  auto uploader = Make();
  for (uint64_t step : {3, 4}) {
    ASSERT_OK(uploader->Enqueue(Job(Commit(step, 1000))));
    ASSERT_TRUE(events_.WaitFor(step, UploadEventType::kUploaded));
  }
  // Another daemon's retention deleted step 3's manifest; the index still
  // lists it. The plan skips it instead of failing.
  store_.LagListings(1);
  ASSERT_OK(store_.Delete({"p/r/step_3.manifest.json"}));
  ASSERT_EQ(store_.List("p/r/")->size(), 7u);  // two steps of three objects, latest: all listed
  auto plan = uploader->PlanRemote("r", /*apply=*/false, /*retry=*/false);
  ASSERT_OK(plan.status());
  ASSERT_EQ(plan->decisions.size(), 1u);
  EXPECT_EQ(plan->decisions[0].step, 4u);
}

TEST_F(UploaderTest, AManifestFromANewerCkptdIsReadOrKeptNeverMisread) {
  runs_.rules = {.prefix = "p", .remote_retention = true, .policy = {.keep_last = 1}};
  auto uploader = Make();
  ASSERT_OK(uploader->Enqueue(Job(Commit(1, 1000))));
  ASSERT_TRUE(events_.WaitFor(1, UploadEventType::kUploaded));
  // A field this version does not know: read as usual.
  nlohmann::json m = nlohmann::json::parse(Stored("p/r/step_1.manifest.json"));
  m["replicas"] = {"node-2"};
  ASSERT_OK(memory_.Put("p/r/step_1.manifest.json", m.dump(), Precondition::kNone, {}).status());
  auto read = uploader->RemoteManifest("r", 1);
  ASSERT_OK(read.status());
  EXPECT_EQ(read->unknown["replicas"], nlohmann::json({"node-2"}));
  // A format from the future: refused when read, and retention keeps it.
  m["format"] = 2;
  ASSERT_OK(memory_.Put("p/r/step_1.manifest.json", m.dump(), Precondition::kNone, {}).status());
  EXPECT_EQ(uploader->RemoteManifest("r", 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(uploader->Enqueue(Job(Commit(2, 1000))));
  ASSERT_TRUE(events_.WaitFor(2, UploadEventType::kUploaded));
  EXPECT_TRUE(InStore("p/r/step_1.manifest.json"));
  EXPECT_TRUE(InStore("p/r/step_1.gguf"));
  EXPECT_THAT(memory_.Keys(), Contains("p/r/step_2.manifest.json"));
  EXPECT_THAT(memory_.Keys(), Not(Contains("p/r/parts/")));
}

// Rank 1 of 3's part of `step`: a committed checkpoint renamed as a part
// (the uploader sends any file under its record's names).
storage::CheckpointRecord AsPart(storage::CheckpointRecord r) {
  const std::string dir = r.model_path.substr(0, r.model_path.rfind('/') + 1);
  r.rank = 1;
  r.world_size = 3;
  const std::string model = dir + storage::SplitFileName(r.step, r.rank, r.world_size);
  const std::string train = dir + storage::PartTrainFileName(r.step, r.rank, r.world_size);
  EXPECT_OK(env::Env::Default()->RenameFile(r.model_path, model));
  EXPECT_OK(env::Env::Default()->RenameFile(r.train_path, train));
  r.model_path = model;
  r.train_path = train;
  return r;
}

bool Eventually(const std::function<bool()>& done) {
  for (absl::Time until = absl::Now() + absl::Seconds(20); absl::Now() < until;
       absl::SleepFor(absl::Milliseconds(10))) {
    if (done()) return true;
  }
  return done();
}

// A part whose step is aborted while its PUT hangs across a partition: the
// node gives up on the PUT and does not send it again, but the store
// finishes the request after the node's first delete. The withdrawal's
// second delete takes it, and the state file forgets the step.
TEST_F(UploaderTest, AWithdrawnPartThatLandsAfterTheFirstDeleteIsDeletedAgain) {
  const storage::CheckpointRecord r = AsPart(Commit(7, 1000));
  const std::string key = StrCat("p/r/", storage::SplitFileName(7, 1, 3));
  store_.Add({.op = StoreOp::kPut,
              .key_contains = key,
              .action = StoreFault::Action::kLandLate,
              .hang_s = 0.3});
  TierSettings settings = Settings();
  settings.withdraw_recheck_s = 0.5;
  auto uploader = Make(settings);
  ASSERT_OK(uploader->Enqueue(Job(r)));
  ASSERT_TRUE(Eventually([&] { return store_.calls(StoreOp::kPut) >= 1; }));
  // The abort, as the node applies it: the local part goes, then Withdraw.
  ASSERT_OK(env::Env::Default()->RemoveFile(r.model_path));
  ASSERT_OK(env::Env::Default()->RemoveFile(r.train_path));
  uploader->Withdraw("r", run_.run_dir(), 7, 1, 3);
  ASSERT_TRUE(Eventually([&] { return store_.calls(StoreOp::kDelete) >= 1; }));
  ASSERT_EQ(store_.LandLate(), 1);
  ASSERT_TRUE(InStore(key));
  EXPECT_TRUE(Eventually([&] { return !InStore(key); })) << key << " left in the store";
  EXPECT_TRUE(Eventually([&] { return StateForgot(); })) << "the state file still names step 7";
  EXPECT_EQ(store_.calls(StoreOp::kPut), 1);  // the part was not sent again
  EXPECT_FALSE(events_.Seen(7, UploadEventType::kUploaded));
  EXPECT_THAT(memory_.Keys(), IsEmpty());
}

// A multipart part withdrawn before its completion: the upload is aborted,
// not completed, and nothing of it stays in the store or the state file.
TEST_F(UploaderTest, AMultipartPartWithdrawnMidwayLeavesNoUploadOpen) {
  const storage::CheckpointRecord r = AsPart(Commit(7));
  const std::string key = StrCat("p/r/", storage::SplitFileName(7, 1, 3));
  store_.Add({.op = StoreOp::kUploadPart,
              .key_contains = key,
              .action = StoreFault::Action::kHang,
              .hang_s = 0.3});
  TierSettings settings = Settings();
  settings.withdraw_recheck_s = 0.2;
  auto uploader = Make(settings);
  ASSERT_OK(uploader->Enqueue(Job(r)));
  ASSERT_TRUE(Eventually([&] { return store_.calls(StoreOp::kUploadPart) >= 1; }));
  uploader->Withdraw("r", run_.run_dir(), 7, 1, 3);
  EXPECT_TRUE(Eventually([&] { return memory_.ListMultipartUploads("p/r/")->empty(); }));
  EXPECT_TRUE(Eventually([&] { return StateForgot(); })) << "the state file still names step 7";
  EXPECT_EQ(store_.calls(StoreOp::kComplete), 0);
  EXPECT_THAT(memory_.Keys(), IsEmpty());
}

// A daemon stopped before a withdrawal's deletes: the state file names the
// keys, and the next start deletes them.
TEST_F(UploaderTest, AWithdrawalAStopCutShortIsDoneAtTheNextStart) {
  const std::string key = StrCat("p/r/", storage::SplitFileName(9, 1, 3));
  ASSERT_OK(memory_.Put(key, "landed", Precondition::kNone, {}).status());
  {
    Uploader stopped(env::Env::Default(), &store_, Settings(), &runs_, &events_);  // never started
    stopped.Withdraw("r", run_.run_dir(), 9, 1, 3);
  }
  ASSERT_TRUE(InStore(key));
  auto uploader = Make();
  ASSERT_OK(uploader->Recover("r", run_.run_dir(), {}, 1));
  EXPECT_TRUE(Eventually([&] { return !InStore(key); })) << key << " left in the store";
}

// A step saved anew after its withdrawal (the trainer resumed and saved the
// same step number): its upload is not deleted by the old withdrawal.
TEST_F(UploaderTest, AStepSavedAgainAfterItsWithdrawalKeepsItsUpload) {
  TierSettings settings = Settings();
  settings.withdraw_recheck_s = 0.2;
  {
    Uploader stopped(env::Env::Default(), &store_, settings, &runs_, &events_);
    stopped.Withdraw("r", run_.run_dir(), 7, 1, 3);
  }
  const storage::CheckpointRecord r = AsPart(Commit(7, 1000));
  auto uploader = Make(settings);
  ASSERT_OK(uploader->Recover("r", run_.run_dir(), {}, 1));
  ASSERT_OK(uploader->Enqueue(Job(r)));
  ASSERT_TRUE(events_.WaitFor(7, UploadEventType::kUploaded));
  absl::SleepFor(absl::Seconds(1));  // past any recheck the withdrawal would have made
  EXPECT_EQ(Stored(StrCat("p/r/", storage::SplitFileName(7, 1, 3))),
            ckptd::testing::ReadFile(r.model_path));
  EXPECT_TRUE(InStore("p/r/parts/step_7/rank-1.json"));
}

}  // namespace
}  // namespace ckptd::tier
