// Power loss at every env call of the commit path (leveldb's fault-injection
// discipline, with reordered directory updates): for each scenario, a save
// is cut off after its Kth mutating call, every subset of the directory
// changes not yet fsynced is allowed to survive, and ARCHITECTURE.md's invariants
// are checked on the raw disk and again after recovery:
//   1. every step_N.gguf present is complete (byte-equal to a verified version)
//   2. `latest`, when present, names a complete checkpoint; after recovery, the newest
//   4. the other checkpoints, and the saved step's previous version with its
//      training state, are exactly as they were unless the new version replaced them whole
//   and an acknowledged save is on disk, `latest` and training state included.
// Removing any fsync (file or directory) of the recipe makes this test fail.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <optional>

#include "daemon/base/status.h"
#include "daemon/gguf/reader.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/run_dir.h"
#include "tests/testing/power_loss_env.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::storage {
namespace {

namespace fs = std::filesystem;

// Deterministic content: the same plan and fill give the same bytes.
SavePlan Plan(uint64_t step, bool with_train) {
  SavePlan plan;
  plan.step = step;
  plan.direct_io = env::DirectIo::kOff;
  plan.model_metadata.Set(std::string(kKeyStep), gguf::Value(step));
  plan.tensors.push_back({{"w", gguf::TensorType::kF32, {256}}, TensorGroup::kModel});
  if (with_train) {
    plan.tensors.push_back({{"adam.m", gguf::TensorType::kF32, {64}}, TensorGroup::kTrain});
    plan.train_metadata.Set(std::string(kKeyStep), gguf::Value(step));  // as a save writes it
  }
  return plan;
}

absl::StatusOr<CheckpointRecord> Save(env::Env* env, RunDir* dir, uint64_t step, bool with_train,
                                      char fill, Overwrite ow) {
  CKPTD_TRY(dir->CheckCanSave(step, ow));
  CKPTD_ASSIGN_OR_RETURN(auto w,
                         CheckpointWriter::Create(env, dir->weights_dir(), Plan(step, with_train)));
  CKPTD_TRY(w->WriteData(std::string(w->data_bytes(), fill)));
  CKPTD_TRY(w->Finish());
  return dir->Commit(w.get(), ow);
}

// Name -> bytes (or "-> target" for a symlink) of a weights/ folder.
using Files = std::map<std::string, std::string>;

Files Snapshot(const std::string& dir) {
  Files out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename();
    out[name] = e.is_symlink() ? "-> " + fs::read_symlink(e.path()).string()
                               : ckptd::testing::ReadFile(e.path());
  }
  return out;
}

std::optional<std::string> Get(const Files& f, const std::string& name) {
  auto it = f.find(name);
  if (it == f.end()) return std::nullopt;
  return it->second;
}

struct Existing {
  uint64_t step;
  bool train;
};

struct Scenario {
  const char* name;
  std::vector<Existing> existing;  // committed and durable before the save
  uint64_t step;
  bool train;
};

