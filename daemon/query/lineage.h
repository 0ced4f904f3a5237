// The lineage graph ("tree of life") of every file the daemon knows: base
// models -> runs' checkpoints (each pointing at the previous one, a run's
// first at its base model, which may be another run's checkpoint) ->
// exports. Built from the catalog's records, which come from file headers.
// Pure over a snapshot; thread-safe.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/v1/ckptd.pb.h"

namespace ckptd::query {

// Every node known, before focusing: checkpoints and exports of all runs
// (`files`), plus a node for each uuid that is referenced but not on disk:
// a base model (`run_base`: run id -> its base model's uuid) or a
// checkpoint deleted since. Sorted by run, step and kind.
std::vector<v1::LineageNode> CompleteGraph(std::vector<v1::LineageNode> files,
                                           const std::map<std::string, std::string>& run_base);

// Keeps `uuid`'s (or `run_id`'s nodes') ancestors and descendants; neither
// keeps everything. NOT_FOUND when the uuid or run is not in the graph.
absl::StatusOr<v1::Lineage> Focus(const std::vector<v1::LineageNode>& graph,
                                  const std::string& uuid, const std::string& run_id);

}  // namespace ckptd::query
