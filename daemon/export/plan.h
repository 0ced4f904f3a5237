// Plans one export of a checkpoint's model tensors: which source tensors
// make each output tensor, how (copy, fuse, split, rotary permutation, dim
// permutation, cast), in what order outputs can be written as sources
// arrive, and the output file's metadata. Everything is checked here, before
// a byte is written: every source tensor consumed exactly once or dropped,
// fused members alike, casts possible, and for an architecture the tensor
// set llama.cpp expects. Errors name the export and the first offending
// tensor or key. Pure; thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/export/profile.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/value.h"

namespace ckptd::exports {

inline constexpr std::string_view kKeySourceUuid = "general.source.uuid";
inline constexpr std::string_view kKeyExportName = "ckpt.export.name";
inline constexpr std::string_view kKeyExportProfile = "ckpt.export.profile";
inline constexpr std::string_view kKeyExportProfileDigest = "ckpt.export.profile_digest";
inline constexpr std::string_view kKeyExportDaemonVersion = "ckpt.export.daemon_version";
// An adapter export's base: the export of the same pass it applies to (its
// uuid is general.base_model.0.uuid), and how many weights a merged export
// folded a LoRA into.
inline constexpr std::string_view kKeyExportBase = "ckpt.export.base";
inline constexpr std::string_view kKeyExportLoraMerged = "ckpt.export.lora_merged";

struct OutputRecipe {
  enum class Kind { kCopy, kFuse, kSplit };
  Kind kind = Kind::kCopy;
  gguf::TensorSpec out;         // final name, type and dims
  std::vector<size_t> sources;  // source indices; a fuse's in member order
  int axis = 0;                 // fuse and split (ggml dim)
  size_t part = 0, parts = 1;   // split
  gguf::TensorType element_type = gguf::TensorType::kF32;  // before the cast
  std::vector<uint64_t> assembled_ne;                      // after fuse/split, before the permutes
  uint32_t rope_heads = 0;                                 // 0: no rotary permutation
  std::vector<int> permute;  // output dim i = input dim permute[i]; empty: none
  // A merged LoRA (profile lora = "merge"): `sources` are [W, A, B] and the
  // tensor assembled is W + lora_scale * B A, in f32 (element_type).
  bool merge_lora = false;
  float lora_scale = 0;
  uint64_t lora_rank = 0;
  std::array<gguf::TensorType, 3> lora_types{};  // of W, A and B
  size_t ready_after = 0;                        // the source index whose arrival completes it
};

struct ExportPlan {
  std::string name;  // the export's name (file step_N.<name>.gguf)
  std::string profile;
  std::string profile_digest;
  std::string architecture;  // the profile's
  bool adapter = false;      // a LoRA adapter, not a whole model
  std::string lora;          // the profile's lora mode
  // An adapter's base export in the same pass (LinkAdapters); then
  // general.base_model.0.uuid is a placeholder slot for its uuid.
  std::string base_export;
  gguf::Metadata metadata;            // general.source.uuid is a placeholder slot
  std::vector<OutputRecipe> outputs;  // in write order (by ready_after)
  std::vector<bool> source_used;      // per source: false when dropped
  uint64_t peak_buffer_bytes = 0;     // most source bytes held at once
  uint64_t output_bytes = 0;          // tensor bytes of the output file
};

// An export's size is bounded by its sources. Its tensor bytes are by
// construction: every source is consumed once, and the widest cast (q8_0 to
// f32) multiplies bytes by 3.8. Its output count is bounded here
// (INVALID_ARGUMENT beyond): each output costs a header entry and up to an
// alignment of padding, so a split into thousands of outputs would turn a
// small checkpoint into a large export. 4 per source covers a split into
// q, k and v with room to spare.
inline constexpr uint64_t kMaxOutputsPerSource = 4;
inline constexpr uint64_t kMaxExtraOutputs = 64;

// `sources` are the model file's tensors in arrival order; `source_metadata`
// its metadata as written (provenance included). `export_name` defaults to
// the profile's name.
absl::StatusOr<ExportPlan> PlanExport(const Profile& profile, std::string_view export_name,
                                      std::span<const gguf::TensorSpec> sources,
                                      const gguf::Metadata& source_metadata,
                                      std::string_view daemon_version);

// Links each adapter plan in `plans` (one save's exports) to the first
// whole-model plan of the same architecture that does not merge LoRA
// factors (the model the adapter applies to), and orders every base before
// its adapters so the base's uuid is known when the adapter finishes. An
// adapter without such a plan keeps the source's general.base_model.*.
void LinkAdapters(std::vector<ExportPlan>* plans);

// Converts a metadata value to `type` when that loses nothing (integer range,
// integral floats); f64 -> f32 rounds.
absl::StatusOr<gguf::Value> ConvertValue(const gguf::Value& v, gguf::ValueType type);

}  // namespace ckptd::exports
