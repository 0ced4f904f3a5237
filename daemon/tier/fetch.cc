// Downloading a step: manifest, ranged GETs in parallel, checks, atomic placement.
#include "daemon/tier/fetch.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/gguf/reader.h"
#include "daemon/tier/remote_keys.h"
#include "daemon/tier/remote_records.h"

namespace ckptd::tier {
namespace {

// The first bytes of a file whose size is known: ReadHeader parses a header
// from the first window, and a read past it (a header longer than the
// window) is OutOfRange, which no header check returns.
class PrefixSource final : public ByteSource {
 public:
  PrefixSource(std::string_view prefix, uint64_t size) : prefix_(prefix), size_(size) {}
  uint64_t size() const override { return size_; }
  absl::Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset > prefix_.size() || n > prefix_.size() - offset) {
      return absl::OutOfRangeError("the header runs past the first window");
    }
    if (n > 0) std::memcpy(dst, prefix_.data() + offset, n);
    return absl::OkStatus();
  }

 private:
  std::string_view prefix_;
  uint64_t size_;
};

// A checkpoint file's digests (gguf::Verify's checks), checked on its bytes
// as they are appended in order, so the file is not read back. When its
// header does not fit in the first window, `read_back` is set and the
// caller verifies the file on disk instead.
struct StreamVerify {
  absl::Status Update(std::string_view window, bool first, uint64_t file_size) {
    if (read_back) return absl::OkStatus();
    if (first) {
      absl::StatusOr<gguf::GgufFile> h = gguf::ReadHeader(PrefixSource(window, file_size));
      if (absl::IsOutOfRange(h.status())) {
        read_back = true;
        return absl::OkStatus();
      }
      CKPTD_TRY(h.status());
      header = *std::move(h);
      CKPTD_ASSIGN_OR_RETURN(verifier, gguf::DataVerifier::Start(*header));
    }
    return verifier->Update(window);
  }

  std::optional<gguf::GgufFile> header;
  std::unique_ptr<gguf::DataVerifier> verifier;  // reads `header`
  bool read_back = false;
};

// Downloads one object into `temp` in part-sized ranges, up to `threads`
// in flight: each thread takes the next window, GETs it, and appends it when
// every window before it has been appended, so the file is written in order
// while the next windows are already arriving. With `check_etag`, the bytes'
// MD5s (each upload part's, then the multipart ETag) must give the ETag the
// manifest recorded; without it the caller proves the bytes another way.
// With `check`, each window also goes through it as it is appended.
absl::Status Download(env::Env* env, ObjectStore& store, const RemoteFile& f, uint64_t part,
                      size_t threads, const std::string& temp, bool check_etag,
                      StreamVerify* check) {
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::WritableFile> out,
                         env->NewWritableFile(temp, env::DirectIo::kAuto));
  // The upload's parts (the manifest's lengths where some were copied,
  // else part_size each), read in windows of at most `part` bytes; the
  // ETag is the MD5 of each upload part's MD5.
  std::vector<uint64_t> lengths = f.part_lengths;
  if (lengths.empty()) {
    for (uint64_t at = 0; at < f.size; at += part) lengths.push_back(std::min(part, f.size - at));
  }
  uint64_t total = 0;
  for (uint64_t n : lengths) total += n;
  if (total != f.size) {
    return absl::DataLossError(StrCat(f.key, ": the manifest's part lengths add up to ", total,
                                      " bytes, not its ", f.size));
  }
  struct Window {
    size_t part;
    uint64_t offset, length;
  };
  std::vector<Window> windows;
  for (size_t i = 0, at = 0; i < lengths.size(); at += lengths[i], ++i) {
    for (uint64_t w = 0; w < lengths[i]; w += part) {
      windows.push_back({i, at + w, std::min(part, lengths[i] - w)});
    }
  }
  const size_t nparts = lengths.size();
  std::vector<std::string> md5s;
  Md5Stream sum;
  std::atomic<size_t> next{0};
  absl::Mutex mu;
  size_t written = 0;  // windows appended, in order
  absl::Status result;
  auto worker = [&] {
    while (true) {
      const size_t i = next.fetch_add(1);
      if (i >= windows.size()) return;
      const Window& w = windows[i];
      {
        absl::MutexLock lock(&mu);
        if (!result.ok()) return;
      }
      absl::StatusOr<std::string> got =
          store.Get(f.key, ByteRange{.offset = w.offset, .length = w.length});
      absl::MutexLock lock(&mu);
      // This window's turn: every earlier one appended, or the download failed.
      auto turn = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return written == i || !result.ok(); };
      mu.Await(absl::Condition(&turn));
      if (!result.ok()) return;
      absl::Status st = got.status();
      if (st.ok() && check_etag) {
        sum.Update(*got);
        if (i + 1 == windows.size() || windows[i + 1].part != w.part) {
          md5s.push_back(sum.FinishHex());
        }
      }
      if (st.ok() && check != nullptr) {
        st = check->Update(*got, i == 0, f.size);
        if (!st.ok()) st = absl::DataLossError(StrCat(f.key, ": ", st.message()));
      }
      if (st.ok()) st = out->Append(*got);
      if (!st.ok()) {
        result = st;
        return;
      }
      ++written;
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < std::min(threads, windows.size()); ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& th : pool) th.join();
  CKPTD_TRY(result);
  CKPTD_TRY(out->Sync());
  CKPTD_TRY(out->Close());
  if (!check_etag) return absl::OkStatus();
  const std::string etag = nparts <= 1 ? (nparts == 0 ? Md5Hex("") : md5s[0]) : MultipartEtag(md5s);
  if (etag != f.etag) {
    return absl::DataLossError(
        StrCat(f.key, ": the bytes downloaded have ETag ", etag, "; the manifest says ", f.etag));
  }
  return absl::OkStatus();
}

