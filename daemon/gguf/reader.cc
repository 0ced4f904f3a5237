// GGUF header parser with bounds checks, and the content verifier.
#include "daemon/gguf/reader.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <map>
#include <memory>
#include <string_view>
#include <unordered_set>

#include "absl/memory/memory.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/gguf/encode.h"
#include "daemon/gguf/sha1.h"

namespace ckptd::gguf {
namespace {

// Smallest encodings, used to reject counts that cannot fit before
// allocating anything for them.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;                  // key, type, u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name, 1 dim
// Read window: starts small (most headers are a few KiB, and listing
// thousands of checkpoints reads only headers) and doubles on each refill.
constexpr size_t kFirstWindow = 8 * 1024;
constexpr size_t kMaxWindow = 1024 * 1024;
// Caps that keep a hostile header from costing more memory than a real
// model ever needs (vocabularies are ~256k tokens, models ~100k tensors).
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 24;
constexpr uint64_t kMaxCount = uint64_t{1} << 20;  // key/values, tensors

absl::Status Malformed(uint64_t offset, std::string_view what) {
  return absl::DataLossError(StrCat("malformed GGUF at offset ", offset, ": ", what));
}

// Sequential reads through a buffered window over a ByteSource.
class Cursor {
 public:
  explicit Cursor(const ByteSource& src) : src_(src), size_(src.size()) {}

  uint64_t offset() const { return offset_; }
  uint64_t remaining() const { return size_ - offset_; }

