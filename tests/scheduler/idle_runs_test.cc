// Idle runs give their settings' memory back and a save reads them back:
// what is unloaded, what stays, what counts as activity, what blocks it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "daemon/base/time.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_pipeline.h"
#include "tests/scheduler/run_test_peer.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::scheduler {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using Peer = RunTestPeer;

RunSettings Settings(const std::string& description) {
  RunSettings s;
  s.model_metadata.Set("general.description", gguf::Value::String(description));
  s.provenance.Set("ckpt.trainer.name", gguf::Value::String("t"));
  s.schedule = policy::Schedule{.every_steps = 7};
  s.exports.push_back({.name = "half", .profile = std::make_shared<exports::Profile>()});
  return s;
}

class IdleRunsTest : public ::testing::Test, public SettingsStore {
 protected:
  IdleRunsTest()
      : registry_(env::Env::Default(), {std::filesystem::canonical(tmp_.path()).string()},
                  policy::Schedule{.every_steps = 1000}, DaemonFacts{}) {
    registry_.SetSettingsStore(this);
    bool resumed = false;
    auto run = registry_.Open("r", "", Settings("opened"), &resumed);
    EXPECT_OK(run.status());
    run_ = *run;
  }

  absl::StatusOr<RunSettings> Reload(const scheduler::Run&) override {
    ++reloads_;
    if (!reload_error_.ok()) return reload_error_;
    return Settings("from disk");
  }
  void Unloaded(const scheduler::Run& run) override { unloaded_.push_back(run.id()); }

  std::string Description() {
    absl::MutexLock lock(&Peer::mu(*run_));
    const gguf::Value* v = Peer::settings(*run_)->model_metadata.Find("general.description");
    const std::string* text = v == nullptr ? nullptr : v->get_if<std::string>();
    return text == nullptr ? "" : *text;
  }
  bool Unloaded() {
    absl::MutexLock lock(&Peer::mu(*run_));
    return Peer::settings_unloaded(*run_);
  }
  absl::Status Ensure() {
    absl::MutexLock save(&Peer::save_mu(*run_));
    return registry_.EnsureSettings(*run_);
  }

  testing::TempDir tmp_;
  RunRegistry registry_;
  std::shared_ptr<scheduler::Run> run_;
  int reloads_ = 0;
  absl::Status reload_error_;
  std::vector<std::string> unloaded_;
};

TEST_F(IdleRunsTest, AnIdleRunKeepsItsPoliciesAndNamesButNotItsMetadata) {
  const double now = NowSeconds();
  EXPECT_THAT(registry_.UnloadIdle(60, now + 30), IsEmpty());  // opened just now
  EXPECT_THAT(registry_.UnloadIdle(60, now + 61), ElementsAre("r"));
  EXPECT_THAT(unloaded_, ElementsAre("r"));
  EXPECT_TRUE(Unloaded());
  {
    absl::MutexLock lock(&Peer::mu(*run_));
    const RunSettings& s = *Peer::settings(*run_);
    EXPECT_EQ(s.model_metadata.size(), 0u);
    EXPECT_EQ(s.provenance.size(), 0u);
    ASSERT_EQ(s.exports.size(), 1u);
    EXPECT_EQ(s.exports[0].name, "half");  // listings still name it
    EXPECT_EQ(s.exports[0].profile, nullptr);
    EXPECT_EQ(registry_.EffectiveSchedule(*run_).every_steps, 7u);  // ShouldSave unchanged
  }
  EXPECT_THAT(registry_.UnloadIdle(60, now + 120), IsEmpty());  // once
  EXPECT_THAT(unloaded_, ElementsAre("r"));
}

TEST_F(IdleRunsTest, ASaveReadsTheSettingsBackOnce) {
  ASSERT_THAT(registry_.UnloadIdle(60, NowSeconds() + 61), ElementsAre("r"));
  ASSERT_OK(Ensure());
  EXPECT_EQ(reloads_, 1);
  EXPECT_FALSE(Unloaded());
  EXPECT_EQ(Description(), "from disk");
  ASSERT_OK(Ensure());  // resident: no read
  EXPECT_EQ(reloads_, 1);
}