// A checkpoint file's tensor digests, content digest and uuid, as `ckptctl
// verify` checks them (on the bytes as they arrived, or else read back from
// `path`), and for a model file the content digest the manifest recorded.
absl::Status FinishCheckpointFile(env::Env* env, const std::string& path, const RemoteFile& f,
                                  StreamVerify& check) {
  // Read past the page cache: the file was just written with O_DIRECT, and
  // a buffered pass would copy every byte into the cache first.
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<env::RandomAccessFile> direct,
                         env->OpenForDirectRead(path));
  const env::DirectReadSource file(std::move(direct));
  absl::StatusOr<gguf::VerifyReport> report;
  if (check.read_back) {
    absl::StatusOr<gguf::GgufFile> header = gguf::ReadHeader(file);
    report = header.ok() ? gguf::Verify(file, *header) : header.status();
  } else if (check.verifier == nullptr) {
    report = absl::DataLossError("no bytes arrived");
  } else {
    report = check.verifier->Finish(&file);  // reads only for an out-of-order gguf-hash uuid
  }
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

absl::StatusOr<FetchResult> FetchStep(env::Env* env, ObjectStore& store,
                                      const FetchOptions& options, const std::string& run_id,
                                      std::optional<uint64_t> step, const std::string& dest_dir) {
  const double start = NowSeconds();
  const RunKeys keys(options.prefix, run_id);
  std::string manifest_key;
  if (step) {
    manifest_key = keys.Manifest(*step);
  } else {
    auto latest = store.Get(keys.Latest());
    if (absl::IsNotFound(latest.status())) {
      return absl::NotFoundError(StrCat("run '", run_id, "' has no latest object in the store (",
                                        keys.Latest(), "): nothing uploaded yet"));
    }
    if (!latest.ok()) return latest.status();
    CKPTD_ASSIGN_OR_RETURN(LatestRecord l, LatestRecord::Parse(*latest, keys.Latest()));
    manifest_key = l.manifest;
  }
  auto text = store.Get(manifest_key);
  if (absl::IsNotFound(text.status())) {
    return absl::NotFoundError(StrCat("no manifest ", manifest_key,
                                      " in the store: that step was never uploaded completely"));
  }
  if (!text.ok()) return text.status();
  CKPTD_ASSIGN_OR_RETURN(StepManifest m, StepManifest::Parse(*text, manifest_key));
  if (step && m.facts.step != *step) {
    return absl::DataLossError(StrCat(manifest_key, " describes step ", m.facts.step, ", not ",
                                      *step, ": the store's records disagree; nothing fetched"));
  }
  const uint64_t part = m.facts.part_size;
  if (part == 0) return absl::DataLossError(StrCat(manifest_key, " names no part_size"));
  FetchResult result{.step = m.facts.step, .uuid = m.facts.uuid, .world_size = m.world_size};
  if (part > options.max_memory_bytes) {
    return absl::InvalidArgumentError(StrCat("the step was uploaded in parts of ", part,
                                             " bytes, more than the memory allowed (",
                                             options.max_memory_bytes, "): raise it"));
  }
  const size_t threads = static_cast<size_t>(
      std::max<uint64_t>(1, std::min<uint64_t>(static_cast<uint64_t>(std::max(1, options.parallel)),
                                               options.max_memory_bytes / part)));
  std::vector<RemoteFile> files;
  for (const RemoteFile& f : m.facts.files) {
    if (options.rank && result.world_size > 0 && f.rank.value_or(0) != *options.rank) {
      continue;  // another rank's part
    }
    if (f.name.find('/') != std::string::npos || f.name.starts_with('.') || f.name.empty()) {
      return absl::DataLossError(
          StrCat(manifest_key, " names a file '", f.name, "' that is not a plain name"));
    }
    files.push_back(f);
  }
  // The model file last: it is the step's commit point on disk too.
  std::stable_partition(files.begin(), files.end(),
                        [](const RemoteFile& f) { return f.role != "model"; });
  CKPTD_TRY(env->CreateDirs(dest_dir));
  for (const RemoteFile& f : files) {
    if (env->Stat(StrCat(dest_dir, "/", f.name)).ok()) {
      return absl::AlreadyExistsError(
          StrCat(dest_dir, "/", f.name, " exists: fetch into another directory (-o)"));
    }
  }
  std::vector<std::pair<std::string, std::string>> placed;  // temp, final
  auto cleanup = [&] {
    for (const auto& [temp, final_path] : placed) (void)env->RemoveFile(temp);
  };
  for (const RemoteFile& f : files) {
    const std::string temp = StrCat(dest_dir, "/", env::TempName(f.name));
    placed.emplace_back(temp, StrCat(dest_dir, "/", f.name));
    // Checkpoint files are proved by their own digests, which cover every
    // byte: where the transport also proves the bytes arrived (TLS), their
    // MD5 (the ETag check, an MD5 pass per byte) adds nothing. Exports and
    // every file over a plain transport are checked against the ETag.
    const bool checkpoint_file = f.role == "model" || f.role == "train";
    const bool check_etag = !(checkpoint_file && store.capabilities().transport_protects_bytes);
    const bool verify = f.role == "model" || !check_etag;
    StreamVerify check;
    absl::Status st =
        Download(env, store, f, part, threads, temp, check_etag, verify ? &check : nullptr);
    if (st.ok() && verify) st = FinishCheckpointFile(env, temp, f, check);
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