  absl::Status Read(void* dst, uint64_t n, std::string_view what) {
    if (n > remaining()) {
      return Malformed(offset_, StrCat("truncated: ", what, " needs ", n, " bytes, ", remaining(),
                                       " left in the file"));
    }
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      if (offset_ < win_start_ || offset_ >= win_start_ + win_.size()) CKPTD_TRY(Fill());
      size_t k = std::min<uint64_t>(n, win_start_ + win_.size() - offset_);
      std::memcpy(out, win_.data() + (offset_ - win_start_), k);
      out += k;
      offset_ += k;
      n -= k;
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::StatusOr<T> Get(std::string_view what) {
    T v;
    CKPTD_TRY(Read(&v, sizeof(T), what));
    return v;
  }

  absl::StatusOr<std::string> GetString(std::string_view what) {
    uint64_t at = offset_;
    CKPTD_ASSIGN_OR_RETURN(uint64_t len, Get<uint64_t>(what));
    if (len > remaining()) {
      return Malformed(at, StrCat(what, " length ", len, " runs past the end of the file (",
                                  remaining(), " bytes left)"));
    }
    std::string s(len, '\0');
    CKPTD_TRY(Read(s.data(), len, what));
    return s;
  }

 private:
  absl::Status Fill() {
    size_t n = std::min<uint64_t>(window_, size_ - offset_);
    window_ = std::min(window_ * 2, kMaxWindow);
    win_.resize(n);
    win_start_ = offset_;
    return src_.ReadAt(offset_, n, win_.data());
  }

  const ByteSource& src_;
  uint64_t size_;
  uint64_t offset_ = 0;
  uint64_t win_start_ = 0;
  size_t window_ = kFirstWindow;
  std::string win_;
};

template <typename T>
absl::StatusOr<Value> GetValue(Cursor& c, ValueType type) {
  CKPTD_ASSIGN_OR_RETURN(T v, c.Get<T>(StrCat(ValueTypeName(type), " value")));
  return Value(v);
}

absl::StatusOr<Value> ReadScalar(Cursor& c, ValueType type) {
  switch (type) {
    case ValueType::kU8:
      return GetValue<uint8_t>(c, type);
    case ValueType::kI8:
      return GetValue<int8_t>(c, type);
    case ValueType::kU16:
      return GetValue<uint16_t>(c, type);
    case ValueType::kI16:
      return GetValue<int16_t>(c, type);
    case ValueType::kU32:
      return GetValue<uint32_t>(c, type);
    case ValueType::kI32:
      return GetValue<int32_t>(c, type);
    case ValueType::kF32:
      return GetValue<float>(c, type);
    case ValueType::kU64:
      return GetValue<uint64_t>(c, type);
    case ValueType::kI64:
      return GetValue<int64_t>(c, type);
    case ValueType::kF64:
      return GetValue<double>(c, type);
    case ValueType::kBool: {
      uint64_t at = c.offset();
      CKPTD_ASSIGN_OR_RETURN(uint8_t b, c.Get<uint8_t>("bool value"));
      if (b > 1) return Malformed(at, StrCat("bool value is ", int{b}, ", not 0 or 1"));
      return Value(b == 1);
    }
    case ValueType::kString: {
      CKPTD_ASSIGN_OR_RETURN(std::string s, c.GetString("string value"));
      return Value(std::move(s));
    }
    case ValueType::kArray:
      break;
  }
  return absl::InternalError("ReadScalar called for an array");
}

absl::StatusOr<ValueType> ReadValueType(Cursor& c, std::string_view key) {
  uint64_t at = c.offset();
  CKPTD_ASSIGN_OR_RETURN(uint32_t id, c.Get<uint32_t>("value type"));
  if (id >= kValueTypeCount) {
    return Malformed(at, StrCat("unknown value type ", id, " for key '", key, "'"));
  }
  return static_cast<ValueType>(id);
}

absl::StatusOr<Value> ReadValue(Cursor& c, std::string_view key) {
  CKPTD_ASSIGN_OR_RETURN(ValueType type, ReadValueType(c, key));
  if (type != ValueType::kArray) return ReadScalar(c, type);

  uint64_t at = c.offset();
  CKPTD_ASSIGN_OR_RETURN(ValueType elem, ReadValueType(c, key));
  if (elem == ValueType::kArray) {
    return Malformed(at, StrCat("nested array in key '", key, "' (GGUF forbids them)"));
  }
  at = c.offset();
  CKPTD_ASSIGN_OR_RETURN(uint64_t count, c.Get<uint64_t>("array length"));
  uint64_t min_elem = ScalarSize(elem).value_or(8);  // a string is at least its length
  if (count > c.remaining() / min_elem) {
    return Malformed(at, StrCat("array '", key, "' of ", count, " ", ValueTypeName(elem),
                                " cannot fit in the ", c.remaining(), " bytes left"));
  }
  if (count > kMaxArrayElements) {
    return Malformed(at, StrCat("array '", key, "' has ", count, " elements; ckptd reads at most ",
                                kMaxArrayElements));
  }
  Array arr{elem, {}};
  arr.items.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    CKPTD_ASSIGN_OR_RETURN(Value v, ReadScalar(c, elem));
    arr.items.push_back(std::move(v));
  }
  return Value(std::move(arr));
}

absl::Status ReadMetadata(Cursor& c, uint64_t n_kv, Metadata* out) {
  std::unordered_set<std::string> seen;
  for (uint64_t i = 0; i < n_kv; ++i) {
    uint64_t at = c.offset();
    CKPTD_ASSIGN_OR_RETURN(std::string key, c.GetString("metadata key"));
    if (key.empty()) return Malformed(at, StrCat("metadata key ", i, " is empty"));
    if (!seen.insert(key).second) return Malformed(at, StrCat("duplicate key '", key, "'"));
    CKPTD_ASSIGN_OR_RETURN(Value v, ReadValue(c, key));
    CKPTD_TRY(out->Add(std::move(key), std::move(v)));
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorInfo> ReadTensorInfo(Cursor& c) {
  uint64_t at = c.offset();
  TensorInfo t;
  CKPTD_ASSIGN_OR_RETURN(t.name, c.GetString("tensor name"));
  if (t.name.empty()) return Malformed(at, "tensor name is empty");
  if (t.name.size() > kMaxTensorNameBytes) {
    return Malformed(at, StrCat("tensor name of ", t.name.size(), " bytes; ggml allows at most ",
                                kMaxTensorNameBytes));
  }
  uint64_t dims_at = c.offset();
  CKPTD_ASSIGN_OR_RETURN(uint32_t n_dims, c.Get<uint32_t>("tensor n_dims"));
  if (n_dims == 0 || n_dims > kMaxDims) {
    return Malformed(dims_at, StrCat("tensor '", t.name, "' has ", n_dims,
                                     " dims; GGUF allows 1 to ", kMaxDims));
  }
  t.ne.resize(n_dims);
  CKPTD_TRY(c.Read(t.ne.data(), 8 * n_dims, "tensor dims"));
  uint64_t type_at = c.offset();
  CKPTD_ASSIGN_OR_RETURN(uint32_t type_id, c.Get<uint32_t>("tensor type"));
  auto info = LookupTensorType(type_id);
  if (!info) {
    return Malformed(type_at, StrCat("tensor '", t.name, "' has unknown ggml type ", type_id));
  }
  t.type = info->type;
  auto nbytes = TensorBytes(t.type, t.ne);
  if (!nbytes.ok()) {
    return Malformed(dims_at, StrCat("tensor '", t.name, "': ", nbytes.status().message()));
  }
  t.nbytes = *nbytes;
  CKPTD_ASSIGN_OR_RETURN(t.offset, c.Get<uint64_t>("tensor offset"));
  return t;
}

absl::StatusOr<uint32_t> ReadAlignment(const Metadata& md) {
  const Value* v = md.Find(kKeyAlignment);
  if (v == nullptr) return kDefaultAlignment;
  const uint32_t* a = v->get_if<uint32_t>();
  if (a == nullptr) {
    return absl::DataLossError(
        StrCat("malformed GGUF: general.alignment is ", ValueTypeName(v->type()), ", must be u32"));
  }
  if (!std::has_single_bit(*a)) {
    return absl::DataLossError(
        StrCat("malformed GGUF: general.alignment ", *a, " is not a power of two"));
  }
  return *a;
}

absl::Status CheckTensorData(const GgufFile& f) {
  const uint64_t data_bytes = f.file_size - f.data_offset;
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(f.tensors.size());
  for (const TensorInfo& t : f.tensors) {
    if (t.offset % f.alignment != 0) {
      return absl::DataLossError(StrCat("malformed GGUF: tensor '", t.name, "' offset ", t.offset,
                                        " is not a multiple of the alignment ", f.alignment));
    }
    if (t.offset > data_bytes || t.nbytes > data_bytes - t.offset) {
      return absl::DataLossError(StrCat(
          "malformed GGUF: tensor '", t.name, "' data [", t.offset, ", ", t.offset + t.nbytes,
          ") runs past the end of the file (data section has ", data_bytes, " bytes)"));
    }
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& a = *by_offset[i - 1];
    const TensorInfo& b = *by_offset[i];
    if (b.offset < a.offset + a.nbytes) {
      return absl::DataLossError(StrCat("malformed GGUF: tensors '", a.name, "' and '", b.name,
                                        "' overlap at data offset ", b.offset));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GgufFile> ReadHeader(const ByteSource& src) {
  Cursor c(src);
  GgufFile f;
  f.file_size = src.size();
  CKPTD_ASSIGN_OR_RETURN(uint32_t magic, c.Get<uint32_t>("magic"));
  if (magic != kMagic) {
    char m[4];
    std::memcpy(m, &magic, 4);
    for (char& ch : m) ch = (ch >= 0x20 && ch < 0x7f) ? ch : '?';
    return Malformed(0, StrCat("bad magic '", std::string_view(m, 4), "': not a GGUF file"));
  }
  CKPTD_ASSIGN_OR_RETURN(f.version, c.Get<uint32_t>("version"));
  if (f.version != 2 && f.version != 3) {
    return Malformed(
        4, StrCat("unsupported GGUF version ", f.version, " (ckptd reads versions 2 and 3)"));
  }
  CKPTD_ASSIGN_OR_RETURN(uint64_t n_tensors, c.Get<uint64_t>("tensor count"));
  CKPTD_ASSIGN_OR_RETURN(uint64_t n_kv, c.Get<uint64_t>("metadata count"));
  if (n_kv > c.remaining() / kMinKvBytes) {
    return Malformed(
        16, StrCat("metadata count ", n_kv, " cannot fit in the ", c.remaining(), " bytes left"));
  }
  if (n_tensors > c.remaining() / kMinTensorInfoBytes) {
    return Malformed(
        8, StrCat("tensor count ", n_tensors, " cannot fit in the ", c.remaining(), " bytes left"));
  }
  if (n_kv > kMaxCount || n_tensors > kMaxCount) {
    return Malformed(8, StrCat(n_tensors, " tensors and ", n_kv,
                               " key/values; ckptd reads at most ", kMaxCount, " of each"));
  }
  CKPTD_TRY(ReadMetadata(c, n_kv, &f.metadata));
  CKPTD_ASSIGN_OR_RETURN(f.alignment, ReadAlignment(f.metadata));

  std::unordered_set<std::string> names;
  f.tensors.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    uint64_t at = c.offset();
    CKPTD_ASSIGN_OR_RETURN(TensorInfo t, ReadTensorInfo(c));
    if (!names.insert(t.name).second) {
      return Malformed(at, StrCat("duplicate tensor name '", t.name, "'"));
    }
    f.tensors.push_back(std::move(t));
  }
  f.header_bytes = c.offset();
  if (!AlignUp(c.offset(), f.alignment, &f.data_offset) || f.data_offset > f.file_size) {
    return Malformed(c.offset(), StrCat("truncated: data section would start at ", f.data_offset,
                                        ", file has ", f.file_size, " bytes"));
  }
  CKPTD_TRY(CheckTensorData(f));
  return f;
}

absl::StatusOr<std::vector<Digest128>> StoredTensorDigests(const GgufFile& file) {
  const Value* per = file.metadata.Find(kKeyTensorDigests);
  const Array* arr = per ? per->get_if<Array>() : nullptr;
  std::vector<Digest128> out;
  if (arr == nullptr) return out;
  if (arr->items.size() != file.tensors.size()) {
    return absl::DataLossError(StrCat(kKeyTensorDigests, " has ", arr->items.size(),
                                      " entries for ", file.tensors.size(), " tensors"));
  }
  for (size_t i = 0; i < arr->items.size(); ++i) {
    const std::string* hex = arr->items[i].get_if<std::string>();
    auto d = hex ? ParseDigestHex(*hex) : absl::InvalidArgumentError("not a string");
    if (!d.ok()) {
      return absl::DataLossError(
          StrCat("the stored digest of tensor '", file.tensors[i].name, "' is unreadable"));
    }
    out.push_back(*d);
  }
  return out;
}

std::vector<SameTensor> TensorsAlsoIn(std::span<const TensorInfo> tensors, const GgufFile& other) {
  std::vector<SameTensor> out;
  absl::StatusOr<std::vector<Digest128>> digests = StoredTensorDigests(other);
  if (!digests.ok() || digests->empty()) return out;
  std::map<std::string_view, size_t> index;
  for (size_t j = 0; j < other.tensors.size(); ++j) index[other.tensors[j].name] = j;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    auto it = index.find(t.name);
    if (it == index.end()) continue;
    const TensorInfo& u = other.tensors[it->second];
    if (u.type != t.type || u.ne != t.ne || u.nbytes != t.nbytes) continue;
    out.push_back({.index = i, .other = it->second, .digest = (*digests)[it->second]});
  }
  return out;
}

namespace {

bool OneBitApart(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  int bits = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    bits += std::popcount(static_cast<unsigned>(static_cast<uint8_t>(a[i] ^ b[i])));
  }
  return bits == 1;
}

}  // namespace

absl::StatusOr<bool> CheckMetadataDigest(const GgufFile& file) {
  const Value* stored = file.metadata.Find(kKeyMetadataDigest);
  if (stored == nullptr) {
    for (const auto& [key, value] : file.metadata.entries()) {
      if (OneBitApart(key, kKeyMetadataDigest)) {
        return absl::DataLossError(StrCat("metadata key '", key, "' is one bit away from ",
                                          kKeyMetadataDigest, ": the header is damaged"));
      }
    }
    return false;
  }
  const std::string* str = stored->get_if<std::string>();
  if (str == nullptr) {
    return absl::DataLossError(StrCat(kKeyMetadataDigest, " is ", ValueTypeName(stored->type()),
                                      ", not a digest: the header is damaged"));
  }
  auto want = ParseContentDigestString(*str);
  if (!want.ok()) {
    return absl::DataLossError(
        StrCat(kKeyMetadataDigest, " '", *str, "' is not a digest: the header is damaged"));
  }
  const Digest128 got = MetadataDigest(file.version, file.metadata, file.tensors);
  if (got != *want) {
    return absl::DataLossError(StrCat("metadata digest mismatch: stored ", *str, ", computed ",
                                      ContentDigestString(got),
                                      " (a metadata value or the tensor table was changed)"));
  }
  return true;
}

DataVerifier::DataVerifier(const GgufFile& file, uint64_t from) : file_(file), pos_(from) {}

absl::StatusOr<std::unique_ptr<DataVerifier>> DataVerifier::Start(const GgufFile& file,
                                                                  uint64_t from) {
  const Value* stored = file.metadata.Find(kKeyContentDigest);
  const std::string* stored_str = stored ? stored->get_if<std::string>() : nullptr;
  if (stored_str == nullptr) {
    return absl::FailedPreconditionError(
        "no stored digest: the file has no ckpt.content_digest key (not written by ckptd, or "
        "written without digests); nothing to verify against");
  }
  auto v = absl::WrapUnique(new DataVerifier(file, std::min(from, file.header_bytes)));
  CKPTD_ASSIGN_OR_RETURN(v->want_, ParseContentDigestString(*stored_str));
  v->report_.stored_content_digest = *stored_str;
  // The header first: it costs no data read.
  CKPTD_ASSIGN_OR_RETURN(v->report_.metadata_covered, CheckMetadataDigest(file));
  const Value* per = file.metadata.Find(kKeyTensorDigests);
  const Array* arr = per ? per->get_if<Array>() : nullptr;
  // A list of the wrong length names no tensor: the content digest, which
  // covers every tensor digest, decides.
  if (arr != nullptr && arr->items.size() == file.tensors.size()) v->stored_ = &arr->items;
  v->order_.resize(file.tensors.size());
  for (size_t i = 0; i < v->order_.size(); ++i) v->order_[i] = i;
  std::stable_sort(v->order_.begin(), v->order_.end(), [&](size_t a, size_t b) {
    return file.tensors[a].offset < file.tensors[b].offset;
  });
  v->report_.computed.tensors.resize(file.tensors.size());
  const Value* scheme = file.metadata.Find(kKeyUuidScheme);
  if (scheme && scheme->get_if<std::string>() &&
      *scheme->get_if<std::string>() == kGgufHashScheme) {
    v->sha1_ = std::make_unique<Sha1>();
    v->sha1_->Update(kGgufHashNamespace.data(), kGgufHashNamespace.size());
    // gguf-hash hashes the tensors in table order; streamed in file order,
    // that is the same hash only when the two orders agree.
    v->sha1_needs_table_order_ = !std::is_sorted(v->order_.begin(), v->order_.end());
  }
  return v;
}

absl::Status DataVerifier::EndTensorsAt(uint64_t pos) {
  while (next_ < order_.size()) {
    const size_t i = order_[next_];
    const TensorInfo& t = file_.tensors[i];
    if (pos < file_.data_offset + t.offset + t.nbytes) return absl::OkStatus();
    const Digest128 got = hasher_.Finish();
    hasher_.Reset();
    report_.computed.tensors[i] = got;
    if (stored_ != nullptr) {
      const std::string* hex = (*stored_)[i].get_if<std::string>();
      auto stored_d = hex ? ParseDigestHex(*hex) : absl::InvalidArgumentError("not a string");
      if (!stored_d.ok() || *stored_d != got) {
        return absl::DataLossError(StrCat("tensor '", t.name, "' (index ", i,
                                          ") does not match its digest: stored ", hex ? *hex : "?",
                                          ", computed ", DigestHex(got)));
      }
    }
    ++next_;
  }
  return absl::OkStatus();
}

absl::Status DataVerifier::Update(std::string_view bytes) {
  if (bytes.size() > file_.file_size - pos_) {
    return absl::DataLossError(StrCat(bytes.size() - (file_.file_size - pos_),
                                      " bytes more than the file's ", file_.file_size));
  }
  while (!bytes.empty()) {
    CKPTD_TRY(EndTensorsAt(pos_));
    size_t n;
    if (pos_ < file_.header_bytes) {
      n = std::min<uint64_t>(bytes.size(), file_.header_bytes - pos_);  // parsed already
    } else if (next_ == order_.size() ||
               pos_ < file_.data_offset + file_.tensors[order_[next_]].offset) {
      // Alignment padding, before a tensor or the end of the file: zero.
      const uint64_t end = next_ == order_.size()
                               ? file_.file_size
                               : file_.data_offset + file_.tensors[order_[next_]].offset;
      n = std::min<uint64_t>(bytes.size(), end - pos_);
      const std::string_view gap = bytes.substr(0, n);
      if (const size_t nz = gap.find_first_not_of('\0'); nz != std::string_view::npos) {
        return absl::DataLossError(StrCat("byte at offset ", pos_ + nz,
                                          " lies between tensors (padding) and is not zero"));
      }
    } else {
      const TensorInfo& t = file_.tensors[order_[next_]];
      n = std::min<uint64_t>(bytes.size(), file_.data_offset + t.offset + t.nbytes - pos_);
      hasher_.Update(bytes.data(), n);
      if (sha1_ && !sha1_needs_table_order_) sha1_->Update(bytes.data(), n);
    }
    if (n == 0) {  // a layout the parser let through that makes no progress: never spin
      return absl::InternalError(StrCat("verify: no progress at byte ", pos_));
    }
    pos_ += n;
    bytes.remove_prefix(n);
  }
  return EndTensorsAt(pos_);
}

absl::StatusOr<VerifyReport> DataVerifier::Finish(const ByteSource* src) {
  if (pos_ != file_.file_size) {
    return absl::DataLossError(
        StrCat("the data ends at byte ", pos_, " of the file's ", file_.file_size));
  }
  CKPTD_TRY(EndTensorsAt(pos_));
  ContentDigest& c = report_.computed;
  ContentDigestBuilder builder;
  for (size_t i = 0; i < file_.tensors.size(); ++i) {
    const TensorInfo& t = file_.tensors[i];
    builder.AddTensor(t.name, t.type, t.ne, t.nbytes, c.tensors[i]);
  }
  c.content = builder.Finish();
  if (sha1_ && sha1_needs_table_order_) {
    if (src == nullptr) {
      return absl::FailedPreconditionError(
          "the gguf-hash uuid covers the tensors in table order, which is not the file's order: "
          "verify the file by reading it");
    }
    constexpr size_t kChunk = 4 << 20;
    auto buf = std::make_unique_for_overwrite<char[]>(kChunk);
    for (const TensorInfo& t : file_.tensors) {
      for (uint64_t done = 0; done < t.nbytes;) {
        const size_t n = std::min<uint64_t>(kChunk, t.nbytes - done);
        CKPTD_TRY(src->ReadAt(file_.data_offset + t.offset + done, n, buf.get()));
        sha1_->Update(buf.get(), n);
        done += n;
      }
    }
  }
  c.uuid = sha1_ ? UuidV5FromSha1(sha1_->Finish()) : UuidFromDigest(c.content);
  if (c.content != want_) {
    return absl::DataLossError(
        StrCat("content digest mismatch: stored ", report_.stored_content_digest, ", computed ",
               ContentDigestString(c.content), " (tensor names, types or shapes changed)"));
  }
  const Value* uuid = file_.metadata.Find(kKeyUuid);
  const std::string* uuid_str = uuid ? uuid->get_if<std::string>() : nullptr;
  if (uuid_str != nullptr && *uuid_str != c.uuid) {
    return absl::DataLossError(
        StrCat("general.uuid ", *uuid_str, " does not match the content (expected ", c.uuid, ")"));
  }
  return std::move(report_);
}

absl::StatusOr<VerifyReport> Verify(const ByteSource& src, const GgufFile& file) {
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<DataVerifier> v,
                         DataVerifier::Start(file, file.header_bytes));
  constexpr size_t kChunk = 4 << 20;
  auto buf = std::make_unique_for_overwrite<char[]>(kChunk);
  for (uint64_t at = file.header_bytes; at < file.file_size;) {
    const size_t n = std::min<uint64_t>(kChunk, file.file_size - at);
    CKPTD_TRY(src.ReadAt(at, n, buf.get()));
    CKPTD_TRY(v->Update(std::string_view(buf.get(), n)));
    at += n;
  }
  return v->Finish(&src);
}

}  // namespace ckptd::gguf
