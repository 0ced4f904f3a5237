// Export planning: map sources to outputs, resolve metadata, check shapes,
// casts and the architecture.
#include "daemon/export/plan.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <set>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/export/llama_arch.h"

namespace ckptd::exports {
namespace {

using gguf::TensorSpec;
using gguf::TensorType;
using gguf::Value;
using gguf::ValueType;

bool IsFloatType(TensorType t) {
  return t == TensorType::kF32 || t == TensorType::kF16 || t == TensorType::kBF16;
}
bool IsPlainType(TensorType t) {
  return gguf::LookupTensorType(static_cast<uint32_t>(t))->block_elems == 1;
}

std::string Dims(std::span<const uint64_t> ne) { return fmt::format("[{}]", fmt::join(ne, ", ")); }

// Keys of the source that never describe an export.
bool IsPerFileKey(std::string_view key) {
  return key == gguf::kKeyUuid || key == gguf::kKeyContentDigest || key == gguf::kKeyAlignment ||
         key == gguf::kKeyTensorDigests || key == gguf::kKeyMetadataDigest ||
         key == gguf::kKeyUuidScheme || key == "ckpt.parent_uuid" || key == "ckpt.role" ||
         key == "general.file_type" || key == "general.quantization_version" ||
         key == kKeySourceUuid || key.starts_with("ckpt.export.");
}

constexpr std::string_view kLoraA = ".lora_A.weight", kLoraB = ".lora_B.weight";
constexpr std::string_view kBaseLayer = ".base_layer.weight";

struct LoraFactors {
  size_t a = SIZE_MAX, b = SIZE_MAX;
};

struct Builder {
  const Profile& profile;
  std::string where;  // "export 'name'"
  std::span<const TensorSpec> sources;
  // With a lora mode: the names the rules see (P.base_layer.weight as
  // P.weight), the factors (consumed by the mode), and each base weight's
  // factors when they are merged.
  std::vector<std::string> names;
  std::vector<bool> factor;
  std::map<size_t, LoraFactors> merge;
  std::vector<OutputRecipe> outputs;
  std::map<std::string, size_t, std::less<>> by_name;  // output name -> index

  absl::Status AddOutput(OutputRecipe r, std::string_view from) {
    auto [it, inserted] = by_name.emplace(r.out.name, outputs.size());
    if (!inserted) {
      return absl::InvalidArgumentError(StrCat(where, ": output tensor '", r.out.name,
                                               "' is made twice (again from '", from, "')"));
    }
    if (r.out.name.size() > gguf::kMaxTensorNameBytes) {
      return absl::InvalidArgumentError(
          StrCat(where, ": output tensor '", r.out.name, "' is longer than ggml's 63-byte limit"));
    }
    outputs.push_back(std::move(r));
    return absl::OkStatus();
  }
};

absl::StatusOr<uint64_t> ParseIndex(std::string_view s) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || (s.size() > 1 && s[0] == '0')) {
    return absl::InvalidArgumentError("not a decimal index");
  }
  return v;
}

