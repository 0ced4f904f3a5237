// llama.cpp's tensor set for the `llama` architecture: the names and GGUF
// dims it creates from the hyperparameters, so an export that llama.cpp
// would refuse ("wrong number of tensors", "wrong shape") is refused when
// the run opens instead. Pure; thread-safe.
#pragma once

#include <span>

#include "absl/status/status.h"
#include "daemon/gguf/layout.h"
#include "daemon/gguf/value.h"

namespace ckptd::exports {

// Checks `tensors` (names, dims) and `md` (llama.* hyperparameters, the
// tokenizer) against what llama.cpp loads; the error names the first
// offending tensor or key.
absl::Status CheckLlama(std::span<const gguf::TensorSpec> tensors, const gguf::Metadata& md);

// A LoRA adapter as llama.cpp's loader takes it: every tensor a base
// tensor's name plus ".lora_a" or ".lora_b" (norms have none), each with
// its partner, 2-D, A's ne[1] (the rank) equal to B's ne[0], and
// adapter.lora.alpha an f32 in `md`.
absl::Status CheckLoraAdapter(std::span<const gguf::TensorSpec> tensors, const gguf::Metadata& md);

}  // namespace ckptd::exports
