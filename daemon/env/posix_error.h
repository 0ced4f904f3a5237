// errno -> absl::Status, always naming the operation and the path:
// PosixError("open /x/step_5.gguf.tmp", ENOSPC) ->
//   RESOURCE_EXHAUSTED "open /x/step_5.gguf.tmp: No space left on device".
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace ckptd::env {

// Every status it returns is marked as an I/O failure (IsIoError), so callers
// tell a failing disk from a client's mistake without guessing from codes.
absl::Status PosixError(std::string_view context, int err);

// The same mapping without the I/O mark, for calls that are not file-system
// I/O (mapping a trainer's memfd, sockets): their failures are not a disk's.
absl::Status SystemError(std::string_view context, int err);

// True for statuses made by PosixError: a file-system call failed. A refused
// request, a trainer that went away or bad input are never I/O errors.
bool IsIoError(const absl::Status& status);

// Marks `status` (not OK) as an I/O failure, for env code that fails without
// an errno (a short write, a close of a failed file).
absl::Status MarkIoError(absl::Status status);

}  // namespace ckptd::env