// PEFT's LoRA factors and their base weights, for a profile with a lora
// mode: every factor has its partner and exactly one base weight.
absl::Status FindLoraFactors(Builder& b) {
  b.names.clear();
  for (const TensorSpec& s : b.sources) b.names.push_back(s.name);
  b.factor.assign(b.sources.size(), false);
  if (b.profile.spec.lora.empty()) return absl::OkStatus();
  std::map<std::string, size_t, std::less<>> index;
  for (size_t i = 0; i < b.sources.size(); ++i) index.emplace(b.sources[i].name, i);
  std::map<std::string, LoraFactors> pairs;  // P -> its factors
  for (size_t i = 0; i < b.sources.size(); ++i) {
    const std::string& name = b.sources[i].name;
    for (std::string_view suffix : {kLoraA, kLoraB}) {
      if (!name.ends_with(suffix)) continue;
      LoraFactors& f = pairs[name.substr(0, name.size() - suffix.size())];
      (suffix == kLoraA ? f.a : f.b) = i;
      b.factor[i] = true;
    }
  }
  for (const auto& [prefix, f] : pairs) {
    if (f.a == SIZE_MAX || f.b == SIZE_MAX) {
      const std::string& has = b.sources[f.a == SIZE_MAX ? f.b : f.a].name;
      return absl::InvalidArgumentError(
          StrCat(b.where, ": LoRA factor '", has, "' has no partner '", prefix,
                 f.a == SIZE_MAX ? kLoraA : kLoraB, "' (save both of a layer's factors)"));
    }
    auto plain = index.find(StrCat(prefix, ".weight"));
    auto layer = index.find(StrCat(prefix, kBaseLayer));
    if (plain == index.end() && layer == index.end()) {
      return absl::InvalidArgumentError(
          StrCat(b.where, ": LoRA factors '", prefix, ".lora_{A,B}.weight' have no base weight '",
                 prefix, ".weight' or '", prefix, kBaseLayer, "' in the checkpoint"));
    }
    if (plain != index.end() && layer != index.end()) {
      return absl::InvalidArgumentError(StrCat(
          b.where, ": LoRA factors '", prefix, ".lora_{A,B}.weight' have two base weights, '",
          plain->first, "' and '", layer->first, "'; keep one"));
    }
    const size_t base = plain != index.end() ? plain->second : layer->second;
    b.names[base] = StrCat(prefix, ".weight");
    if (b.profile.spec.lora == "merge") b.merge[base] = f;
  }
  return absl::OkStatus();
}