TEST_F(IdleRunsTest, SettingsThatCannotBeReadBackSayToReopen) {
  ASSERT_THAT(registry_.UnloadIdle(60, NowSeconds() + 61), ElementsAre("r"));
  reload_error_ = absl::NotFoundError("run.json: no such file");
  absl::Status st = Ensure();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("run.json: no such file"));
  EXPECT_THAT(st.message(), HasSubstr("call OpenRun again"));
  EXPECT_TRUE(Unloaded());
  // Reopening gives it settings without a read.
  bool resumed = false;
  ASSERT_OK(registry_.Open("r", "", Settings("reopened"), &resumed).status());
  EXPECT_FALSE(Unloaded());
  ASSERT_OK(Ensure());
  EXPECT_EQ(reloads_, 1);
  EXPECT_EQ(Description(), "reopened");
}

TEST_F(IdleRunsTest, ShouldSaveCountsAsActivity) {
  {
    absl::MutexLock lock(&Peer::mu(*run_));
    Peer::reference_time_s(*run_) = Peer::last_active_s(*run_) = 0;  // long ago
  }
  SavePipeline pipeline(&registry_, nullptr);
  ASSERT_OK(pipeline.ShouldSave("r", 1).status());
  const double now = NowSeconds();
  EXPECT_THAT(registry_.UnloadIdle(60, now + 30), IsEmpty());
  EXPECT_THAT(registry_.UnloadIdle(60, now + 61), ElementsAre("r"));
}

// An open run nobody uses (its trainer went away without CloseRun, or it
// was only imported) is listed idle, and open again at its next call; a
// finished run stays finished.
TEST_F(IdleRunsTest, AnOpenRunNobodyUsesIsIdleUntilItsNextCall) {
  auto state = [&] {
    absl::MutexLock lock(&Peer::mu(*run_));
    return Peer::state(*run_);
  };
  const double now = NowSeconds();
  EXPECT_EQ(state(), RunState::kOpen);
  registry_.UnloadIdle(60, now + 30);
  EXPECT_EQ(state(), RunState::kOpen);
  registry_.UnloadIdle(60, now + 61);
  EXPECT_EQ(state(), RunState::kIdle);
  SavePipeline pipeline(&registry_, nullptr);
  ASSERT_OK(pipeline.ShouldSave("r", 1).status());
  EXPECT_EQ(state(), RunState::kOpen);
  // Idle again later, even though its settings are already unloaded.
  registry_.UnloadIdle(60, NowSeconds() + 61);
  EXPECT_EQ(state(), RunState::kIdle);
  {
    absl::MutexLock lock(&Peer::mu(*run_));
    Peer::state(*run_) = RunState::kFinished;
    Peer::MarkActive(*run_, NowSeconds());
  }
  registry_.UnloadIdle(60, NowSeconds() + 61);
  EXPECT_EQ(state(), RunState::kFinished);
}

TEST_F(IdleRunsTest, ASaveInProgressKeepsTheSettings) {
  const double later = NowSeconds() + 61;
  {
    absl::MutexLock save(&Peer::save_mu(*run_));  // a save holds it from admission to commit
    EXPECT_THAT(registry_.UnloadIdle(60, later), IsEmpty());
  }
  {
    absl::MutexLock lock(&Peer::mu(*run_));
    Peer::in_flight(*run_).insert(5);  // a step being written
  }
  EXPECT_THAT(registry_.UnloadIdle(60, later), IsEmpty());
  {
    absl::MutexLock lock(&Peer::mu(*run_));
    Peer::in_flight(*run_).clear();
  }
  EXPECT_THAT(registry_.UnloadIdle(60, later), ElementsAre("r"));
}

TEST_F(IdleRunsTest, ARunWithTheDaemonsDefaultsHasNothingToUnload) {
  for (const auto& run : registry_.List()) {
    absl::MutexLock lock(&Peer::mu(*run));
    Peer::settings(*run).reset();  // as a run found on disk and never opened
  }
  EXPECT_THAT(registry_.UnloadIdle(60, NowSeconds() + 61), IsEmpty());
}

}  // namespace
}  // namespace ckptd::scheduler