class PowerLossTest : public ::testing::TestWithParam<Scenario> {
 protected:
  // A run dir with the scenario's existing checkpoints, written once and copied per case.
  void SetUp() override {
    const char* shm = "/dev/shm";
    root_ =
        fs::exists(shm) ? fs::path(shm) / fs::path(tmp_.path()).filename() : fs::path(tmp_.path());
    fs::create_directories(root_);
    const std::string tmpl = (root_ / "template").string();
    {
      auto dir = RunDir::Open(env::Env::Default(), tmpl, nullptr);
      ASSERT_OK(dir.status());
      for (const Existing& e : GetParam().existing) {
        ASSERT_OK(
            Save(env::Env::Default(), dir->get(), e.step, e.train, 'a', Overwrite::kYes).status());
      }
    }
    before_ = Snapshot(tmpl + "/weights");
    // The new version, saved without faults, counting its env calls.
    const std::string ref = (root_ / "reference").string();
    fs::copy(tmpl, ref, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
    ckptd::testing::PowerLossEnv env(env::Env::Default());
    auto dir = RunDir::Open(&env, ref, nullptr);
    ASSERT_OK(dir.status());
    ASSERT_OK(env.Track(ref + "/weights"));
    ASSERT_OK(
        Save(&env, dir->get(), GetParam().step, GetParam().train, 'b', Overwrite::kYes).status());
    calls_ = env.calls();
    after_ = Snapshot(ref + "/weights");
    // The reference itself verifies.
    auto model = ReadGgufHeader(env::Env::Default(), ref + "/weights/" + Model());
    ASSERT_OK(model.status());
    auto src = env::Env::Default()->OpenForRead(ref + "/weights/" + Model());
    ASSERT_OK(gguf::Verify(**src, *model).status());
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::string Model() const { return ModelFileName(GetParam().step); }
  std::string Train() const { return TrainFileName(GetParam().step); }
  uint64_t Newest() const {
    uint64_t n = GetParam().step;
    for (const Existing& e : GetParam().existing) n = std::max(n, e.step);
    return n;
  }

  // Invariants 1 and 2 on what the crash left, before any recovery.
  void CheckRaw(const Files& raw, bool acknowledged, const std::string& where) {
    for (const auto& [name, bytes] : raw) {
      auto parsed = ParseFileName(name);
      if (!parsed || parsed->kind != FileKind::kModel) continue;
      EXPECT_TRUE(bytes == Get(before_, name) || bytes == Get(after_, name))
          << where << ": " << name << " is not a complete checkpoint (" << bytes.size()
          << " bytes)";
    }
    if (auto latest = Get(raw, "latest")) {
      EXPECT_TRUE(raw.contains(latest->substr(3))) << where << ": latest dangles: " << *latest;
    }
    if (acknowledged) {
      // Durable once acknowledged: the files, the training state and `latest`.
      EXPECT_EQ(Get(raw, Model()), Get(after_, Model())) << where << ": acknowledged save lost";
      EXPECT_EQ(Get(raw, Train()), Get(after_, Train()))
          << where << ": acknowledged save's training state lost or stale";
      if (Newest() == GetParam().step) {
        EXPECT_EQ(Get(raw, "latest"), "-> " + Model()) << where << ": latest not durable";
      }
    }
  }

  // After recovery: nothing temporary, latest at the newest, and each step
  // either its old version whole (train file included) or its new one.
  void CheckRecovered(const Files& got, const std::string& where) {
    for (const auto& [name, bytes] : got) {
      auto parsed = ParseFileName(name);
      ASSERT_TRUE(parsed) << where << ": stray file " << name;
      EXPECT_TRUE(parsed->kind == FileKind::kModel || parsed->kind == FileKind::kTrain ||
                  parsed->kind == FileKind::kLatest)
          << where << ": recovery left " << name;
    }
    for (const Existing& e : GetParam().existing) {
      if (e.step == GetParam().step) continue;
      EXPECT_EQ(Get(got, ModelFileName(e.step)), Get(before_, ModelFileName(e.step))) << where;
      EXPECT_EQ(Get(got, TrainFileName(e.step)), Get(before_, TrainFileName(e.step))) << where;
    }
    auto model = Get(got, Model());
    const bool is_new = model == Get(after_, Model());
    const Files& version = is_new ? after_ : before_;
    EXPECT_EQ(model, Get(version, Model())) << where;
    EXPECT_EQ(Get(got, Train()), Get(version, Train()))
        << where << ": step " << GetParam().step << " (" << (is_new ? "new" : "old")
        << " version) lost or mixed up its training state";
    uint64_t newest = 0;
    bool any = false;
    for (const auto& [name, bytes] : got) {
      if (auto p = ParseFileName(name); p && p->kind == FileKind::kModel) {
        newest = std::max(newest, p->step);
        any = true;
      }
    }
    if (any) {
      EXPECT_EQ(Get(got, "latest"), "-> " + ModelFileName(newest)) << where;
    } else {
      EXPECT_FALSE(got.contains("latest")) << where;
    }
  }

  ckptd::testing::TempDir tmp_;
  fs::path root_;
  Files before_, after_;
  uint64_t calls_ = 0;
};

TEST_P(PowerLossTest, InvariantsHoldAfterACrashAtEveryCall) {
  const Scenario& s = GetParam();
  ASSERT_GT(calls_, 5u);
  size_t cases = 0;
  for (uint64_t k = 1; k <= calls_; ++k) {
    // Which pending changes exist at this cut is known after the first run.
    size_t pending = 0;
    for (uint64_t mask = 0; mask < (uint64_t{1} << pending) || mask == 0; ++mask) {
      const std::string where = fmt::format("{}: power cut after call {} of {}, surviving {:#x}",
                                            s.name, k, calls_, mask);
      const std::string run = (root_ / fmt::format("k{}m{}", k, mask)).string();
      fs::copy(root_ / "template", run,
               fs::copy_options::recursive | fs::copy_options::copy_symlinks);
      ckptd::testing::PowerLossEnv env(env::Env::Default());
      bool acknowledged = false;
      {
        auto dir = RunDir::Open(&env, run, nullptr);
        ASSERT_OK(dir.status());
        ASSERT_OK(env.Track(run + "/weights"));
        env.CutPowerAfter(k);
        acknowledged = Save(&env, dir->get(), s.step, s.train, 'b', Overwrite::kYes).ok();
        EXPECT_EQ(acknowledged, k == calls_) << where;
        pending = env.pending();
        ASSERT_LE(pending, 12u) << where;
      }
      ASSERT_OK(env.Crash([&](size_t i) { return (mask >> i) & 1; }));
      CheckRaw(Snapshot(run + "/weights"), acknowledged, where);
      {
        RecoveryReport report;
        auto dir = RunDir::Open(env::Env::Default(), run, &report);
        ASSERT_OK(dir.status()) << where;
        EXPECT_TRUE(report.quarantined.empty())
            << where << ": " << report.quarantined[0].from << ": " << report.quarantined[0].reason;
      }
      CheckRecovered(Snapshot(run + "/weights"), where);
      fs::remove_all(run);
      ++cases;
      if (HasFailure()) return;
    }
  }
  RecordProperty("cases", static_cast<int>(cases));
}

INSTANTIATE_TEST_SUITE_P(
    CommitPath, PowerLossTest,
    ::testing::Values(Scenario{"first step with train", {}, 1, true},
                      Scenario{"fresh step", {{1, true}}, 2, false},
                      Scenario{"fresh step with train", {{1, true}}, 2, true},
                      Scenario{"overwrite train over train", {{1, true}, {2, true}}, 2, true},
                      Scenario{"overwrite no train over train", {{1, true}, {2, true}}, 2, false},
                      Scenario{"overwrite train over none", {{1, false}, {2, false}}, 2, true},
                      Scenario{"overwrite an older step", {{1, true}, {2, true}}, 1, true}),
    [](const auto& info) {
      std::string n = info.param.name;
      for (char& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return n;
    });

// Deleting a step (retention, the disk guard, `ckptctl delete`) cut off at
// every call, every subset of its pending directory changes surviving:
// after recovery the step is whole (its train file tied to it) or gone
// with every file saved with it, nothing lands in quarantine, and step 2
// is untouched. One durable batch of unlinks fails this: a surviving subset
// can leave the model file without its train file (a step that silently
// lost its training state) or an orphan train file.
TEST(PowerLossDeleteTest, ADeletionCutShortLeavesTheWholeStepOrNothingOfIt) {
  ckptd::testing::TempDir tmp;
  const std::string tmpl = tmp.Join("template");
  {
    auto dir = RunDir::Open(env::Env::Default(), tmpl, nullptr);
    ASSERT_OK(dir.status());
    ASSERT_OK(Save(env::Env::Default(), dir->get(), 1, true, 'a', Overwrite::kNo).status());
    ASSERT_OK(Save(env::Env::Default(), dir->get(), 2, true, 'b', Overwrite::kNo).status());
  }
  const Files before = Snapshot(tmpl + "/weights");
  // One deletion cut after call k (0: never), `keep` choosing the pending
  // changes that survive; returns how many calls it made and left pending.
  auto cut = [&](const std::string& run, uint64_t k, uint64_t keep, size_t* pending) -> uint64_t {
    fs::copy(tmpl, run, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
    ckptd::testing::PowerLossEnv env(env::Env::Default());
    auto dir = RunDir::Open(&env, run, nullptr);
    EXPECT_OK(dir.status());
    EXPECT_OK(env.Track(run + "/weights"));
    const uint64_t start = env.calls();
    env.CutPowerAfter(k);
    const bool ok = (*dir)->Delete(1).ok();
    *pending = env.pending();
    EXPECT_TRUE(!ok || *pending == 0) << run << ": a deletion that returned OK is not durable";
    dir->reset();
    EXPECT_OK(env.Crash([&](size_t i) { return (keep >> i) & 1; }));
    return env.calls() - start;
  };
  size_t pending = 0;
  const uint64_t calls = cut(tmp.Join("count"), 0, 0, &pending);
  ASSERT_GT(calls, 0u);
  size_t cases = 0;
  for (uint64_t k = 1; k <= calls; ++k) {
    pending = 0;
    for (uint64_t mask = 0; mask < (uint64_t{1} << pending) || mask == 0; ++mask) {
      const std::string where =
          fmt::format("power cut after call {} of {}, surviving {:#x}", k, calls, mask);
      const std::string run = tmp.Join(fmt::format("k{}m{}", k, mask));
      cut(run, k, mask, &pending);
      ASSERT_LE(pending, 12u) << where;
      RecoveryReport report;
      ASSERT_OK(RunDir::Open(env::Env::Default(), run, &report).status()) << where;
      EXPECT_TRUE(report.quarantined.empty())
          << where << ": " << report.quarantined[0].from << ": " << report.quarantined[0].reason;
      const Files got = Snapshot(run + "/weights");
      EXPECT_EQ(Get(got, "step_2.gguf"), Get(before, "step_2.gguf")) << where;
      EXPECT_EQ(Get(got, "step_2.train.gguf"), Get(before, "step_2.train.gguf")) << where;
      if (got.contains("step_1.gguf")) {
        EXPECT_EQ(Get(got, "step_1.gguf"), Get(before, "step_1.gguf")) << where;
        EXPECT_EQ(Get(got, "step_1.train.gguf"), Get(before, "step_1.train.gguf"))
            << where << ": step 1 survived without its training state";
      } else {
        EXPECT_FALSE(got.contains("step_1.train.gguf")) << where << ": an orphan train file";
      }
      EXPECT_EQ(got.size(), got.contains("step_1.gguf") ? 5u : 3u) << where << ": stray files";
      fs::remove_all(run);
      ++cases;
      if (HasFailure()) return;
    }
  }
  EXPECT_GE(cases, calls);
}

}  // namespace
}  // namespace ckptd::storage