// Which rules consume each source: exactly one, or an error.
absl::Status MapSources(Builder& b) {
  CKPTD_TRY(FindLoraFactors(b));
  struct FuseMember {
    uint64_t order;
    size_t source;
  };
  std::map<std::string, std::vector<FuseMember>> families;  // output name -> members
  std::map<std::string, const Profile::Fuse*> family_rule;
  for (size_t i = 0; i < b.sources.size(); ++i) {
    if (b.factor[i]) continue;  // merged into its base weight, or left out
    const TensorSpec& src = b.sources[i];
    const std::string& name = b.names[i];
    std::vector<std::string> hits;
    for (const Pattern& d : b.profile.drop) {
      if (d.Match(name)) hits.push_back(StrCat("drop '", d.text(), "'"));
    }
    for (const auto& r : b.profile.rename) {
      if (r.from.Match(name)) hits.push_back(StrCat("rename '", r.from.text(), "'"));
    }
    for (const auto& f : b.profile.fuse) {
      if (f.from.Match(name)) hits.push_back(StrCat("fuse '", f.from.text(), "'"));
    }
    for (const auto& s : b.profile.split) {
      if (s.from.Match(name)) hits.push_back(StrCat("split '", s.from.text(), "'"));
    }
    if (hits.empty()) {
      const bool lora =
          name.ends_with(kLoraA) || name.ends_with(kLoraB) || name.ends_with(kBaseLayer);
      return absl::InvalidArgumentError(
          StrCat(b.where, ": source tensor '", src.name,
                 "' is not consumed by any rule of the profile (rename, fuse, split or drop it)",
                 lora ? "; it belongs to a LoRA: export the factors with an adapter profile "
                        "(hf-llama-lora), "
                        "fold them in with lora = \"merge\" (hf-llama-lora-merged), or leave them "
                        "out with lora = \"base\" (hf-llama-lora-base)"
                      : ""));
    }
    if (hits.size() > 1) {
      return absl::InvalidArgumentError(StrCat(b.where, ": source tensor '", src.name,
                                               "' is consumed twice: by ", hits[0], " and by ",
                                               hits[1]));
    }
    auto merged = b.merge.find(i);
    if (merged != b.merge.end() && !hits[0].starts_with("rename")) {
      return absl::InvalidArgumentError(StrCat(b.where, ": LoRA factors cannot be merged into '",
                                               src.name, "': the profile consumes it by ", hits[0],
                                               "; merging needs a rename"));
    }
    for (const auto& r : b.profile.rename) {
      auto caps = r.from.Match(name);
      if (!caps) continue;
      OutputRecipe out;
      CKPTD_ASSIGN_OR_RETURN(out.out.name, r.to.Expand(*caps));
      out.out.type = src.type;
      out.out.ne = src.ne;
      out.sources = {i};
      if (merged != b.merge.end()) {
        out.sources = {i, merged->second.a, merged->second.b};
        out.merge_lora = true;
      }
      CKPTD_TRY(b.AddOutput(std::move(out), src.name));
    }
    for (const auto& f : b.profile.fuse) {
      auto caps = f.from.Match(name);
      if (!caps) continue;
      auto order = ParseIndex(caps->at(f.order));
      if (!order.ok()) {
        return absl::InvalidArgumentError(StrCat(b.where, ": source tensor '", src.name,
                                                 "': ", f.order, " = '", caps->at(f.order),
                                                 "' is not a decimal index"));
      }
      CKPTD_ASSIGN_OR_RETURN(std::string to, f.to.Expand(*caps));
      families[to].push_back({*order, i});
      family_rule[to] = &f;
    }
    for (const auto& s : b.profile.split) {
      auto caps = s.from.Match(name);
      if (!caps) continue;
      if (static_cast<size_t>(s.axis) >= src.ne.size() || src.ne[s.axis] % s.to.size() != 0 ||
          !IsPlainType(src.type)) {
        return absl::InvalidArgumentError(StrCat(
            b.where, ": source tensor '", src.name, "' ", Dims(src.ne), " cannot be split in ",
            s.to.size(), " equal parts along dim ", s.axis, " (or its type is block-quantized)"));
      }
      for (size_t part = 0; part < s.to.size(); ++part) {
        OutputRecipe out{.kind = OutputRecipe::Kind::kSplit};
        CKPTD_ASSIGN_OR_RETURN(out.out.name, s.to[part].Expand(*caps));
        out.out.type = src.type;
        out.out.ne = src.ne;
        out.out.ne[s.axis] /= s.to.size();
        out.sources = {i};
        out.axis = s.axis;
        out.part = part;
        out.parts = s.to.size();
        CKPTD_TRY(b.AddOutput(std::move(out), src.name));
      }
    }
  }
  for (auto& [to, members] : families) {
    const Profile::Fuse& f = *family_rule[to];
    std::sort(members.begin(), members.end(),
              [](const FuseMember& a, const FuseMember& c) { return a.order < c.order; });
    OutputRecipe out{.kind = OutputRecipe::Kind::kFuse, .axis = f.axis};
    out.out.name = to;
    const TensorSpec& first = b.sources[members[0].source];
    for (size_t k = 0; k < members.size(); ++k) {
      const TensorSpec& m = b.sources[members[k].source];
      if (members[k].order != k) {
        return absl::InvalidArgumentError(StrCat(b.where, ": fused tensor '", to, "': member ", k,
                                                 " is missing (", f.order, " must run 0..n-1; ",
                                                 "next is '", m.name, "')"));
      }
      if (m.type != first.type || m.ne != first.ne) {
        return absl::InvalidArgumentError(StrCat(
            b.where, ": fused tensor '", to, "': member '", m.name, "' is ",
            gguf::LookupTensorType(static_cast<uint32_t>(m.type))->name, " ", Dims(m.ne), " but '",
            first.name, "' is ", gguf::LookupTensorType(static_cast<uint32_t>(first.type))->name,
            " ", Dims(first.ne)));
      }
      out.sources.push_back(members[k].source);
    }
    if (static_cast<size_t>(f.axis) >= first.ne.size() || !IsPlainType(first.type)) {
      return absl::InvalidArgumentError(StrCat(b.where, ": fused tensor '", to, "': members ",
                                               Dims(first.ne), " have no dim ", f.axis,
                                               " to fuse along, or are block-quantized"));
    }
    out.out.type = first.type;
    out.out.ne = first.ne;
    out.out.ne[f.axis] *= members.size();
    CKPTD_TRY(b.AddOutput(std::move(out), first.name));
  }
  return absl::OkStatus();
}

