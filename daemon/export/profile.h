// Export profiles: declarative recipes that turn a training checkpoint's
// model tensors into an inference file (names, fused or split tensors,
// rotary layout, dtypes, metadata). A profile is data: ProfileSpec mirrors
// the TOML file and the proto message field for field; Compile() checks it
// and compiles its patterns. The digest covers the definition (not its
// spelling), so an export records exactly which recipe made it.
// Immutable after Compile; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/env/env.h"
#include "daemon/export/pattern.h"
#include "daemon/gguf/types.h"
#include "daemon/gguf/value.h"

namespace ckptd::exports {

// Plain data, as written in TOML or sent in the proto message.
// What one profile may ask for, so no client can make planning or matching
// costly: rules of all kinds together, pattern length, wildcards and
// captures per pattern, outputs of one split.
inline constexpr size_t kMaxProfileRules = 1024;
inline constexpr size_t kMaxPatternBytes = 256;
inline constexpr size_t kMaxPatternWildcards = 16;
inline constexpr size_t kMaxSplitOutputs = 64;

struct ProfileSpec {
  struct Rename {
    std::string from, to;
  };
  struct Fuse {
    std::string from;   // member pattern; `order` is one of its captures
    std::string order;  // members are concatenated by this capture, ascending from 0
    std::string axis;   // "rows" (ggml dim 1), "cols" (dim 0), or a ggml dim "0".."3"
    std::string to;
  };
  struct Split {
    std::string from;
    std::string axis;
    std::vector<std::string> to;  // equal parts, in order
  };
  struct Transform {
    std::string match;
    std::string rope_permute;  // metadata key holding the head count
    bool transpose = false;
    std::vector<int> permute;  // ggml dims: output dim i is input dim permute[i]
  };
  struct Cast {
    std::string match;
    std::string type;  // f32, f16, bf16, q8_0
    int dims = 0;      // only tensors with this many dims; 0 = any
  };
  struct MetadataRule {
    std::string key;
    std::string type;                  // u32, f32, string, ... (GGUF value type names)
    std::vector<std::string> from;     // first key present wins (source, then earlier rules)
    std::string derive;                // "dim:TENSOR:AXIS" or "count:PATTERN" (output tensors)
    std::optional<std::string> value;  // literal, also the default when `from` finds nothing
    bool required = true;
  };
  std::string name;
  std::string description;
  std::string architecture;  // "llama": output checked against llama.cpp's tensor set
  // "lora": the export is a llama.cpp LoRA adapter for a model of
  // `architecture` (general.type = adapter, adapter.type = lora; every
  // output a base tensor's name + .lora_a/.lora_b, paired, ranks agreeing)
  // instead of a whole model.
  std::string adapter;
  // What to do with PEFT LoRA factors (`P.lora_A.weight`, `P.lora_B.weight`)
  // whose base weight is `P.weight` or `P.base_layer.weight`:
  // "" — nothing: they are sources like any other, for the rules to consume;
  // "merge" — fold them into the base weight, W + alpha/r * B A (computed in
  //   f32, then cast as the rules say), and drop them;
  // "base" — drop them, leaving the frozen base the adapter applies to.
  // With "merge" or "base", rules see `P.base_layer.weight` as `P.weight`.
  std::string lora;
  std::vector<std::string> drop;
  std::vector<Rename> rename;
  std::vector<Fuse> fuse;
  std::vector<Split> split;
  std::vector<Transform> transform;
  std::vector<Cast> cast;
  std::vector<MetadataRule> metadata;
  std::vector<std::string> remove_metadata;  // patterns on source keys not to carry over
};

struct Profile {
  struct Rename {
    Pattern from, to;
  };
  struct Fuse {
    Pattern from;
    std::string order;
    int axis = 1;
    Pattern to;
  };
  struct Split {
    Pattern from;
    int axis = 1;
    std::vector<Pattern> to;
  };
  struct Transform {
    Pattern match;
    std::string rope_permute;
    std::vector<int> permute;  // empty: none
  };
  struct Cast {
    Pattern match;
    gguf::TensorType type;
    int dims = 0;
  };
  struct MetadataRule {
    std::string key;
    gguf::ValueType type;
    std::vector<std::string> from;
    std::string derive;
    std::optional<gguf::Value> value;
    bool required = true;
  };
  ProfileSpec spec;
  std::vector<Pattern> drop;
  std::vector<Rename> rename;
  std::vector<Fuse> fuse;
  std::vector<Split> split;
  std::vector<Transform> transform;
  std::vector<Cast> cast;
  std::vector<MetadataRule> metadata;
  std::vector<Pattern> remove_metadata;
  std::string digest;  // "xxh3-128:<hex>" of CanonicalText(spec)
};

// Export names (and profile names): [a-z0-9_-]{1,64}, not "train".
bool IsValidExportName(std::string_view name);

absl::StatusOr<ProfileSpec> ParseProfileToml(std::string_view toml, std::string_view source_name);
absl::StatusOr<Profile> CompileProfile(ProfileSpec spec);
// Canonical rendering (the digest's input, and what `--show-profile` prints).
std::string CanonicalText(const ProfileSpec& spec);

// Built-in profiles: hf-llama and per-head-llama, each plain (F32) and with
// -f16, -bf16 and -q8_0 (every 2-D weight cast; 1-D tensors stay F32).
std::vector<std::string> BuiltinProfileNames();
std::optional<ProfileSpec> BuiltinProfile(std::string_view name);

// A built-in name, or a path to a TOML file (anything containing '/' or
// ending in .toml).
absl::StatusOr<Profile> LoadProfile(env::Env* env, std::string_view name_or_path);

// A profile by name for a run: a built-in, else <profiles_dir>/<name>.toml
// when profiles_dir is set. NOT_FOUND lists what exists.
absl::StatusOr<Profile> ResolveProfile(env::Env* env, const std::string& profiles_dir,
                                       std::string_view name);

// Parses a scalar metadata value of `type` from text ("32", "1e-5", "true").
absl::StatusOr<gguf::Value> ParseTypedValue(gguf::ValueType type, std::string_view text);

}  // namespace ckptd::exports
