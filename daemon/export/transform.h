// Executes one OutputRecipe: assemble (copy, fuse, split), rotary
// permutation, dim permutation, cast (ggml's exact conversions, see
// gguf/convert.h). Pure; thread-safe.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "daemon/export/plan.h"

namespace ckptd::exports {

// `sources` holds the bytes of recipe.sources, in that order. Replaces `out`
// with the output tensor's bytes.
absl::Status BuildOutput(const OutputRecipe& recipe, std::span<const std::string_view> sources,
                         std::string* out);

// Converts whole elements (whole 32-element blocks for Q8_0) of type `from`
// (f32, f16, bf16) to `to` (f32, f16, bf16, q8_0), replacing `out`.
absl::Status ConvertElements(std::string_view src, gguf::TensorType from, gguf::TensorType to,
                             std::string* out);

// The row order of llama.cpp's converter for Hugging Face q/k weights:
// `w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2)`. Output row r
// is input row RopeSourceRow(r, rows, heads).
uint64_t RopeSourceRow(uint64_t r, uint64_t rows, uint64_t heads);

}  // namespace ckptd::exports