// A merged weight W (ne [in, out]) takes A (ne [in, r]) and B (ne [r, out]),
// all floating point; it is assembled in f32.
absl::Status CheckLoraShapes(const Builder& b, OutputRecipe& r) {
  const TensorSpec &w = b.sources[r.sources[0]], &a = b.sources[r.sources[1]],
                   &bm = b.sources[r.sources[2]];
  if (w.ne.size() != 2 || a.ne.size() != 2 || bm.ne.size() != 2 || a.ne[0] != w.ne[0] ||
      bm.ne[1] != w.ne[1] || a.ne[1] != bm.ne[0] || a.ne[1] == 0) {
    return absl::InvalidArgumentError(
        StrCat(b.where, ": cannot merge LoRA into '", w.name, "' ", Dims(w.ne), ": A '", a.name,
               "' is ", Dims(a.ne), " and B '", bm.name, "' is ", Dims(bm.ne),
               " (ggml dims; W [in, out] needs A [in, r] and B [r, out])"));
  }
  for (const TensorSpec* t : {&w, &a, &bm}) {
    if (!IsFloatType(t->type)) {
      return absl::InvalidArgumentError(
          StrCat(b.where, ": cannot merge LoRA into '", w.name, "': '", t->name, "' is ",
                 gguf::LookupTensorType(static_cast<uint32_t>(t->type))->name,
                 " (only f32, f16 and bf16 merge)"));
    }
  }
  r.element_type = TensorType::kF32;
  r.lora_types = {w.type, a.type, bm.type};
  r.lora_rank = a.ne[1];
  return absl::OkStatus();
}

absl::Status ApplyTransformsShape(Builder& b) {
  for (OutputRecipe& r : b.outputs) {
    r.element_type = r.out.type;
    r.assembled_ne = r.out.ne;
    if (r.merge_lora) CKPTD_TRY(CheckLoraShapes(b, r));
    for (const auto& t : b.profile.transform) {
      if (!t.match.Match(r.out.name) || t.permute.empty()) continue;
      if (t.permute.size() != r.out.ne.size() || !IsPlainType(r.out.type)) {
        return absl::InvalidArgumentError(
            StrCat(b.where, ": tensor '", r.out.name, "' ", Dims(r.out.ne),
                   " cannot be permuted by [", fmt::format("{}", fmt::join(t.permute, ", ")), "]"));
      }
      std::vector<uint64_t> ne(r.out.ne.size());
      for (size_t i = 0; i < ne.size(); ++i) ne[i] = r.assembled_ne[t.permute[i]];
      r.permute = t.permute;
      r.out.ne = ne;
    }
  }
  return absl::OkStatus();
}

uint64_t SourceCount(const Builder& b, const Pattern& p) {
  std::set<std::string> names;
  for (const auto& s : b.sources) {
    if (p.Match(s.name)) names.insert(s.name);
  }
  for (const auto& o : b.outputs) {
    if (p.Match(o.out.name)) names.insert(o.out.name);
  }
  return names.size();
}

absl::StatusOr<std::optional<Value>> Derive(const Builder& b, const std::string& derive) {
  if (derive.starts_with("count:")) {
    CKPTD_ASSIGN_OR_RETURN(Pattern p, Pattern::Compile(derive.substr(6)));
    uint64_t n = SourceCount(b, p);
    if (n == 0) return std::optional<Value>();
    return std::optional<Value>(Value(n));
  }
  // dim:TENSOR:AXIS
  std::string_view rest = std::string_view(derive).substr(4);
  size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos)
    return absl::InvalidArgumentError(StrCat("derive '", derive, "' lacks :AXIS"));
  CKPTD_ASSIGN_OR_RETURN(uint64_t axis, ParseIndex(rest.substr(colon + 1)));
  auto it = b.by_name.find(rest.substr(0, colon));
  if (it == b.by_name.end()) return std::optional<Value>();
  const auto& ne = b.outputs[it->second].out.ne;
  if (axis >= ne.size()) return std::optional<Value>();
  return std::optional<Value>(Value(ne[axis]));
}

