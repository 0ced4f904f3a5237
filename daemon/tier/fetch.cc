// Downloading a step: manifest, ranged GETs in parallel, checks, atomic placement.
#include "daemon/tier/fetch.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/ascii.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/gguf/reader.h"
#include "daemon/tier/remote_names.h"

namespace ckptd::tier {
namespace {

std::string Key(const FetchOptions& o, const std::string& run_id, const std::string& name) {
  return o.prefix.empty() ? StrCat(run_id, "/", name) : StrCat(o.prefix, "/", run_id, "/", name);
}

struct ManifestFile {
  std::string name, key, role, etag, content_digest;
  uint64_t size = 0;
};

// Downloads one object into `temp` in part-sized ranges, `threads` at a
// time, and checks its size and ETag (the MD5s of its parts).
absl::Status Download(env::Env* env, S3Client& client, const ManifestFile& f, uint64_t part,
                      size_t threads, const std::string& temp) {
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::WritableFile> out,
                         env->NewWritableFile(temp, env::DirectIo::kOff));
  const size_t nparts = f.size == 0 ? 0 : static_cast<size_t>((f.size + part - 1) / part);
  std::vector<std::string> md5s;
  std::vector<std::string> buffers(threads);
  for (size_t first = 0; first < nparts; first += threads) {
    const size_t n = std::min(threads, nparts - first);
    std::vector<absl::Status> results(n);
    std::vector<std::thread> pool;
    for (size_t t = 0; t < n; ++t) {
      pool.emplace_back([&, t] {
        const uint64_t offset = (first + t) * part, len = std::min(part, f.size - offset);
        auto got = client.Get(f.key, std::make_pair(offset, len));
        if (!got.ok()) {
          results[t] = got.status();
          return;
        }
        buffers[t] = std::move(*got);
      });
    }
    for (std::thread& th : pool) th.join();
    for (size_t t = 0; t < n; ++t) {
      CKPTD_TRY(results[t]);
      md5s.push_back(Md5Hex(buffers[t]));
      CKPTD_TRY(out->Append(buffers[t]));
    }
  }
  CKPTD_TRY(out->Sync());
  CKPTD_TRY(out->Close());
  const std::string etag = nparts <= 1 ? (nparts == 0 ? Md5Hex("") : md5s[0]) : MultipartEtag(md5s);
  if (etag != f.etag) {
    return absl::DataLossError(
        StrCat(f.key, ": the bytes downloaded have ETag ", etag, "; the manifest says ", f.etag));
  }
  return absl::OkStatus();
}

// The model file's tensor digests, content digest and uuid, as `ckptctl
// verify` checks them, and the content digest the manifest recorded.
absl::Status VerifyModel(env::Env* env, const std::string& path, const ManifestFile& f) {
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::RandomAccessFile> file, env->OpenForRead(path));
  CKPTD_ASSIGN_OR_RETURN(gguf::GgufFile header, gguf::ReadHeader(*file));
  auto report = gguf::Verify(*file, header);
  if (!report.ok()) {
    return absl::DataLossError(StrCat(f.key, ": ", report.status().message()));
  }
  if (!f.content_digest.empty() && report->stored_content_digest != f.content_digest) {
    return absl::DataLossError(StrCat(f.key, ": content digest ", report->stored_content_digest,
                                      ", the manifest says ", f.content_digest));
  }
  return absl::OkStatus();
}

}  // namespace

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

