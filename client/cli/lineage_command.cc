// Lineage: ask the daemon, draw the tree.
#include "client/cli/lineage_command.h"

#include <fmt/format.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <set>

#include "ckptd/client.h"
#include "client/cli/commands.h"
#include "daemon/api/convert.h"

namespace ckptd::cli {
namespace {

using Node = v1::LineageNode;

std::string KindLabel(const Node& n) {
  const std::string id = n.uuid().substr(0, 8);
  switch (n.kind()) {
    case Node::KIND_BASE_MODEL:
      return fmt::format("base model {}{}", n.uuid(), n.name().empty() ? "" : " " + n.name());
    case Node::KIND_CHECKPOINT:
      return fmt::format("{} step {}  {}  {}{}{}", n.run_id(), n.step(), id, n.time_utc(),
                         n.is_latest() ? "  [latest]" : "", n.pinned() ? "  [pinned]" : "");
    case Node::KIND_EXPORT:
      return fmt::format("export {} ({})  {}{}", n.name(), n.profile(), id,
                         n.is_latest() ? fmt::format("  [latest.{}]", n.name()) : "");
    case Node::KIND_GONE:
      return fmt::format("{} deleted checkpoint  {}", n.run_id(), id);
    default:
      return n.id();
  }
}

std::string SameContent(const Node& n) {
  if (n.same_content().empty()) return "";
  return fmt::format("  [same content as {}]", fmt::join(n.same_content(), ", "));
}

std::string Label(const Node& n) { return KindLabel(n) + SameContent(n); }

bool Continues(const Node& parent, const Node& child) {
  return (child.kind() == Node::KIND_CHECKPOINT || child.kind() == Node::KIND_GONE) &&
         (parent.kind() == Node::KIND_CHECKPOINT || parent.kind() == Node::KIND_GONE) &&
         child.run_id() == parent.run_id();
}

class Tree {
 public:
  explicit Tree(const v1::Lineage& l) {
    std::set<std::string> present;
    for (const Node& n : l.nodes()) present.insert(n.id());
    for (const Node& n : l.nodes()) {
      if (n.parent_id().empty() || !present.contains(n.parent_id())) {
        roots_.push_back(&n);
      } else {
        children_[n.parent_id()].push_back(&n);
      }
    }
  }

  std::string Render() {
    for (const Node* r : roots_) Chain(r, "", "");
    return out_;
  }

 private:
  // A run's checkpoints go down one column; everything else branches.
  void Chain(const Node* n, const std::string& first, const std::string& rest) {
    std::string lead = first;
    while (n != nullptr && printed_.insert(n->id()).second) {  // each node once, even in a cycle
      out_ += lead + Label(*n) + "\n";
      lead = rest;
      const Node* next = nullptr;
      std::vector<const Node*> branches;
      for (const Node* c : children_[n->id()]) {
        if (next == nullptr && Continues(*n, *c)) {
          next = c;
        } else {
          branches.push_back(c);
        }
      }
      for (size_t i = 0; i < branches.size(); ++i) {
        const bool last = i + 1 == branches.size() && next == nullptr;
        Chain(branches[i], rest + (last ? "└─ " : "├─ "), rest + (last ? "   " : "│  "));
      }
      n = next;
    }
  }

  std::vector<const Node*> roots_;
  std::map<std::string, std::vector<const Node*>> children_;
  std::set<std::string> printed_;
  std::string out_;
};

bool LooksLikeUuid(const std::string& s) {
  return s.size() == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-';
}

}  // namespace

std::string RenderLineage(const v1::Lineage& lineage) { return Tree(lineage).Render(); }

int LineageCommand(Client& c, const DaemonCommandArgs& a) {
  grpc::ClientContext ctx;
  v1::LineageRequest req;
  if (LooksLikeUuid(a.run)) {
    req.set_uuid(a.run);
  } else {
    req.set_run_id(a.run);
  }
  v1::Lineage lineage;
  if (auto st = c.stub().GetLineage(&ctx, req, &lineage); !st.ok()) {
    std::fprintf(stderr, "ckptctl: %s: %s\n", a.run.c_str(), st.error_message().c_str());
    return kExitFailed;
  }
  if (a.json) {
    std::cout << api::MessageToJson(lineage, true) << "\n";
  } else {
    std::cout << RenderLineage(lineage);
  }
  return kExitOk;
}

}  // namespace ckptd::cli
