// Property test of retention on real run directories: random sequences of
// saves (with rollbacks), pins, unpins, policy changes and restarts. After
// every event retention runs, the invariants hold (latest names the highest
// step and exists, pinned checkpoints exist, nothing but grammar files in
// weights/), and the checkpoints left equal an independent reference model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "daemon/gguf/layout.h"
#include "daemon/scheduler/retention.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/file_names.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::scheduler {
namespace {

namespace fs = std::filesystem;
using policy::RetentionPolicy;

struct Facts {
  uint64_t bytes = 0;
  double time_s = 0;
  std::optional<double> loss;
};

// The reference: the rules as the README states them, written plainly.
std::set<uint64_t> ReferenceKeep(const RetentionPolicy& p, const std::map<uint64_t, Facts>& cps,
                                 const std::map<uint64_t, std::string>& pins, double now) {
  std::set<uint64_t> all, keep, protect;
  for (const auto& [s, f] : cps) all.insert(s);
  if (all.empty()) return {};
  protect.insert(*all.rbegin());
  for (const auto& [s, r] : pins) protect.insert(s);
  bool any = p.keep_last || p.keep_every_steps || p.keep_best || p.keep_time_interval_seconds > 0 ||
             p.max_bytes;
  if (!any) return all;
  keep = protect;
  std::vector<uint64_t> steps(all.begin(), all.end());
  for (size_t i = 0; i < steps.size(); ++i) {
    if (i + p.keep_last >= steps.size()) keep.insert(steps[i]);
    if (p.keep_every_steps && steps[i] % p.keep_every_steps == 0) keep.insert(steps[i]);
  }
  if (p.keep_best) {
    std::vector<std::pair<double, uint64_t>> ranked;
    for (const auto& [s, f] : cps) {
      if (f.loss && !std::isnan(*f.loss)) {
        ranked.push_back({p.mode == policy::MetricMode::kMin ? *f.loss : -*f.loss, s});
      } else if (p.missing_metric == policy::MissingMetric::kKeep) {
        keep.insert(s);
      }
    }
    std::sort(ranked.begin(), ranked.end(), [](auto a, auto b) {
      return a.first != b.first ? a.first < b.first : a.second > b.second;
    });
    for (size_t i = 0; i < ranked.size() && i < p.keep_best; ++i) keep.insert(ranked[i].second);
  }
  if (p.keep_time_interval_seconds > 0) {
    std::map<int64_t, std::pair<double, uint64_t>> best;
    for (const auto& [s, f] : cps) {
      if (p.keep_time_window_seconds > 0 && now - f.time_s > p.keep_time_window_seconds) continue;
      auto b = static_cast<int64_t>(std::floor(f.time_s / p.keep_time_interval_seconds));
      auto it = best.find(b);
      if (it == best.end() || std::pair(f.time_s, s) > it->second) best[b] = {f.time_s, s};
    }
    for (const auto& [b, ts] : best) keep.insert(ts.second);
  }
  if (p.max_bytes) {
    uint64_t total = 0;
    for (uint64_t s : keep) total += cps.at(s).bytes;
    for (uint64_t s : steps) {
      if (total <= p.max_bytes) break;
      if (keep.count(s) && !protect.count(s)) {
        keep.erase(s);
        total -= cps.at(s).bytes;
      }
    }
  }
  return keep;
}

RetentionPolicy RandomPolicy(std::mt19937_64& rng) {
  RetentionPolicy p;
  if (rng() % 2) p.keep_last = static_cast<uint32_t>(rng() % 4);
  if (rng() % 3 == 0) p.keep_every_steps = (rng() % 2 ? 20 : 50);
  if (rng() % 3 == 0) {
    p.keep_best = static_cast<uint32_t>(1 + rng() % 2);
    p.mode = rng() % 2 ? policy::MetricMode::kMin : policy::MetricMode::kMax;
    p.missing_metric = rng() % 2 ? policy::MissingMetric::kKeep : policy::MissingMetric::kIgnore;
  }
  if (rng() % 4 == 0) {
    p.keep_time_interval_seconds = static_cast<double>(20 + rng() % 60);
    if (rng() % 2) p.keep_time_window_seconds = static_cast<double>(100 + rng() % 200);
  }
  if (rng() % 4 == 0) p.max_bytes = 2000 + rng() % 6000;
  return p;
}

class RetentionPropertyTest : public ::testing::Test {
 protected:
  std::string Base() {
    return fs::is_directory("/dev/shm") ? "/dev/shm" : fs::temp_directory_path().string();
  }

