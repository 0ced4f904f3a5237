// Lineage: resolve parents by file identity, complete the graph with
// referenced-only nodes, then walk up and down from the focus.
#include "daemon/query/lineage.h"

#include <algorithm>
#include <set>
#include <tuple>

#include "daemon/base/strings.h"

namespace ckptd::query {
namespace {

using Node = v1::LineageNode;

bool IsFile(const Node& n) {
  return n.kind() == Node::KIND_CHECKPOINT || n.kind() == Node::KIND_EXPORT;
}

class GraphBuilder {
 public:
  GraphBuilder(std::vector<Node> files, const std::map<std::string, std::string>& run_base)
      : nodes_(std::move(files)), run_base_(run_base) {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (IsFile(nodes_[i])) by_uuid_.emplace(nodes_[i].uuid(), i);
      ids_.insert(nodes_[i].id());
    }
  }

  std::vector<Node> Build() && {
    const size_t files = nodes_.size();
    for (size_t i = 0; i < files; ++i) {
      if (nodes_[i].kind() == Node::KIND_CHECKPOINT && nodes_[i].parent_id().empty()) {
        std::string parent = CheckpointParent(i);  // may add nodes: index after
        nodes_[i].set_parent_id(std::move(parent));
      }
    }
    // A run's base model that no checkpoint names (its first ones are gone).
    for (const auto& [run, base] : run_base_) {
      if (!base.empty() && !by_uuid_.contains(base)) BaseNode(base);
    }
    for (size_t i = 0; i < files; ++i) {
      auto [lo, hi] = by_uuid_.equal_range(nodes_[i].uuid());
      for (auto it = lo; it != hi && IsFile(nodes_[i]); ++it) {
        if (it->second != i) nodes_[i].add_same_content(nodes_[it->second].id());
      }
    }
    std::stable_sort(nodes_.begin(), nodes_.end(), [](const Node& a, const Node& b) {
      return std::make_tuple(a.run_id(), a.step(), static_cast<int>(a.kind()), a.id()) <
             std::make_tuple(b.run_id(), b.step(), static_cast<int>(b.kind()), b.id());
    });
    return std::move(nodes_);
  }

 private:
  std::string CheckpointParent(size_t i) {
    const std::string run = nodes_[i].run_id();
    const std::string parent = nodes_[i].parent_uuid();
    const uint64_t step = nodes_[i].step();
    if (parent.empty()) return "";
    // The same run's checkpoint with that content: the nearest earlier step
    // (a rollback's parent may be a later one).
    const Node* best = nullptr;
    auto [lo, hi] = by_uuid_.equal_range(parent);
    for (auto it = lo; it != hi; ++it) {
      const Node& c = nodes_[it->second];
      if (it->second == i || c.kind() != Node::KIND_CHECKPOINT || c.run_id() != run) continue;
      auto rank = [step](const Node& n) { return std::make_tuple(n.step() < step, n.step()); };
      if (best == nullptr || rank(c) > rank(*best)) best = &c;
    }
    if (best != nullptr) return best->id();
    auto base = run_base_.find(run);
    const std::string base_uuid = base == run_base_.end() ? "" : base->second;
    if (parent == base_uuid) return Base(base_uuid, run);
    // A checkpoint of this run deleted since: it hangs under the run's base
    // model, so the run stays one branch.
    std::string gone = StrCat(run, "/gone:", parent);
    if (ids_.insert(gone).second) {
      Node g;
      g.set_id(gone);
      g.set_uuid(parent);
      g.set_kind(Node::KIND_GONE);
      g.set_run_id(run);
      if (!base_uuid.empty()) {
        g.set_parent_uuid(base_uuid);
        g.set_parent_id(Base(base_uuid, run));
      }
      nodes_.push_back(std::move(g));
    }
    return gone;
  }

  // The node a run's base model uuid names: another run's file with that
  // content (a checkpoint before an export, then the oldest), else a node of
  // its own.
  std::string Base(const std::string& uuid, const std::string& run) {
    const Node* best = nullptr;
    auto rank = [](const Node& n) {
      return std::make_tuple(n.kind() != Node::KIND_CHECKPOINT, n.time_utc(), n.id());
    };
    auto [lo, hi] = by_uuid_.equal_range(uuid);
    for (auto it = lo; it != hi; ++it) {
      const Node& c = nodes_[it->second];
      if (c.run_id() == run) continue;
      if (best == nullptr || rank(c) < rank(*best)) best = &c;
    }
    return best != nullptr ? best->id() : BaseNode(uuid);
  }

  std::string BaseNode(const std::string& uuid) {
    std::string id = StrCat("base:", uuid);
    if (ids_.insert(id).second) {
      Node b;
      b.set_id(id);
      b.set_uuid(uuid);
      b.set_kind(Node::KIND_BASE_MODEL);
      nodes_.push_back(std::move(b));
    }
    return id;
  }

  std::vector<Node> nodes_;
  const std::map<std::string, std::string>& run_base_;
  std::multimap<std::string, size_t> by_uuid_;  // files only
  std::set<std::string> ids_;
};

}  // namespace

std::string CheckpointNodeId(std::string_view run, uint64_t step) {
  return StrCat(run, "/step_", step);
}

std::string ExportNodeId(std::string_view run, uint64_t step, std::string_view name) {
  return StrCat(run, "/step_", step, ".", name);
}

std::vector<v1::LineageNode> CompleteGraph(std::vector<v1::LineageNode> files,
                                           const std::map<std::string, std::string>& run_base) {
  return GraphBuilder(std::move(files), run_base).Build();
}

absl::StatusOr<v1::Lineage> Focus(const std::vector<v1::LineageNode>& graph,
                                  const std::string& uuid, const std::string& run_id) {
  v1::Lineage out;
  out.set_focus(!uuid.empty() ? uuid : run_id);
  if (uuid.empty() && run_id.empty()) {
    for (const auto& n : graph) *out.add_nodes() = n;
    return out;
  }
  std::map<std::string, const Node*> by_id;
  std::multimap<std::string, const Node*> children;
  for (const auto& n : graph) {
    by_id[n.id()] = &n;
    if (!n.parent_id().empty()) children.emplace(n.parent_id(), &n);
  }
  std::vector<const Node*> start;
  for (const auto& n : graph) {
    if (!uuid.empty() ? n.uuid() == uuid : n.run_id() == run_id) start.push_back(&n);
  }
  if (start.empty()) {
    return absl::NotFoundError(
        !uuid.empty() ? StrCat("no file with uuid ", uuid, " among the runs this daemon knows")
                      : StrCat("run '", run_id, "' has no checkpoints to trace"));
  }
  std::set<std::string> keep;
  for (const Node* s : start) {
    // Up to the root, then everything below.
    keep.insert(s->id());
    for (std::string p = s->parent_id(); !p.empty() && keep.insert(p).second;) {
      auto it = by_id.find(p);
      if (it == by_id.end()) break;
      p = it->second->parent_id();
    }
    std::vector<std::string> todo{s->id()};
    while (!todo.empty()) {
      std::string id = todo.back();
      todo.pop_back();
      auto [lo, hi] = children.equal_range(id);
      for (auto it = lo; it != hi; ++it) {
        if (keep.insert(it->second->id()).second) todo.push_back(it->second->id());
      }
    }
  }
  for (const auto& n : graph) {
    if (keep.contains(n.id())) *out.add_nodes() = n;
  }
  return out;
}

}  // namespace ckptd::query
