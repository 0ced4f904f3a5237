// MergeParts: read every part's header, plan the merged tensors (whole
// ones once, slices tiled exactly), then stream the bytes in plan order.
#include "daemon/storage/merge.h"

#include <algorithm>
#include <map>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/gguf/digest.h"
#include "daemon/gguf/reader.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/checkpoint_writer.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/split_part.h"

namespace ckptd::storage {
namespace {

constexpr uint64_t kChunk = 8 << 20;

struct Part {
  std::string path;
  std::unique_ptr<env::RandomAccessFile> file;
  gguf::GgufFile header;
  std::vector<gguf::Digest128> digests;
};

struct Slice {
  size_t part = 0;
  size_t tensor = 0;  // index in the part
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct Merged {
  gguf::TensorSpec spec;
  std::vector<Slice> slices;  // one, whole, when not sliced
  bool sliced = false;
  uint32_t dim = 0;
};

absl::Status ReadExactly(const env::RandomAccessFile& f, uint64_t offset, size_t n, char* dst) {
  CKPTD_ASSIGN_OR_RETURN(size_t got, f.ReadUpTo(offset, n, dst));
  if (got != n) return absl::DataLossError(StrCat(f.path(), ": shorter than its header says"));
  return absl::OkStatus();
}

template <typename T>
const T* Get(const gguf::Metadata& md, const std::string& key) {
  const gguf::Value* v = md.Find(key);
  return v ? v->get_if<T>() : nullptr;
}

}  // namespace

absl::StatusOr<MergeResult> MergeParts(env::Env* env, const std::string& first_part,
                                       const std::string& out) {
  std::string dir = ".", base = first_part;
  if (size_t slash = first_part.rfind('/'); slash != std::string::npos) {
    dir = slash == 0 ? "/" : first_part.substr(0, slash);
    base = first_part.substr(slash + 1);
  }
  const std::optional<SplitName> name = ParseSplitFileName(base);
  if (!name || name->rank != 0) {
    return absl::InvalidArgumentError(StrCat(
        first_part, " is not the first part of a multi-rank step (step_N-00001-of-WWWWW.gguf)"));
  }
  MergeResult result{.step = name->step, .world_size = name->world_size};
  std::vector<Part> parts(name->world_size);
  for (uint32_t r = 0; r < name->world_size; ++r) {
    Part& p = parts[r];
    p.path = StrCat(dir, "/", SplitFileName(name->step, r, name->world_size));
    auto file = env->OpenForRead(p.path);
    if (!file.ok()) {
      return absl::NotFoundError(StrCat("part ", r + 1, " of ", name->world_size, " (", p.path,
                                        "): ", file.status().message()));
    }
    p.file = std::move(*file);
    CKPTD_ASSIGN_OR_RETURN(p.header, gguf::ReadHeader(*p.file));
    const uint16_t* no = Get<uint16_t>(p.header.metadata, kSplitNo);
    const uint16_t* count = Get<uint16_t>(p.header.metadata, kSplitCount);
    if (!no || !count || *no != r || *count != name->world_size) {
      return absl::InvalidArgumentError(StrCat(
          p.path, ": its split.no/split.count do not say part ", r + 1, " of ", name->world_size));
    }
    CKPTD_ASSIGN_OR_RETURN(p.digests, gguf::StoredTensorDigests(p.header));
  }
  // The merged tensors, in order of first appearance.
  std::vector<Merged> merged;
  std::map<std::string, size_t> index;
  for (size_t pi = 0; pi < parts.size(); ++pi) {
    const gguf::GgufFile& h = parts[pi].header;
    for (size_t ti = 0; ti < h.tensors.size(); ++ti) {
      const gguf::TensorInfo& t = h.tensors[ti];
      auto slice = ShardSliceOf(h.metadata, t);
      if (!slice.ok()) {
        return absl::InvalidArgumentError(StrCat(parts[pi].path, ": ", slice.status().message()));
      }
      auto [it, fresh] = index.try_emplace(t.name, merged.size());
      if (fresh) merged.push_back({.spec = {t.name, t.type, t.ne}});
      Merged& m = merged[it->second];
      if (!*slice) {
        if (!fresh) {
          return absl::InvalidArgumentError(
              StrCat("tensor '", t.name, "' is in more than one part whole (", parts[pi].path,
                     "); each tensor belongs to one rank, or is sliced with ckpt.shard keys"));
        }
        m.slices.push_back({pi, ti, 0, 0});
        continue;
      }
      const policy::TensorSlice& s = **slice;
      if (fresh) {
        m.sliced = true;
        m.dim = s.dim;
        m.spec.ne = s.full_ne;
      } else if (!m.sliced || m.dim != s.dim || m.spec.ne != s.full_ne || m.spec.type != t.type) {
        return absl::InvalidArgumentError(
            StrCat("tensor '", t.name,
                   "': the parts disagree on its type, full shape or sliced "
                   "dimension (",
                   parts[pi].path, ")"));
      }
      m.slices.push_back({pi, ti, s.offset, s.length});
    }
  }
  // Each sliced tensor tiled exactly: no gap, no overlap, nothing past the end.
  for (Merged& m : merged) {
    if (!m.sliced) continue;
    ++result.sliced_tensors;
    std::sort(m.slices.begin(), m.slices.end(),
              [](const Slice& a, const Slice& b) { return a.offset < b.offset; });
    uint64_t at = 0;
    for (const Slice& s : m.slices) {
      if (s.offset != at) {
        return absl::InvalidArgumentError(
            StrCat("tensor '", m.spec.name, "': its slices along dim ", m.dim,
                   s.offset > at ? " leave a gap at " : " overlap at ", std::min(at, s.offset)));
      }
      at += s.length;
    }
    if (at != m.spec.ne[m.dim]) {
      return absl::InvalidArgumentError(StrCat("tensor '", m.spec.name, "': its slices cover ", at,
                                               " of ", m.spec.ne[m.dim], " along dim ", m.dim));
    }
  }
  // The first part's metadata, without what made it a part or a written file.
  SavePlan plan;
  plan.step = name->step;
  plan.alignment = parts[0].header.alignment;
  for (const auto& [key, value] : parts[0].header.metadata.entries()) {
    if (key.starts_with("split.") || key.starts_with(kShardPrefix) || key == gguf::kKeyUuid ||
        key == gguf::kKeyContentDigest || key == gguf::kKeyTensorDigests ||
        key == "general.alignment") {
      continue;
    }
    plan.model_metadata.Set(key, value);
  }
  plan.model_metadata.Set("ckpt.merged_from_parts", gguf::Value(name->world_size));
  for (const Merged& m : merged) plan.tensors.push_back({m.spec, TensorGroup::kModel});
  std::string out_dir = ".";
  if (size_t slash = out.rfind('/'); slash != std::string::npos) {
    out_dir = slash == 0 ? "/" : out.substr(0, slash);
  }
  CKPTD_ASSIGN_OR_RETURN(auto writer, CheckpointWriter::Create(env, out_dir, std::move(plan)));
  // Every part tensor is read whole exactly once (hashed as it goes); a
  // sliced tensor's rows interleave the slices, so its parts are hashed by
  // reading each slice in order per outer index.
  std::string buf;
  auto copy = [&](const Part& p, uint64_t offset, uint64_t n, gguf::TensorHasher* hasher) {
    for (uint64_t done = 0; done < n;) {
      const uint64_t k = std::min(kChunk, n - done);
      buf.resize(k);
      CKPTD_TRY(ReadExactly(*p.file, offset + done, k, buf.data()));
      if (hasher) hasher->Update(buf.data(), k);
      CKPTD_TRY(writer->WriteData(buf));
      done += k;
    }
    return absl::OkStatus();
  };
  auto check = [&](const Part& p, size_t ti, gguf::TensorHasher& hasher) -> absl::Status {
    if (!p.digests.empty() && !(hasher.Finish() == p.digests[ti])) {
      return absl::DataLossError(StrCat("tensor '", p.header.tensors[ti].name, "' of ", p.path,
                                        " does not match its recorded digest; nothing written"));
    }
    return absl::OkStatus();
  };
  for (const Merged& m : merged) {
    if (!m.sliced) {
      const Slice& s = m.slices[0];
      const Part& p = parts[s.part];
      const gguf::TensorInfo& t = p.header.tensors[s.tensor];
      gguf::TensorHasher hasher;
      CKPTD_TRY(copy(p, p.header.data_offset + t.offset, t.nbytes, &hasher));
      CKPTD_TRY(check(p, s.tensor, hasher));
      continue;
    }
    // View the tensor as [outer][ne[dim]][inner]: each slice is [outer][len][inner].
    uint64_t outer = 1;
    for (size_t d = m.dim + 1; d < m.spec.ne.size(); ++d) outer *= m.spec.ne[d];
    std::vector<uint64_t> row_ne(m.spec.ne.begin(), m.spec.ne.begin() + m.dim + 1);
    std::vector<gguf::TensorHasher> hashers(m.slices.size());
    std::vector<uint64_t> row_bytes(m.slices.size());
    for (size_t i = 0; i < m.slices.size(); ++i) {
      row_ne[m.dim] = m.slices[i].length;
      CKPTD_ASSIGN_OR_RETURN(row_bytes[i], gguf::TensorBytes(m.spec.type, row_ne));
    }
    for (uint64_t o = 0; o < outer; ++o) {
      for (size_t i = 0; i < m.slices.size(); ++i) {
        const Part& p = parts[m.slices[i].part];
        const gguf::TensorInfo& t = p.header.tensors[m.slices[i].tensor];
        CKPTD_TRY(
            copy(p, p.header.data_offset + t.offset + o * row_bytes[i], row_bytes[i], &hashers[i]));
      }
    }
    for (size_t i = 0; i < m.slices.size(); ++i) {
      CKPTD_TRY(check(parts[m.slices[i].part], m.slices[i].tensor, hashers[i]));
    }
  }
  CKPTD_TRY(writer->Finish());
  CKPTD_TRY(env->RenameFile(writer->model().temp_path, out));
  writer->Release();
  CKPTD_TRY(env->SyncDir(out_dir));
  result.tensors = merged.size();
  result.bytes = writer->model().bytes;
  result.uuid = writer->model().digest.uuid;
  return result;
}

}  // namespace ckptd::storage