  // Saves `step` with the given time and loss, bypassing gRPC.
  void Save(storage::RunDir* dir, uint64_t step, double time_s, std::optional<double> loss,
            bool with_train, std::mt19937_64& rng) {
    storage::SavePlan plan;
    plan.step = step;
    plan.direct_io = env::DirectIo::kOff;
    plan.model_metadata.Set("general.architecture", gguf::Value("llama"));
    plan.model_metadata.Set(std::string(storage::kKeyTimeUtc),
                            gguf::Value::String(fmt::format("1970-01-01T00:{:02d}:{:02d}.000Z",
                                                            static_cast<int>(time_s) / 60,
                                                            static_cast<int>(time_s) % 60)));
    if (loss) plan.model_metadata.Set("ckpt.metrics.loss", gguf::Value(*loss));
    uint64_t floats = 16 + rng() % 256;
    plan.tensors.push_back({{"w", gguf::TensorType::kF32, {floats}}, storage::TensorGroup::kModel});
    if (with_train)
      plan.tensors.push_back({{"m", gguf::TensorType::kF32, {8}}, storage::TensorGroup::kTrain});
    auto w =
        storage::CheckpointWriter::Create(env::Env::Default(), dir->weights_dir(), std::move(plan));
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->WriteData(std::string((*w)->data_bytes(), 'x')).ok());
    ASSERT_TRUE((*w)->Finish().ok());
    ASSERT_TRUE(dir->Commit(w->get(), storage::Overwrite::kYes).ok());
  }
};

TEST_F(RetentionPropertyTest, RandomHistoriesMatchTheReferenceModel) {
  constexpr int kSequences = 2000;
  constexpr int kEvents = 30;
  int events_checked = 0;
  for (int seq = 0; seq < kSequences; ++seq) {
    SCOPED_TRACE(::testing::Message() << "sequence " << seq);
    std::mt19937_64 rng(1000 + seq);
    testing::TempDir tmp;  // under $TMPDIR; the run itself lives on tmpfs when there is one
    std::string run_dir = fs::path(Base()) / fs::path(tmp.path()).filename();
    fs::create_directories(run_dir);
    auto dir = std::move(*storage::RunDir::Open(env::Env::Default(), run_dir, nullptr));
    auto pins = *storage::PinStore::Load(env::Env::Default(), run_dir);
    RetentionPolicy policy = RandomPolicy(rng);
    std::map<uint64_t, Facts> model;  // the reference's own state
    double clock = 0;
    uint64_t next_step = 10;

    for (int e = 0; e < kEvents; ++e) {
      SCOPED_TRACE(::testing::Message() << "event " << e << " policy " << policy::Describe(policy));
      unsigned kind = rng() % 10;
      if (kind < 6 || model.empty()) {  // save (sometimes a rollback of an older step)
        uint64_t step = next_step;
        if (kind == 0 && !model.empty()) {
          step = std::max<uint64_t>(1, next_step - 10 * (1 + rng() % 5));
        } else {
          next_step += 10 * (1 + rng() % 3);
        }
        clock += static_cast<double>(5 + rng() % 40);
        std::optional<double> loss;
        if (rng() % 5) loss = static_cast<double>(rng() % 50) / 10.0;
        Save(dir.get(), step, clock, loss, rng() % 3 == 0, rng);
        if (HasFailure()) return;
        model[step] = {dir->Find(step)->model_bytes + dir->Find(step)->train_bytes,
                       std::floor(clock), loss};
      } else if (kind == 6) {  // pin an existing step
        auto it = std::next(model.begin(), static_cast<long>(rng() % model.size()));
        ASSERT_TRUE(pins.Pin(it->first, fmt::format("pin {}", e)).ok());
      } else if (kind == 7 && !pins.pins().empty()) {  // unpin
        auto it = std::next(pins.pins().begin(), static_cast<long>(rng() % pins.pins().size()));
        ASSERT_TRUE(pins.Unpin(it->first).ok());
      } else if (kind == 8) {
        policy = RandomPolicy(rng);
      } else {  // restart: recovery and catalog from headers, pins from disk
        dir = std::move(*storage::RunDir::Open(env::Env::Default(), run_dir, nullptr));
        pins = *storage::PinStore::Load(env::Env::Default(), run_dir);
      }
      auto outcome = ApplyRetention(dir.get(), pins, policy, {}, clock, DryRun::kNo);
      ASSERT_TRUE(outcome.ok()) << outcome.status();

      std::set<uint64_t> want = ReferenceKeep(policy, model, pins.pins(), clock);
      for (auto it = model.begin(); it != model.end();)
        it = want.count(it->first) ? std::next(it) : model.erase(it);

      std::set<uint64_t> have, on_disk;
      for (const auto& [step, r] : dir->catalog()) have.insert(step);
      for (const auto& entry : fs::directory_iterator(dir->weights_dir())) {
        auto parsed = storage::ParseFileName(entry.path().filename().string());
        ASSERT_TRUE(parsed) << "stray file " << entry.path();
        if (parsed->kind == storage::FileKind::kModel) on_disk.insert(parsed->step);
        if (parsed->kind == storage::FileKind::kTrain) {
          ASSERT_TRUE(fs::exists(dir->weights_dir() + "/" + storage::ModelFileName(parsed->step)));
        }
        ASSERT_NE(parsed->kind, storage::FileKind::kModelTemp);
      }
      ASSERT_EQ(have, want);
      ASSERT_EQ(on_disk, want);
      ASSERT_EQ(fs::read_symlink(dir->weights_dir() + "/latest"),
                storage::ModelFileName(*want.rbegin()));
      for (const auto& [step, reason] : pins.pins())
        ASSERT_TRUE(have.count(step)) << "pinned " << step;
      ++events_checked;
    }
    fs::remove_all(run_dir);
  }
  EXPECT_EQ(events_checked, kSequences * kEvents);
}

}  // namespace
}  // namespace ckptd::scheduler
