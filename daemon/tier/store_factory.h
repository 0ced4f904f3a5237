// The object store [tier.s3] describes, built in one place for the daemon
// and ckptctl alike: endpoint, bucket, region, credentials and the stall
// timeout all come from the config.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/config/config.h"
#include "daemon/env/env.h"
#include "daemon/tier/object_store.h"
#include "daemon/tier/s3_store.h"

namespace ckptd::tier {

// Fills config->access_key and secret_key: from `credentials_file` (access
// key on the first line, secret key on the second; refused if others may
// read it) or, when it is "", from CKPTD_S3_ACCESS_KEY and
// CKPTD_S3_SECRET_KEY. INVALID_ARGUMENT says where to put them.
absl::Status LoadCredentials(env::Env* env, const std::string& credentials_file, S3Config* config);

// FAILED_PRECONDITION when the config has no [tier.s3] endpoint; the
// credentials' errors otherwise. Makes no request.
absl::StatusOr<std::unique_ptr<ObjectStore>> OpenStore(env::Env* env, const config::Config& cfg);

}  // namespace ckptd::tier