absl::StatusOr<FetchResult> FetchStep(env::Env* env, S3Client& client, const FetchOptions& options,
                                      const std::string& run_id, std::optional<uint64_t> step,
                                      const std::string& dest_dir) {
  const double start = NowSeconds();
  std::string manifest_key;
  if (step) {
    manifest_key = Key(options, run_id, ManifestName(*step));
  } else {
    auto latest = client.Get(Key(options, run_id, "latest"));
    if (absl::IsNotFound(latest.status())) {
      return absl::NotFoundError(StrCat("run '", run_id, "' has no latest object in the store (",
                                        Key(options, run_id, "latest"), "): nothing uploaded yet"));
    }
    if (!latest.ok()) return latest.status();
    nlohmann::json j = nlohmann::json::parse(*latest, nullptr, false);
    if (!j.is_object() || !j.contains("manifest")) {
      return absl::DataLossError(StrCat(Key(options, run_id, "latest"), " is not a latest object"));
    }
    manifest_key = j["manifest"].get<std::string>();
  }
  auto text = client.Get(manifest_key);
  if (absl::IsNotFound(text.status())) {
    return absl::NotFoundError(StrCat("no manifest ", manifest_key,
                                      " in the store: that step was never uploaded completely"));
  }
  if (!text.ok()) return text.status();
  nlohmann::json m = nlohmann::json::parse(*text, nullptr, false);
  if (!m.is_object() || !m.contains("files") || !m.contains("part_size")) {
    return absl::DataLossError(StrCat(manifest_key, " is not a step manifest"));
  }
  FetchResult result;
  result.step = m["step"].get<uint64_t>();
  result.uuid = m.value("uuid", "");
  const uint64_t part = m["part_size"].get<uint64_t>();
  if (part > options.max_memory_bytes) {
    return absl::InvalidArgumentError(StrCat("the step was uploaded in parts of ", part,
                                             " bytes, more than the memory allowed (",
                                             options.max_memory_bytes, "): raise it"));
  }
  const size_t threads = static_cast<size_t>(
      std::max<uint64_t>(1, std::min<uint64_t>(static_cast<uint64_t>(std::max(1, options.parallel)),
                                               options.max_memory_bytes / part)));
  std::vector<ManifestFile> files;
  result.world_size = m.value("world_size", uint32_t{0});
  for (const auto& f : m["files"]) {
    if (options.rank && result.world_size > 0 && f.value("rank", uint32_t{0}) != *options.rank) {
      continue;  // another rank's part
    }
    files.push_back({.name = f["name"].get<std::string>(),
                     .key = f["key"].get<std::string>(),
                     .role = f.value("role", ""),
                     .etag = f["etag"].get<std::string>(),
                     .content_digest = f.value("content_digest", ""),
                     .size = f["size"].get<uint64_t>()});
    if (files.back().name.find('/') != std::string::npos || files.back().name.starts_with('.')) {
      return absl::DataLossError(
          StrCat(manifest_key, " names a file '", files.back().name, "' that is not a plain name"));
    }
  }
  // The model file last: it is the step's commit point on disk too.
  std::stable_partition(files.begin(), files.end(),
                        [](const ManifestFile& f) { return f.role != "model"; });
  CKPTD_TRY(env->CreateDirs(dest_dir));
  for (const ManifestFile& f : files) {
    if (env->Stat(StrCat(dest_dir, "/", f.name)).ok()) {
      return absl::AlreadyExistsError(
          StrCat(dest_dir, "/", f.name, " exists: fetch into another directory (-o)"));
    }
  }
  std::vector<std::pair<std::string, std::string>> placed;  // temp, final
  auto cleanup = [&] {
    for (const auto& [temp, final_path] : placed) (void)env->RemoveFile(temp);
  };
  for (const ManifestFile& f : files) {
    const std::string temp = StrCat(dest_dir, "/", env::TempName(f.name));
    placed.emplace_back(temp, StrCat(dest_dir, "/", f.name));
    absl::Status st = Download(env, client, f, part, threads, temp);
    if (st.ok() && f.role == "model") st = VerifyModel(env, temp, f);
    if (!st.ok()) {
      cleanup();
      return st;
    }
    result.bytes += f.size;
  }
  for (const auto& [temp, final_path] : placed) {
    if (absl::Status st = env->RenameFile(temp, final_path); !st.ok()) {
      cleanup();
      return st;
    }
    result.files.push_back(final_path);
  }
  CKPTD_TRY(env->SyncDir(dest_dir));
  result.seconds = NowSeconds() - start;
  return result;
}

}  // namespace ckptd::tier
