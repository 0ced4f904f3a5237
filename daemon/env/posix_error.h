// errno -> absl::Status, always naming the operation and the path:
// PosixError("open /x/step_5.gguf.tmp", ENOSPC) ->
//   RESOURCE_EXHAUSTED "open /x/step_5.gguf.tmp: No space left on device".
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace ckptd::env {

absl::Status PosixError(std::string_view context, int err);

}  // namespace ckptd::env