absl::Status ResolveMetadata(Builder& b, const gguf::Metadata& source, gguf::Metadata* md) {
  for (const auto& [key, value] : source.entries()) {
    if (IsPerFileKey(key)) continue;
    bool removed = false;
    for (const Pattern& p : b.profile.remove_metadata) removed |= p.Match(key).has_value();
    if (!removed) md->Set(key, value);
  }
  if (!b.profile.spec.architecture.empty()) {
    md->Set("general.architecture", Value::String(b.profile.spec.architecture));
  }
  for (const auto& rule : b.profile.metadata) {
    std::optional<Value> v;
    for (const std::string& key : rule.from) {
      if (const Value* found = md->Find(key)) {
        auto converted = ConvertValue(*found, rule.type);
        if (!converted.ok()) {
          return absl::InvalidArgumentError(StrCat(b.where, ": metadata '", rule.key, "' from '",
                                                   key, "': ", converted.status().message()));
        }
        v = std::move(*converted);
        break;
      }
    }
    if (!v && !rule.derive.empty()) {
      CKPTD_ASSIGN_OR_RETURN(std::optional<Value> derived, Derive(b, rule.derive));
      if (derived) {
        auto converted = ConvertValue(*derived, rule.type);
        if (!converted.ok()) {
          return absl::InvalidArgumentError(StrCat(b.where, ": metadata '", rule.key, "' (",
                                                   rule.derive,
                                                   "): ", converted.status().message()));
        }
        v = std::move(*converted);
      }
    }
    if (!v && rule.value) v = rule.value;
    if (!v) {
      if (!rule.required) continue;
      std::string wants =
          rule.from.empty() ? "" : StrCat("one of ", fmt::format("{}", fmt::join(rule.from, ", ")));
      if (!rule.derive.empty()) StrAppend(&wants, wants.empty() ? "" : ", or ", rule.derive);
      return absl::InvalidArgumentError(StrCat(b.where, ": metadata '", rule.key, "' needs ", wants,
                                               " (add it to the run's model metadata)"));
    }
    md->Set(rule.key, std::move(*v));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> IntegerKey(const gguf::Metadata& md, std::string_view key) {
  const Value* v = md.Find(key);
  if (v == nullptr) return absl::NotFoundError(StrCat("metadata '", key, "' is not set"));
  auto u = ConvertValue(*v, ValueType::kU64);
  if (!u.ok())
    return absl::InvalidArgumentError(StrCat("metadata '", key, "': ", u.status().message()));
  return *u->get_if<uint64_t>();
}

absl::Status ResolveRope(Builder& b, const gguf::Metadata& md) {
  for (OutputRecipe& r : b.outputs) {
    for (const auto& t : b.profile.transform) {
      if (!t.match.Match(r.out.name) || t.rope_permute.empty()) continue;
      auto heads = IntegerKey(md, t.rope_permute);
      if (!heads.ok()) {
        return absl::InvalidArgumentError(StrCat(b.where, ": tensor '", r.out.name,
                                                 "': rope_permute: ", heads.status().message()));
      }
      if (r.assembled_ne.size() != 2 || *heads == 0 || r.assembled_ne[1] % (2 * *heads) != 0 ||
          !IsPlainType(r.out.type) || !r.permute.empty()) {
        return absl::InvalidArgumentError(
            StrCat(b.where, ": tensor '", r.out.name, "' ", Dims(r.assembled_ne),
                   " cannot take the rotary permutation for ", *heads, " heads (", t.rope_permute,
                   "): it needs 2 dims with rows divisible by 2 x heads"));
      }
      r.rope_heads = static_cast<uint32_t>(*heads);
    }
  }
  return absl::OkStatus();
}

// alpha / r for every merged weight, from the run's metadata as PEFT names it.
absl::Status ResolveLoraScale(Builder& b, gguf::Metadata* md) {
  uint32_t merged = 0;
  for (OutputRecipe& r : b.outputs) {
    if (!r.merge_lora) continue;
    const Value* alpha = md->Find("adapter.lora.alpha");
    if (alpha == nullptr) alpha = md->Find("peft.lora_alpha");
    auto a =
        alpha == nullptr ? absl::NotFoundError("not set") : ConvertValue(*alpha, ValueType::kF64);
    if (!a.ok()) {
      return absl::InvalidArgumentError(
          StrCat(b.where, ": merging LoRA into '", r.out.name,
                 "' needs the adapter's alpha as a number in the run's metadata "
                 "(adapter.lora.alpha or peft.lora_alpha): ",
                 a.status().message()));
    }
    r.lora_scale = static_cast<float>(*a->get_if<double>() / static_cast<double>(r.lora_rank));
    ++merged;
  }
  if (merged > 0) md->Set(std::string(kKeyExportLoraMerged), Value(merged));
  return absl::OkStatus();
}

absl::Status ResolveCasts(Builder& b) {
  for (OutputRecipe& r : b.outputs) {
    for (const auto& c : b.profile.cast) {
      if (!c.match.Match(r.out.name)) continue;
      if (c.dims != 0 && static_cast<size_t>(c.dims) != r.out.ne.size()) continue;
      if (c.type != r.element_type) {
        if (!IsFloatType(r.element_type)) {
          return absl::InvalidArgumentError(
              StrCat(b.where, ": tensor '", r.out.name, "' is ",
                     gguf::LookupTensorType(static_cast<uint32_t>(r.element_type))->name,
                     " and cannot be cast to ",
                     gguf::LookupTensorType(static_cast<uint32_t>(c.type))->name,
                     " (only f32, f16 and bf16 sources convert)"));
        }
        if (c.type == TensorType::kQ8_0 && r.out.ne[0] % 32 != 0) {
          return absl::InvalidArgumentError(StrCat(b.where, ": tensor '", r.out.name, "' ",
                                                   Dims(r.out.ne),
                                                   " cannot be q8_0: its first dim is not a "
                                                   "multiple of 32"));
        }
      }
      r.out.type = c.type;
      break;
    }
  }
  return absl::OkStatus();
}

void SetFileType(const std::vector<OutputRecipe>& outputs, gguf::Metadata* md) {
  std::map<TensorType, int> counts;
  bool quantized = false;
  for (const auto& r : outputs) {
    if (r.out.ne.size() == 2) ++counts[r.out.type];
    quantized |= !IsPlainType(r.out.type);
  }
  TensorType dominant = TensorType::kF32;
  int best = 0;
  for (auto [t, n] : counts) {
    if (n > best) dominant = t, best = n;
  }
  // llama.cpp's llama_ftype values.
  uint32_t ftype = 0;
  switch (dominant) {
    case TensorType::kF16:
      ftype = 1;
      break;
    case TensorType::kQ8_0:
      ftype = 7;
      break;
    case TensorType::kBF16:
      ftype = 32;
      break;
    default:
      ftype = 0;
      break;
  }
  md->Set("general.file_type", Value(ftype));
  if (quantized) md->Set("general.quantization_version", Value(uint32_t{2}));
}

}  // namespace

absl::StatusOr<Value> ConvertValue(const Value& v, ValueType type) {
  if (v.type() == type) return v;
  if (type == ValueType::kString || v.type() == ValueType::kString || type == ValueType::kArray ||
      v.type() == ValueType::kArray || type == ValueType::kBool || v.type() == ValueType::kBool) {
    return absl::InvalidArgumentError(StrCat("a ", gguf::ValueTypeName(v.type()),
                                             " cannot become a ", gguf::ValueTypeName(type)));
  }
  // Numbers: through long double, exact for every GGUF integer.
  long double x = std::visit(
      [](const auto& a) -> long double {
        using T = std::decay_t<decltype(a)>;
        if constexpr (std::is_arithmetic_v<T>) return static_cast<long double>(a);
        return 0;
      },
      v.storage());
  auto fits = [&]<typename T>(T) -> absl::StatusOr<Value> {
    if (x < static_cast<long double>(std::numeric_limits<T>::min()) ||
        x > static_cast<long double>(std::numeric_limits<T>::max()) || x != std::floor(x)) {
      return absl::InvalidArgumentError(
          StrCat(FormatValue(v), " does not fit a ", gguf::ValueTypeName(type)));
    }
    return Value(static_cast<T>(x));
  };
  switch (type) {
    case ValueType::kU8:
      return fits(uint8_t{});
    case ValueType::kI8:
      return fits(int8_t{});
    case ValueType::kU16:
      return fits(uint16_t{});
    case ValueType::kI16:
      return fits(int16_t{});
    case ValueType::kU32:
      return fits(uint32_t{});
    case ValueType::kI32:
      return fits(int32_t{});
    case ValueType::kU64:
      return fits(uint64_t{});
    case ValueType::kI64:
      return fits(int64_t{});
    case ValueType::kF32:
      return Value(static_cast<float>(x));
    case ValueType::kF64:
      return Value(static_cast<double>(x));
    default:
      break;
  }
  return absl::InvalidArgumentError("unsupported conversion");
}

void LinkAdapters(std::vector<ExportPlan>* plans) {
  // Bases first, each group in its given order.
  std::stable_partition(plans->begin(), plans->end(),
                        [](const ExportPlan& p) { return !p.adapter; });
  for (ExportPlan& adapter : *plans) {
    if (!adapter.adapter) continue;
    auto base = std::find_if(plans->begin(), plans->end(), [&](const ExportPlan& p) {
      return !p.adapter && p.lora != "merge" && p.architecture == adapter.architecture;
    });
    if (base == plans->end()) continue;
    adapter.base_export = base->name;
    std::vector<std::string> inherited;  // the run's base model's, replaced by the base export
    for (const auto& [key, value] : adapter.metadata.entries()) {
      if (key.starts_with("general.base_model.")) inherited.push_back(key);
    }
    for (const std::string& key : inherited) adapter.metadata.Remove(key);
    adapter.metadata.Set("general.base_model.count", Value(uint32_t{1}));
    adapter.metadata.Set("general.base_model.0.name", Value::String(base->name));
    adapter.metadata.Set("general.base_model.0.uuid", gguf::UuidPlaceholder());
    adapter.metadata.Set(std::string(kKeyExportBase), Value::String(base->name));
  }
}

absl::StatusOr<ExportPlan> PlanExport(const Profile& profile, std::string_view export_name,
                                      std::span<const TensorSpec> sources,
                                      const gguf::Metadata& source_metadata,
                                      std::string_view daemon_version) {
  ExportPlan plan;
  plan.name = export_name.empty() ? profile.spec.name : std::string(export_name);
  plan.profile = profile.spec.name;
  plan.profile_digest = profile.digest;
  plan.architecture = profile.spec.architecture;
  plan.adapter = !profile.spec.adapter.empty();
  plan.lora = profile.spec.lora;
  if (!IsValidExportName(plan.name)) {
    return absl::InvalidArgumentError(
        StrCat("export name '", plan.name, "' must be [a-z0-9_-]{1,64} and not 'train'"));
  }
  Builder b{profile, StrCat("export '", plan.name, "' (profile ", profile.spec.name, ")"), sources};
  CKPTD_TRY(MapSources(b));
  CKPTD_TRY(ApplyTransformsShape(b));
  CKPTD_TRY(ResolveMetadata(b, source_metadata, &plan.metadata));
  CKPTD_TRY(ResolveRope(b, plan.metadata));
  CKPTD_TRY(ResolveLoraScale(b, &plan.metadata));
  CKPTD_TRY(ResolveCasts(b));
  if (profile.spec.adapter == "lora") {
    plan.metadata.Set("general.type", Value::String("adapter"));
    plan.metadata.Set("adapter.type", Value::String("lora"));
    std::vector<TensorSpec> outs;
    for (const auto& r : b.outputs) outs.push_back(r.out);
    if (absl::Status st = CheckLoraAdapter(outs, plan.metadata); !st.ok()) {
      return absl::InvalidArgumentError(StrCat(b.where, ": ", st.message()));
    }
  } else if (profile.spec.architecture == "llama") {
    std::vector<TensorSpec> outs;
    for (const auto& r : b.outputs) outs.push_back(r.out);
    if (absl::Status st = CheckLlama(outs, plan.metadata); !st.ok()) {
      return absl::InvalidArgumentError(StrCat(b.where, ": ", st.message()));
    }
  }
  SetFileType(b.outputs, &plan.metadata);
  plan.metadata.Set(std::string(kKeyExportName), Value::String(plan.name));
  plan.metadata.Set(std::string(kKeyExportProfile), Value::String(profile.spec.name));
  plan.metadata.Set(std::string(kKeyExportProfileDigest), Value::String(profile.digest));
  plan.metadata.Set(std::string(kKeyExportDaemonVersion),
                    Value::String(std::string(daemon_version)));
  plan.metadata.Set("ckpt.role", Value("export"));
  plan.metadata.Set(std::string(kKeySourceUuid), gguf::UuidPlaceholder());

  plan.source_used.assign(sources.size(), false);
  for (OutputRecipe& r : b.outputs) {
    r.ready_after = *std::max_element(r.sources.begin(), r.sources.end());
    for (size_t s : r.sources) plan.source_used[s] = true;
    plan.output_bytes += *gguf::TensorBytes(r.out.type, r.out.ne);
  }
  // An export is a view of the checkpoint: bounded by it, whatever the
  // profile says (each output also costs a header entry and its padding).
  const uint64_t max_outputs = kMaxOutputsPerSource * sources.size() + kMaxExtraOutputs;
  if (b.outputs.size() > max_outputs) {
    return absl::InvalidArgumentError(
        StrCat(b.where, ": ", b.outputs.size(), " output tensors from ", sources.size(),
               " source tensors; an export may have at most ", kMaxOutputsPerSource,
               " per source tensor + ", kMaxExtraOutputs, " (", max_outputs, ")"));
  }

  std::stable_sort(
      b.outputs.begin(), b.outputs.end(),
      [](const OutputRecipe& a, const OutputRecipe& c) { return a.ready_after < c.ready_after; });
  // Peak buffering: sources held from arrival until their output is written.
  std::vector<size_t> release(sources.size(), 0);
  for (const auto& r : b.outputs) {
    for (size_t s : r.sources) release[s] = std::max(release[s], r.ready_after);
  }
  uint64_t held = 0;
  std::vector<std::vector<size_t>> freed_at(sources.size());
  for (size_t s = 0; s < sources.size(); ++s) {
    if (plan.source_used[s]) freed_at[release[s]].push_back(s);
  }
  for (size_t s = 0; s < sources.size(); ++s) {
    if (!plan.source_used[s]) continue;
    held += *gguf::TensorBytes(sources[s].type, sources[s].ne);
    plan.peak_buffer_bytes = std::max(plan.peak_buffer_bytes, held);
    for (size_t f : freed_at[s]) held -= *gguf::TensorBytes(sources[f].type, sources[f].ne);
  }
  plan.outputs = std::move(b.outputs);
  return plan;
}

}  // namespace ckptd::exports
