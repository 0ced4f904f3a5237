// Maps errno values onto the absl status codes callers branch on.
#include "daemon/env/posix_error.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/cord.h"
#include "daemon/base/strings.h"

namespace ckptd::env {
namespace {

constexpr char kIoErrorPayload[] = "ckptd.dev/io-error";

}  // namespace

absl::Status SystemError(std::string_view context, int err) {
  std::string msg = StrCat(context, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      return absl::ResourceExhaustedError(msg);
    case EINVAL:
    case ENAMETOOLONG:
    case ENOTDIR:
    case EISDIR:
    case ELOOP:
      return absl::InvalidArgumentError(msg);
    case EINTR:
    case EAGAIN:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status PosixError(std::string_view context, int err) {
  return MarkIoError(SystemError(context, err));
}

absl::Status MarkIoError(absl::Status status) {
  if (!status.ok()) status.SetPayload(kIoErrorPayload, absl::Cord("1"));
  return status;
}

bool IsIoError(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kIoErrorPayload).has_value();
}

}  // namespace ckptd::env
