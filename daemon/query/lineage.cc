// Lineage: complete the graph with referenced-only nodes, then walk up and
// down from the focus.
#include "daemon/query/lineage.h"

#include <algorithm>
#include <map>
#include <set>

#include "daemon/base/strings.h"

namespace ckptd::query {

std::vector<v1::LineageNode> CompleteGraph(std::vector<v1::LineageNode> nodes,
                                           const std::map<std::string, std::string>& run_base) {
  std::set<std::string> known;
  for (const auto& n : nodes) known.insert(n.uuid());
  std::set<std::string> bases;
  for (const auto& [run, base] : run_base) bases.insert(base);
  std::vector<v1::LineageNode> extra;
  std::set<std::string> added;
  for (const std::string& uuid : bases) {
    if (uuid.empty() || known.contains(uuid)) continue;
    v1::LineageNode b;
    b.set_uuid(uuid);
    b.set_kind(v1::LineageNode::KIND_BASE_MODEL);
    extra.push_back(std::move(b));
    added.insert(uuid);
  }
  for (const auto& n : nodes) {
    const std::string& parent = n.parent_uuid();
    if (parent.empty() || known.contains(parent) || !added.insert(parent).second) continue;
    // A checkpoint deleted since: it hangs under its run's base model, so the
    // run stays one branch.
    v1::LineageNode g;
    g.set_uuid(parent);
    g.set_kind(v1::LineageNode::KIND_GONE);
    g.set_run_id(n.run_id());
    auto base = run_base.find(n.run_id());
    if (base != run_base.end() && base->second != parent) g.set_parent_uuid(base->second);
    extra.push_back(std::move(g));
  }
  nodes.insert(nodes.end(), extra.begin(), extra.end());
  std::stable_sort(nodes.begin(), nodes.end(), [](const auto& a, const auto& b) {
    return std::make_tuple(a.run_id(), a.step(), static_cast<int>(a.kind())) <
           std::make_tuple(b.run_id(), b.step(), static_cast<int>(b.kind()));
  });
  return nodes;
}

absl::StatusOr<v1::Lineage> Focus(const std::vector<v1::LineageNode>& graph,
                                  const std::string& uuid, const std::string& run_id) {
  v1::Lineage out;
  out.set_focus(!uuid.empty() ? uuid : run_id);
  std::map<std::string, const v1::LineageNode*> by_uuid;
  std::multimap<std::string, const v1::LineageNode*> children;
  for (const auto& n : graph) {
    // An export can share its checkpoint's uuid (identical tensors): the
    // checkpoint is what the uuid names as a parent.
    if (n.kind() != v1::LineageNode::KIND_EXPORT || !by_uuid.contains(n.uuid())) {
      by_uuid[n.uuid()] = &n;
    }
    if (!n.parent_uuid().empty()) children.emplace(n.parent_uuid(), &n);
  }
  std::vector<std::string> start;
  if (!uuid.empty()) {
    if (!by_uuid.contains(uuid)) {
      return absl::NotFoundError(
          StrCat("no file with uuid ", uuid, " among the runs this daemon knows"));
    }
    start.push_back(uuid);
  } else if (!run_id.empty()) {
    for (const auto& n : graph) {
      if (n.run_id() == run_id) start.push_back(n.uuid());
    }
    if (start.empty()) {
      return absl::NotFoundError(StrCat("run '", run_id, "' has no checkpoints to trace"));
    }
  } else {
    for (const auto& n : graph) *out.add_nodes() = n;
    return out;
  }
  std::set<std::string> keep;
  for (const std::string& s : start) {
    // Up to the root, then everything below each start.
    keep.insert(s);
    for (std::string u = by_uuid.at(s)->parent_uuid(); !u.empty() && keep.insert(u).second;) {
      auto it = by_uuid.find(u);
      if (it == by_uuid.end()) break;
      u = it->second->parent_uuid();
    }
    std::vector<std::string> todo{s};
    while (!todo.empty()) {
      std::string u = todo.back();
      todo.pop_back();
      auto [lo, hi] = children.equal_range(u);
      for (auto it = lo; it != hi; ++it) {
        if (keep.insert(it->second->uuid()).second) todo.push_back(it->second->uuid());
      }
    }
  }
  for (const auto& n : graph) {
    if (keep.contains(n.uuid())) *out.add_nodes() = n;
  }
  return out;
}

}  // namespace ckptd::query
