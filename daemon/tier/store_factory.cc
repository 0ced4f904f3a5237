// Building the configured store.
#include "daemon/tier/store_factory.h"

#include "absl/strings/ascii.h"
#include "daemon/base/strings.h"

namespace ckptd::tier {

absl::Status LoadCredentials(env::Env* env, const std::string& credentials_file, S3Config* config) {
  std::string access, secret;
  if (!credentials_file.empty()) {
    auto st = env->Stat(credentials_file);
    if (st.ok() && (st->mode & 0007) != 0) {
      return absl::PermissionDeniedError(
          StrCat("tier.s3.credentials_file: ", credentials_file,
                 " is readable by other users; chmod 600 it (or 640 with the daemon's group)"));
    }
    auto text = env::ReadWholeFile(env, credentials_file);
    if (!text.ok()) {
      return absl::Status(text.status().code(),
                          StrCat("tier.s3.credentials_file: ", text.status().message()));
    }
    const std::vector<std::string> lines = Split(*text, '\n');
    if (lines.size() >= 2) {
      access = std::string(absl::StripAsciiWhitespace(lines[0]));
      secret = std::string(absl::StripAsciiWhitespace(lines[1]));
    }
  } else {
    const char* a = std::getenv("CKPTD_S3_ACCESS_KEY");
    const char* s = std::getenv("CKPTD_S3_SECRET_KEY");
    access = a ? a : "";
    secret = s ? s : "";
  }
  if (access.empty() || secret.empty()) {
    return absl::InvalidArgumentError(
        "tier.s3: no credentials: set CKPTD_S3_ACCESS_KEY and CKPTD_S3_SECRET_KEY in the "
        "environment, or name a file with tier.s3.credentials_file (access key on the first "
        "line, secret key on the second)");
  }
  config->access_key = std::move(access);
  config->secret_key = std::move(secret);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenStore(env::Env* env, const config::Config& cfg) {
  if (cfg.s3_endpoint.empty()) {
    return absl::FailedPreconditionError("no [tier.s3] endpoint is configured");
  }
  S3Config s3{.endpoint = cfg.s3_endpoint,
              .bucket = cfg.s3_bucket,
              .region = cfg.s3_region,
              .stall_timeout_s = cfg.s3_stall_timeout_seconds,
              .ca_file = cfg.s3_ca_file,
              .sign_payload_always = cfg.s3_sign_payload_always};
  if (!s3.ca_file.empty()) {
    // Refused here, by name, rather than as every request's TLS failure.
    auto ca = env::ReadWholeFile(env, s3.ca_file);
    if (!ca.ok()) {
      return absl::InvalidArgumentError(
          StrCat("tier.s3.ca_file: ", ca.status().message(), "; a PEM file of CA certificates"));
    }
    if (ca->find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      return absl::InvalidArgumentError(StrCat("tier.s3.ca_file: ", s3.ca_file,
                                               " holds no PEM certificate (-----BEGIN "
                                               "CERTIFICATE-----)"));
    }
  }
  if (absl::Status st = LoadCredentials(env, cfg.s3_credentials_file, &s3); !st.ok()) return st;
  return std::make_unique<S3Store>(std::move(s3));
}

}  // namespace ckptd::tier
