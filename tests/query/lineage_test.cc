// The lineage graph keyed by file identity: equal content (runs with the
// same seed, an export with its checkpoint's tensors) is linked as "same
// content", never drawn as parent and child; parents resolve within the run
// first; deleted checkpoints and unknown base models get nodes of their own.
#include "daemon/query/lineage.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::query {
namespace {

using Node = v1::LineageNode;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

Node Checkpoint(const std::string& run, uint64_t step, const std::string& uuid,
                const std::string& parent_uuid, const std::string& time = "2026-01-01T00:00:00Z") {
  Node n;
  n.set_id(CheckpointNodeId(run, step));
  n.set_kind(Node::KIND_CHECKPOINT);
  n.set_run_id(run);
  n.set_step(step);
  n.set_uuid(uuid);
  n.set_parent_uuid(parent_uuid);
  n.set_time_utc(time);
  return n;
}

Node Export(const std::string& run, uint64_t step, const std::string& name, const std::string& uuid,
            const std::string& ckpt_uuid) {
  Node n;
  n.set_id(ExportNodeId(run, step, name));
  n.set_kind(Node::KIND_EXPORT);
  n.set_run_id(run);
  n.set_step(step);
  n.set_name(name);
  n.set_uuid(uuid);
  n.set_parent_uuid(ckpt_uuid);
  n.set_parent_id(CheckpointNodeId(run, step));
  return n;
}

const Node& ById(const std::vector<Node>& g, const std::string& id) {
  for (const Node& n : g) {
    if (n.id() == id) return n;
  }
  static const Node kNone;
  ADD_FAILURE() << "no node " << id;
  return kNone;
}

std::vector<std::string> Ids(const v1::Lineage& l) {
  std::vector<std::string> out;
  for (const Node& n : l.nodes()) out.push_back(n.id());
  return out;
}

std::vector<std::string> SameContent(const Node& n) {
  return {n.same_content().begin(), n.same_content().end()};
}

// Two runs with the same seed: every uuid equal, step for step.
std::vector<Node> TwinRuns() {
  std::vector<Node> files;
  for (const std::string run : {"a", "b"}) {
    files.push_back(Checkpoint(run, 100, "u100", "base"));
    files.push_back(Checkpoint(run, 200, "u200", "u100"));
    files.push_back(Export(run, 200, "hf-llama", "x200", "u200"));
  }
  return files;
}

TEST(LineageTest, RunsWithEqualContentAreTwoLanesLinkedAsSameContent) {
  auto g = CompleteGraph(TwinRuns(), {{"a", "base"}, {"b", "base"}});
  // Each run's checkpoints chain within the run, from the one base node.
  EXPECT_EQ(ById(g, "a/step_100").parent_id(), "base:base");
  EXPECT_EQ(ById(g, "b/step_100").parent_id(), "base:base");
  EXPECT_EQ(ById(g, "a/step_200").parent_id(), "a/step_100");
  EXPECT_EQ(ById(g, "b/step_200").parent_id(), "b/step_100");
  EXPECT_EQ(ById(g, "b/step_200.hf-llama").parent_id(), "b/step_200");
  // Equal content is a link, both ways.
  EXPECT_THAT(SameContent(ById(g, "a/step_200")), ElementsAre("b/step_200"));
  EXPECT_THAT(SameContent(ById(g, "b/step_200.hf-llama")), ElementsAre("a/step_200.hf-llama"));
  EXPECT_THAT(SameContent(ById(g, "base:base")), IsEmpty());
  // Run b's own lane is all of b, once each, and none of a.
  auto b = Focus(g, "", "b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT(Ids(*b), ElementsAre("base:base", "b/step_100", "b/step_200", "b/step_200.hf-llama"));
  // A uuid names every file holding it: both runs' exports, each once.
  auto x = Focus(g, "x200", "");
  ASSERT_TRUE(x.ok());
  EXPECT_THAT(Ids(*x),
              UnorderedElementsAre("base:base", "a/step_100", "a/step_200", "a/step_200.hf-llama",
                                   "b/step_100", "b/step_200", "b/step_200.hf-llama"));
}

TEST(LineageTest, AnExportWithItsCheckpointsTensorsHangsUnderIt) {
  std::vector<Node> files{Checkpoint("r", 1, "u1", "", "t1"), Export("r", 1, "f32", "u1", "u1")};
  auto g = CompleteGraph(files, {});
  EXPECT_EQ(ById(g, "r/step_1").parent_id(), "");
  EXPECT_EQ(ById(g, "r/step_1.f32").parent_id(), "r/step_1");
  EXPECT_THAT(SameContent(ById(g, "r/step_1")), ElementsAre("r/step_1.f32"));
  auto f = Focus(g, "u1", "");
  ASSERT_TRUE(f.ok());
  EXPECT_THAT(Ids(*f), ElementsAre("r/step_1", "r/step_1.f32"));
}

TEST(LineageTest, AFineTunesBaseIsTheOldestCheckpointWithThatContent) {
  std::vector<Node> files = TwinRuns();
  files[4].set_time_utc("2025-12-31T00:00:00Z");  // b's step 200 is older than a's
  files.push_back(Checkpoint("ft", 10, "f10", "u200", "2026-02-01T00:00:00Z"));
  files.push_back(Checkpoint("ft2", 10, "g10", "x200", "2026-02-01T00:00:00Z"));
  auto g = CompleteGraph(files, {{"a", "base"}, {"b", "base"}, {"ft", "u200"}, {"ft2", "x200"}});
  EXPECT_EQ(ById(g, "ft/step_10").parent_id(), "b/step_200");
  // Started from an export (no checkpoint has its uuid); the exports' times
  // are equal, so the id breaks the tie.
  EXPECT_EQ(ById(g, "ft2/step_10").parent_id(), "a/step_200.hf-llama");
  auto ft = Focus(g, "", "ft");
  ASSERT_TRUE(ft.ok());
  EXPECT_THAT(Ids(*ft), ElementsAre("base:base", "b/step_100", "b/step_200", "ft/step_10"));
}

TEST(LineageTest, DeletedCheckpointsAndUnknownBasesGetNodesOfTheirOwn) {
  // Retention deleted r's steps before 300; s's base model is nowhere here.
  std::vector<Node> files{Checkpoint("r", 300, "u300", "u200"),
                          Checkpoint("r", 400, "u400", "u300"),
                          Checkpoint("s", 300, "v300", "u200"), Checkpoint("t", 5, "w5", "m")};
  auto g = CompleteGraph(files, {{"r", "m"}, {"s", "m2"}, {"t", "m"}});
  const Node& gone = ById(g, "r/gone:u200");
  EXPECT_EQ(gone.kind(), Node::KIND_GONE);
  EXPECT_EQ(gone.parent_id(), "base:m");
  EXPECT_EQ(ById(g, "r/step_300").parent_id(), "r/gone:u200");
  // s's deleted checkpoint had the same uuid: a node of s's own.
  EXPECT_EQ(ById(g, "s/step_300").parent_id(), "s/gone:u200");
  EXPECT_EQ(ById(g, "s/gone:u200").parent_id(), "base:m2");
  EXPECT_EQ(ById(g, "t/step_5").parent_id(), "base:m");
  size_t base_m = 0;
  for (const Node& n : g) base_m += n.id() == "base:m";
  EXPECT_EQ(base_m, 1u);
  EXPECT_EQ(Focus(g, "", "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Focus(g, "no-uuid", "").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Focus(g, "", "").value().nodes_size(), static_cast<int>(g.size()));
}

TEST(LineageTest, ARollbacksParentIsTheRunsCheckpointWithThatContent) {
  // Step 150 was saved after 200 (a rollback): its parent is step 200.
  std::vector<Node> files{Checkpoint("r", 100, "u100", ""), Checkpoint("r", 200, "u200", "u100"),
                          Checkpoint("r", 150, "u150", "u200")};
  auto g = CompleteGraph(files, {});
  EXPECT_EQ(ById(g, "r/step_150").parent_id(), "r/step_200");
  EXPECT_EQ(ById(g, "r/step_200").parent_id(), "r/step_100");
}

}  // namespace
}  // namespace ckptd::query
