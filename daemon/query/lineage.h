// The lineage graph ("tree of life") of every file the daemon knows: base
// models -> runs' checkpoints (each pointing at the previous one, a run's
// first at its base model, which may be another run's checkpoint) ->
// exports. Built from the catalog's records, which come from file headers.
//
// Nodes are files and are keyed by their identity (LineageNode.id: run,
// step, role, export name), not by content: general.uuid is a digest of
// the tensors, so runs with the same seed, or an export that changes only
// metadata, share uuids. A parent is resolved by uuid in this order: the
// same run's checkpoints (the nearest earlier step), then, for the run's
// base model, another run's file with that uuid (a checkpoint before an
// export, the oldest first), else a node for the uuid alone. Files with
// equal uuids are listed in each other's `same_content`.
// Pure over a snapshot; thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/v1/ckptd.pb.h"

namespace ckptd::query {

// LineageNode.id of a checkpoint and of an export.
std::string CheckpointNodeId(std::string_view run, uint64_t step);
std::string ExportNodeId(std::string_view run, uint64_t step, std::string_view name);

// Every node known, before focusing. `files`: checkpoints (id, uuid,
// parent_uuid set) and exports (id, uuid and parent_id set) of all runs;
// `run_base`: run id -> its base model's uuid. Sets each checkpoint's
// parent_id, adds a node for each uuid that is referenced but not on disk
// (a base model, or a checkpoint deleted since), fills same_content. Sorted
// by run, step and kind.
std::vector<v1::LineageNode> CompleteGraph(std::vector<v1::LineageNode> files,
                                           const std::map<std::string, std::string>& run_base);

// Keeps the ancestors and descendants of the files holding `uuid` (or of
// `run_id`'s nodes); neither keeps everything. NOT_FOUND when the uuid or
// run is not in the graph.
absl::StatusOr<v1::Lineage> Focus(const std::vector<v1::LineageNode>& graph,
                                  const std::string& uuid, const std::string& run_id);

}  // namespace ckptd::query
