// Layout planning and validation of a GGUF file to be written.
#include "daemon/gguf/layout.h"

#include <unordered_set>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/gguf/digest.h"

namespace ckptd::gguf {
namespace {

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

absl::StatusOr<uint32_t> ResolveAlignment(Metadata* metadata, uint32_t wanted) {
  if (!IsPowerOfTwo(wanted)) {
    return absl::InvalidArgumentError(StrCat("alignment ", wanted, " is not a power of two"));
  }
  const Value* v = metadata->Find(kKeyAlignment);
  if (v == nullptr) {
    if (wanted != kDefaultAlignment) metadata->Set(std::string(kKeyAlignment), Value(wanted));
    return wanted;
  }
  const uint32_t* a = v->get_if<uint32_t>();
  if (a == nullptr) {
    return absl::InvalidArgumentError(
        StrCat("general.alignment must be u32, got ", ValueTypeName(v->type())));
  }
  if (!IsPowerOfTwo(*a)) {
    return absl::InvalidArgumentError(StrCat("general.alignment ", *a, " is not a power of two"));
  }
  if (wanted != kDefaultAlignment && wanted != *a) {
    return absl::InvalidArgumentError(
        StrCat("general.alignment ", *a, " disagrees with requested alignment ", wanted));
  }
  return *a;
}

absl::Status ValidateTensor(const TensorSpec& t) {
  if (std::string problem = NameProblem(t.name); !problem.empty()) {
    return absl::InvalidArgumentError(
        StrCat("tensor name '", Printable(t.name), "' ", problem,
               "; names are UTF-8 without NUL or control characters"));
  }
  if (t.name.size() > kMaxTensorNameBytes) {
    return absl::InvalidArgumentError(StrCat("tensor name '", t.name, "' is ", t.name.size(),
                                             " bytes; ggml allows at most ", kMaxTensorNameBytes));
  }
  return absl::OkStatus();
}

uint64_t TensorInfoBytes(const TensorInfo& t) {
  return 8 + t.name.size() + 4 + 8 * t.ne.size() + 4 + 8;
}

}  // namespace

Value UuidPlaceholder() { return Value::String(std::string(36, '0')); }
Value ContentDigestPlaceholder() {
  return Value::String(StrCat(kContentDigestPrefix, std::string(32, '0')));
}
Value TensorDigestsPlaceholder(size_t n_tensors) {
  return Value::MakeArray(ValueType::kString,
                          std::vector<Value>(n_tensors, Value::String(std::string(32, '0'))));
}

absl::StatusOr<Layout> PlanLayout(Metadata metadata, std::vector<TensorSpec> tensors,
                                  const PlanOptions& options) {
  Layout layout;
  CKPTD_ASSIGN_OR_RETURN(layout.alignment, ResolveAlignment(&metadata, options.alignment));
  if (options.digest_slots == DigestSlots::kReserve) {
    metadata.Set(std::string(kKeyUuid), UuidPlaceholder());
    metadata.Set(std::string(kKeyContentDigest), ContentDigestPlaceholder());
    metadata.Set(std::string(kKeyTensorDigests), TensorDigestsPlaceholder(tensors.size()));
    metadata.Set(std::string(kKeyMetadataDigest), ContentDigestPlaceholder());
    layout.has_digest_slots = true;
    if (options.uuid_scheme == UuidScheme::kGgufHash) {
      metadata.Set(std::string(kKeyUuidScheme), Value::String(std::string(kGgufHashScheme)));
      layout.uuid_scheme = UuidScheme::kGgufHash;
    } else {
      metadata.Remove(kKeyUuidScheme);
    }
  }

  uint64_t header = 4 + 4 + 8 + 8;
  for (const auto& [key, value] : metadata.entries()) {
    if (key.empty()) return absl::InvalidArgumentError("metadata key is empty");
    CKPTD_TRY(ValidateValue(value));
    header += 8 + key.size() + 4 + EncodedValueSize(value);
  }

  std::unordered_set<std::string_view> names;
  uint64_t data_bytes = 0;
  layout.tensors.reserve(tensors.size());
  for (TensorSpec& spec : tensors) {
    CKPTD_TRY(ValidateTensor(spec));
    auto nbytes = TensorBytes(spec.type, spec.ne);
    if (!nbytes.ok()) {
      return absl::InvalidArgumentError(
          StrCat("tensor '", spec.name, "': ", nbytes.status().message()));
    }
    TensorInfo info{std::move(spec.name), spec.type, std::move(spec.ne), data_bytes, *nbytes};
    uint64_t padded = 0;
    if (!AlignUp(info.nbytes, layout.alignment, &padded) ||
        __builtin_add_overflow(data_bytes, padded, &data_bytes)) {
      return absl::InvalidArgumentError("total tensor data size overflows");
    }
    header += TensorInfoBytes(info);
    layout.tensors.push_back(std::move(info));
  }
  for (const TensorInfo& t : layout.tensors) {
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(StrCat("duplicate tensor name '", t.name, "'"));
    }
  }

  layout.header_bytes = header;
  if (!AlignUp(header, layout.alignment, &layout.data_offset) ||
      __builtin_add_overflow(layout.data_offset, data_bytes, &layout.file_size)) {
    return absl::InvalidArgumentError("file size overflows");
  }
  layout.metadata = std::move(metadata);
  return layout;
}

}  // namespace ckptd::gguf
