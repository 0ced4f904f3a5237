// Profiles: TOML parsing, compilation, the canonical text and its digest,
// the built-ins.
#include "daemon/export/profile.h"

#include <toml++/toml.h>

#include <charconv>
#include <cmath>
#include <set>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/gguf/digest.h"

namespace ckptd::exports {
namespace internal {
extern const std::string_view kHfLlamaToml;
extern const std::string_view kPerHeadLlamaToml;
extern const std::string_view kHfLlamaLoraToml;
}  // namespace internal
namespace {

using toml::node;
using toml::table;

std::string At(std::string_view source, const node& n) {
  return StrCat(source, ":", n.source().begin.line);
}

absl::Status Unknown(std::string_view source, const node& n, std::string_view key,
                     std::string_view allowed) {
  return absl::InvalidArgumentError(
      StrCat(At(source, n), ": unknown key '", key, "' (allowed: ", allowed, ")"));
}

absl::StatusOr<std::string> Str(std::string_view source, const node& n, std::string_view key) {
  if (auto s = n.value<std::string>()) return *s;
  return absl::InvalidArgumentError(StrCat(At(source, n), ": '", key, "' must be a string"));
}

absl::StatusOr<std::vector<std::string>> Strings(std::string_view source, const node& n,
                                                 std::string_view key) {
  const toml::array* a = n.as_array();
  if (a == nullptr) {
    return absl::InvalidArgumentError(
        StrCat(At(source, n), ": '", key, "' must be an array of strings"));
  }
  std::vector<std::string> out;
  for (const node& item : *a) {
    CKPTD_ASSIGN_OR_RETURN(std::string s, Str(source, item, key));
    out.push_back(std::move(s));
  }
  return out;
}

// A required string field of an array-of-tables entry.
absl::StatusOr<std::string> Req(std::string_view source, const table& t, std::string_view key,
                                std::string_view what) {
  const node* n = t.get(key);
  if (n == nullptr) {
    return absl::InvalidArgumentError(
        StrCat(source, ":", t.source().begin.line, ": each '", what, "' entry needs '", key, "'"));
  }
  return Str(source, *n, StrCat(what, ".", key));
}

// Each element of an array of tables, with its keys checked against `allowed`.
template <typename Fn>
absl::Status ForEachTable(std::string_view source, const node& n, std::string_view key,
                          std::string_view allowed, Fn fn) {
  const toml::array* a = n.as_array();
  if (a == nullptr) {
    return absl::InvalidArgumentError(
        StrCat(At(source, n), ": '", key, "' must be an array of tables"));
  }
  for (const node& item : *a) {
    const table* t = item.as_table();
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          StrCat(At(source, item), ": each '", key, "' entry must be a table"));
    }
    for (const auto& [k, v] : *t) {
      std::string needle = StrCat(",", k.str(), ",");
      if (StrCat(",", allowed, ",").find(needle) == std::string::npos) {
        return Unknown(source, v, StrCat(key, ".", k.str()), allowed);
      }
    }
    CKPTD_TRY(fn(*t));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ScalarText(std::string_view source, const node& n,
                                       std::string_view key) {
  if (auto s = n.value<std::string>()) return *s;
  if (auto i = n.value<int64_t>(); i && n.is_integer()) return StrCat(*i);
  if (auto d = n.value<double>(); d && n.is_floating_point()) return fmt::format("{}", *d);
  if (auto b = n.value<bool>()) return std::string(*b ? "true" : "false");
  return absl::InvalidArgumentError(
      StrCat(At(source, n), ": '", key, "' must be a string, number or boolean"));
}

absl::StatusOr<int> ParseAxis(std::string_view axis, std::string_view where) {
  if (axis == "rows") return 1;
  if (axis == "cols") return 0;
  if (axis.size() == 1 && axis[0] >= '0' && axis[0] <= '3') return axis[0] - '0';
  return absl::InvalidArgumentError(
      StrCat(where, ": axis '", axis, "' must be rows, cols or a ggml dim 0-3"));
}

}  // namespace

absl::StatusOr<ProfileSpec> ParseProfileToml(std::string_view text, std::string_view source) {
  table root;
  try {
    root = toml::parse(text, std::string(source));
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(
        StrCat(source, ":", e.source().begin.line, ": ", e.description()));
  }
  ProfileSpec s;
  constexpr std::string_view kTop =
      "name,description,architecture,adapter,lora,drop,rename,fuse,split,transform,cast,metadata,"
      "remove_metadata";
  for (const auto& entry : root) {
    const std::string_view k = entry.first.str();
    const node& n = entry.second;
    if (k == "name") {
      CKPTD_ASSIGN_OR_RETURN(s.name, Str(source, n, k));
    } else if (k == "description") {
      CKPTD_ASSIGN_OR_RETURN(s.description, Str(source, n, k));
    } else if (k == "architecture") {
      CKPTD_ASSIGN_OR_RETURN(s.architecture, Str(source, n, k));
    } else if (k == "adapter") {
      CKPTD_ASSIGN_OR_RETURN(s.adapter, Str(source, n, k));
    } else if (k == "lora") {
      CKPTD_ASSIGN_OR_RETURN(s.lora, Str(source, n, k));
    } else if (k == "drop") {
      CKPTD_ASSIGN_OR_RETURN(s.drop, Strings(source, n, k));
    } else if (k == "remove_metadata") {
      CKPTD_ASSIGN_OR_RETURN(s.remove_metadata, Strings(source, n, k));
    } else if (k == "rename") {
      CKPTD_TRY(ForEachTable(source, n, k, "from,to", [&](const table& t) -> absl::Status {
        ProfileSpec::Rename r;
        CKPTD_ASSIGN_OR_RETURN(r.from, Req(source, t, "from", "rename"));
        CKPTD_ASSIGN_OR_RETURN(r.to, Req(source, t, "to", "rename"));
        s.rename.push_back(std::move(r));
        return absl::OkStatus();
      }));
    } else if (k == "fuse") {
      CKPTD_TRY(
          ForEachTable(source, n, k, "from,order,axis,to", [&](const table& t) -> absl::Status {
            ProfileSpec::Fuse f;
            for (auto [field, out] : {std::pair{"from", &f.from}, std::pair{"order", &f.order},
                                      std::pair{"axis", &f.axis}, std::pair{"to", &f.to}}) {
              CKPTD_ASSIGN_OR_RETURN(*out, Req(source, t, field, "fuse"));
            }
            s.fuse.push_back(std::move(f));
            return absl::OkStatus();
          }));
    } else if (k == "split") {
      CKPTD_TRY(ForEachTable(source, n, k, "from,axis,to", [&](const table& t) -> absl::Status {
        ProfileSpec::Split sp;
        CKPTD_ASSIGN_OR_RETURN(sp.from, Req(source, t, "from", "split"));
        CKPTD_ASSIGN_OR_RETURN(sp.axis, Req(source, t, "axis", "split"));
        if (t.get("to") == nullptr) return Req(source, t, "to", "split").status();
        CKPTD_ASSIGN_OR_RETURN(sp.to, Strings(source, *t.get("to"), "split.to"));
        s.split.push_back(std::move(sp));
        return absl::OkStatus();
      }));
    } else if (k == "transform") {
      CKPTD_TRY(ForEachTable(
          source, n, k, "match,rope_permute,transpose,permute",
          [&](const table& t) -> absl::Status {
            ProfileSpec::Transform tr;
            CKPTD_ASSIGN_OR_RETURN(tr.match, Req(source, t, "match", "transform"));
            if (const node* r = t["rope_permute"].node()) {
              CKPTD_ASSIGN_OR_RETURN(tr.rope_permute, Str(source, *r, "transform.rope_permute"));
            }
            if (const node* r = t["transpose"].node()) {
              auto b = r->value<bool>();
              if (!b)
                return absl::InvalidArgumentError(
                    StrCat(At(source, *r), ": 'transpose' must be true or false"));
              tr.transpose = *b;
            }
            if (const node* r = t["permute"].node()) {
              const toml::array* a = r->as_array();
              if (a == nullptr)
                return absl::InvalidArgumentError(
                    StrCat(At(source, *r), ": 'permute' must be an array of dims"));
              for (const node& d : *a) {
                auto v = d.value<int64_t>();
                if (!v || *v < 0 || *v > 3)
                  return absl::InvalidArgumentError(
                      StrCat(At(source, d), ": 'permute' dims must be 0-3"));
                tr.permute.push_back(static_cast<int>(*v));
              }
            }
            s.transform.push_back(std::move(tr));
            return absl::OkStatus();
          }));
    } else if (k == "cast") {
      CKPTD_TRY(ForEachTable(source, n, k, "match,type,dims", [&](const table& t) -> absl::Status {
        ProfileSpec::Cast c;
        CKPTD_ASSIGN_OR_RETURN(c.match, Req(source, t, "match", "cast"));
        CKPTD_ASSIGN_OR_RETURN(c.type, Req(source, t, "type", "cast"));
        if (const node* d = t["dims"].node()) {
          auto v = d->value<int64_t>();
          if (!v || *v < 0 || *v > 4)
            return absl::InvalidArgumentError(StrCat(At(source, *d), ": 'dims' must be 0-4"));
          c.dims = static_cast<int>(*v);
        }
        s.cast.push_back(std::move(c));
        return absl::OkStatus();
      }));
    } else if (k == "metadata") {
      CKPTD_TRY(ForEachTable(
          source, n, k, "key,type,from,derive,value,required", [&](const table& t) -> absl::Status {
            ProfileSpec::MetadataRule m;
            CKPTD_ASSIGN_OR_RETURN(m.key, Req(source, t, "key", "metadata"));
            CKPTD_ASSIGN_OR_RETURN(m.type, Req(source, t, "type", "metadata"));
            if (const node* f = t["from"].node()) {
              CKPTD_ASSIGN_OR_RETURN(m.from, Strings(source, *f, "metadata.from"));
            }
            if (const node* d = t["derive"].node()) {
              CKPTD_ASSIGN_OR_RETURN(m.derive, Str(source, *d, "metadata.derive"));
            }
            if (const node* v = t["value"].node()) {
              CKPTD_ASSIGN_OR_RETURN(m.value, ScalarText(source, *v, "metadata.value"));
            }
            if (const node* r = t["required"].node()) {
              auto b = r->value<bool>();
              if (!b)
                return absl::InvalidArgumentError(
                    StrCat(At(source, *r), ": 'required' must be true or false"));
              m.required = *b;
            }
            s.metadata.push_back(std::move(m));
            return absl::OkStatus();
          }));
    } else {
      return Unknown(source, n, k, kTop);
    }
  }
  if (s.name.empty()) {
    return absl::InvalidArgumentError(StrCat(source, ": a profile needs a 'name'"));
  }
  return s;
}

absl::StatusOr<gguf::Value> ParseTypedValue(gguf::ValueType type, std::string_view text) {
  using gguf::Value;
  using gguf::ValueType;
  auto integer = [&]<typename T>(T) -> absl::StatusOr<Value> {
    T v{};
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size()) {
      return absl::InvalidArgumentError(
          StrCat("'", text, "' is not a ", gguf::ValueTypeName(type)));
    }
    return Value(v);
  };
  switch (type) {
    case ValueType::kU8:
      return integer(uint8_t{});
    case ValueType::kI8:
      return integer(int8_t{});
    case ValueType::kU16:
      return integer(uint16_t{});
    case ValueType::kI16:
      return integer(int16_t{});
    case ValueType::kU32:
      return integer(uint32_t{});
    case ValueType::kI32:
      return integer(int32_t{});
    case ValueType::kU64:
      return integer(uint64_t{});
    case ValueType::kI64:
      return integer(int64_t{});
    case ValueType::kF32:
    case ValueType::kF64: {
      std::string s(text);
      char* end = nullptr;
      double d = std::strtod(s.c_str(), &end);
      if (s.empty() || end != s.c_str() + s.size()) {
        return absl::InvalidArgumentError(StrCat("'", text, "' is not a number"));
      }
      return type == ValueType::kF32 ? Value(static_cast<float>(d)) : Value(d);
    }
    case ValueType::kBool:
      if (text == "true") return Value(true);
      if (text == "false") return Value(false);
      return absl::InvalidArgumentError(StrCat("'", text, "' is not true or false"));
    case ValueType::kString:
      return Value::String(std::string(text));
    case ValueType::kArray:
      break;
  }
  return absl::InvalidArgumentError("arrays cannot be written by a metadata rule");
}

absl::StatusOr<Profile> CompileProfile(ProfileSpec spec) {
  Profile p;
  const std::string where = StrCat("profile '", spec.name, "'");
  if (!IsValidExportName(spec.name)) {
    return absl::InvalidArgumentError(
        StrCat(where, ": the name must be [a-z0-9_-]{1,64} and not 'train'"));
  }
  if (!spec.architecture.empty() && spec.architecture != "llama") {
    return absl::InvalidArgumentError(StrCat(where, ": architecture '", spec.architecture,
                                             "' is not known (known: llama; leave it empty to "
                                             "skip the architecture check)"));
  }
  if (!spec.adapter.empty() && (spec.adapter != "lora" || spec.architecture.empty())) {
    return absl::InvalidArgumentError(
        StrCat(where, ": adapter '", spec.adapter,
               "': the known adapter is \"lora\", for a base model's architecture (set "
               "architecture too)"));
  }
  if (!spec.lora.empty() && spec.lora != "merge" && spec.lora != "base") {
    return absl::InvalidArgumentError(
        StrCat(where, ": lora '", spec.lora,
               "' must be \"merge\" (fold LoRA factors into their base weights) or \"base\" "
               "(leave them out); leave it empty to treat them as ordinary tensors"));
  }
  if (!spec.lora.empty() && !spec.adapter.empty()) {
    return absl::InvalidArgumentError(
        StrCat(where, ": lora = \"", spec.lora,
               "\" is for whole-model exports; an adapter export takes the factors themselves"));
  }
  const size_t rules = spec.drop.size() + spec.rename.size() + spec.fuse.size() +
                       spec.split.size() + spec.transform.size() + spec.cast.size() +
                       spec.metadata.size() + spec.remove_metadata.size();
  if (rules > kMaxProfileRules) {
    return absl::InvalidArgumentError(
        StrCat(where, ": ", rules, " rules; a profile may have at most ", kMaxProfileRules));
  }
  auto compile = [&](std::string_view text, std::string_view field) -> absl::StatusOr<Pattern> {
    if (text.size() > kMaxPatternBytes) {
      return absl::InvalidArgumentError(StrCat(where, ": ", field, ": a pattern of ", text.size(),
                                               " bytes; at most ", kMaxPatternBytes));
    }
    const size_t wild =
        std::count(text.begin(), text.end(), '*') + std::count(text.begin(), text.end(), '{');
    if (wild > kMaxPatternWildcards) {
      return absl::InvalidArgumentError(StrCat(where, ": ", field, ": pattern '", text, "' has ",
                                               wild, " wildcards and captures; at most ",
                                               kMaxPatternWildcards));
    }
    auto pat = Pattern::Compile(text);
    if (!pat.ok())
      return absl::InvalidArgumentError(StrCat(where, ": ", field, ": ", pat.status().message()));
    return pat;
  };
  for (const auto& d : spec.drop) {
    CKPTD_ASSIGN_OR_RETURN(Pattern pat, compile(d, "drop"));
    p.drop.push_back(std::move(pat));
  }
  for (const auto& r : spec.rename) {
    CKPTD_ASSIGN_OR_RETURN(Pattern from, compile(r.from, "rename.from"));
    CKPTD_ASSIGN_OR_RETURN(Pattern to, compile(r.to, "rename.to"));
    p.rename.push_back({std::move(from), std::move(to)});
  }
  for (const auto& f : spec.fuse) {
    CKPTD_ASSIGN_OR_RETURN(Pattern from, compile(f.from, "fuse.from"));
    CKPTD_ASSIGN_OR_RETURN(Pattern to, compile(f.to, "fuse.to"));
    CKPTD_ASSIGN_OR_RETURN(int axis, ParseAxis(f.axis, StrCat(where, ": fuse '", f.from, "'")));
    const auto& names = from.capture_names();
    if (std::find(names.begin(), names.end(), f.order) == names.end()) {
      return absl::InvalidArgumentError(
          StrCat(where, ": fuse '", f.from, "': order '", f.order, "' is not one of its captures"));
    }
    for (const auto& n : to.capture_names()) {
      if (n == f.order) {
        return absl::InvalidArgumentError(StrCat(where, ": fuse '", f.from, "': the output '", f.to,
                                                 "' must not use the order capture"));
      }
    }
    p.fuse.push_back({std::move(from), f.order, axis, std::move(to)});
  }
  for (const auto& sp : spec.split) {
    CKPTD_ASSIGN_OR_RETURN(Pattern from, compile(sp.from, "split.from"));
    CKPTD_ASSIGN_OR_RETURN(int axis, ParseAxis(sp.axis, StrCat(where, ": split '", sp.from, "'")));
    if (sp.to.size() < 2 || sp.to.size() > kMaxSplitOutputs) {
      return absl::InvalidArgumentError(StrCat(where, ": split '", sp.from, "' has ", sp.to.size(),
                                               " outputs; it needs 2 to ", kMaxSplitOutputs));
    }
    Profile::Split out{std::move(from), axis, {}};
    for (const auto& t : sp.to) {
      CKPTD_ASSIGN_OR_RETURN(Pattern to, compile(t, "split.to"));
      out.to.push_back(std::move(to));
    }
    p.split.push_back(std::move(out));
  }
  for (const auto& t : spec.transform) {
    CKPTD_ASSIGN_OR_RETURN(Pattern match, compile(t.match, "transform.match"));
    int kinds = !t.rope_permute.empty() + t.transpose + !t.permute.empty();
    if (kinds != 1) {
      return absl::InvalidArgumentError(StrCat(where, ": transform '", t.match,
                                               "' needs exactly one of rope_permute, transpose, "
                                               "permute"));
    }
    std::vector<int> perm = t.transpose ? std::vector<int>{1, 0} : t.permute;
    if (!perm.empty()) {
      std::vector<int> sorted = perm;
      std::sort(sorted.begin(), sorted.end());
      for (size_t i = 0; i < sorted.size(); ++i) {
        if (sorted[i] != static_cast<int>(i)) {
          return absl::InvalidArgumentError(
              StrCat(where, ": transform '", t.match, "': permute must list each dim once"));
        }
      }
    }
    p.transform.push_back({std::move(match), t.rope_permute, std::move(perm)});
  }
  for (const auto& c : spec.cast) {
    CKPTD_ASSIGN_OR_RETURN(Pattern match, compile(c.match, "cast.match"));
    auto info = gguf::LookupTensorType(c.type);
    using gguf::TensorType;
    if (!info || (info->type != TensorType::kF32 && info->type != TensorType::kF16 &&
                  info->type != TensorType::kBF16 && info->type != TensorType::kQ8_0)) {
      return absl::InvalidArgumentError(StrCat(where, ": cast '", c.match, "': type '", c.type,
                                               "' is not one of f32, f16, bf16, q8_0"));
    }
    p.cast.push_back({std::move(match), info->type, c.dims});
  }
  std::set<std::string> keys;
  for (const auto& m : spec.metadata) {
    auto type = gguf::ParseValueTypeName(m.type);
    if (!type || *type == gguf::ValueType::kArray) {
      return absl::InvalidArgumentError(StrCat(where, ": metadata '", m.key, "': type '", m.type,
                                               "' must be a scalar GGUF type (u32, f32, string…)"));
    }
    if (m.key.empty() || !keys.insert(m.key).second) {
      return absl::InvalidArgumentError(
          StrCat(where, ": metadata key '", m.key, "' is empty or listed twice"));
    }
    if (!m.derive.empty() && !m.derive.starts_with("dim:") && !m.derive.starts_with("count:")) {
      return absl::InvalidArgumentError(StrCat(where, ": metadata '", m.key, "': derive '",
                                               m.derive,
                                               "' must be dim:TENSOR:AXIS or count:PATTERN"));
    }
    Profile::MetadataRule rule{m.key, *type, m.from, m.derive, std::nullopt, m.required};
    if (m.value) {
      auto v = ParseTypedValue(*type, *m.value);
      if (!v.ok())
        return absl::InvalidArgumentError(
            StrCat(where, ": metadata '", m.key, "': ", v.status().message()));
      rule.value = std::move(*v);
    }
    if (m.from.empty() && m.derive.empty() && !rule.value) {
      return absl::InvalidArgumentError(
          StrCat(where, ": metadata '", m.key, "' needs from, derive or value"));
    }
    p.metadata.push_back(std::move(rule));
  }
  for (const auto& r : spec.remove_metadata) {
    CKPTD_ASSIGN_OR_RETURN(Pattern pat, compile(r, "remove_metadata"));
    p.remove_metadata.push_back(std::move(pat));
  }
  std::string canonical = CanonicalText(spec);
  gguf::TensorHasher h;
  h.Update(canonical.data(), canonical.size());
  p.digest = gguf::ContentDigestString(h.Finish());
  p.spec = std::move(spec);
  return p;
}

std::string CanonicalText(const ProfileSpec& s) {
  auto q = [](std::string_view v) {
    std::string out = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') out.push_back('\\');
      if (static_cast<unsigned char>(c) < 0x20) {
        out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        continue;
      }
      out.push_back(c);
    }
    return out + "\"";
  };
  auto list = [&](const std::vector<std::string>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) StrAppend(&out, i ? ", " : "", q(v[i]));
    return out + "]";
  };
  std::string out;
  StrAppend(&out, "name = ", q(s.name), "\n");
  if (!s.description.empty()) StrAppend(&out, "description = ", q(s.description), "\n");
  if (!s.architecture.empty()) StrAppend(&out, "architecture = ", q(s.architecture), "\n");
  if (!s.adapter.empty()) StrAppend(&out, "adapter = ", q(s.adapter), "\n");
  if (!s.lora.empty()) StrAppend(&out, "lora = ", q(s.lora), "\n");
  if (!s.drop.empty()) StrAppend(&out, "drop = ", list(s.drop), "\n");
  if (!s.remove_metadata.empty())
    StrAppend(&out, "remove_metadata = ", list(s.remove_metadata), "\n");
  for (const auto& r : s.rename)
    StrAppend(&out, "\n[[rename]]\nfrom = ", q(r.from), "\nto = ", q(r.to), "\n");
  for (const auto& f : s.fuse) {
    StrAppend(&out, "\n[[fuse]]\nfrom = ", q(f.from), "\norder = ", q(f.order),
              "\naxis = ", q(f.axis), "\nto = ", q(f.to), "\n");
  }
  for (const auto& sp : s.split) {
    StrAppend(&out, "\n[[split]]\nfrom = ", q(sp.from), "\naxis = ", q(sp.axis),
              "\nto = ", list(sp.to), "\n");
  }
  for (const auto& t : s.transform) {
    StrAppend(&out, "\n[[transform]]\nmatch = ", q(t.match), "\n");
    if (!t.rope_permute.empty()) StrAppend(&out, "rope_permute = ", q(t.rope_permute), "\n");
    if (t.transpose) StrAppend(&out, "transpose = true\n");
    if (!t.permute.empty())
      StrAppend(&out, "permute = [", fmt::format("{}", fmt::join(t.permute, ", ")), "]\n");
  }
  for (const auto& c : s.cast) {
    StrAppend(&out, "\n[[cast]]\nmatch = ", q(c.match), "\ntype = ", q(c.type), "\n");
    if (c.dims != 0) StrAppend(&out, "dims = ", c.dims, "\n");
  }
  for (const auto& m : s.metadata) {
    StrAppend(&out, "\n[[metadata]]\nkey = ", q(m.key), "\ntype = ", q(m.type), "\n");
    if (!m.from.empty()) StrAppend(&out, "from = ", list(m.from), "\n");
    if (!m.derive.empty()) StrAppend(&out, "derive = ", q(m.derive), "\n");
    if (m.value) StrAppend(&out, "value = ", q(*m.value), "\n");
    if (!m.required) StrAppend(&out, "required = false\n");
  }
  return out;
}

namespace {

// The built-in bases and their variants: a whole model comes as q8_0 too,
// an adapter not (a LoRA factor's rank is rarely a multiple of Q8_0's 32).
// hf-llama's LoRA variants are hf-llama with a lora mode.
struct BuiltinBase {
  std::string_view name;
  std::string_view toml;
  bool q8_0;
  std::string_view lora = {};
  std::string_view description = {};
};
constexpr std::string_view kBuiltinSuffixes[] = {"", "-f16", "-bf16", "-q8_0"};

std::vector<BuiltinBase> BuiltinBases() {
  return {{"hf-llama", internal::kHfLlamaToml, true},
          {"per-head-llama", internal::kPerHeadLlamaToml, true},
          {"hf-llama-lora", internal::kHfLlamaLoraToml, false},
          {"hf-llama-lora-merged", internal::kHfLlamaToml, true, "merge",
           "a Hugging Face Llama with its PEFT LoRA factors merged (W + alpha/r * B A) to "
           "llama.cpp's llama"},
          {"hf-llama-lora-base", internal::kHfLlamaToml, true, "base",
           "the frozen base of a Hugging Face Llama with PEFT LoRA factors (left out) to "
           "llama.cpp's llama: the model an hf-llama-lora adapter applies to"}};
}

}  // namespace

std::vector<std::string> BuiltinProfileNames() {
  std::vector<std::string> out;
  for (const BuiltinBase& base : BuiltinBases()) {
    for (std::string_view suffix : kBuiltinSuffixes) {
      if (suffix != "-q8_0" || base.q8_0) out.push_back(StrCat(base.name, suffix));
    }
  }
  return out;
}

std::optional<ProfileSpec> BuiltinProfile(std::string_view name) {
  for (const BuiltinBase& b : BuiltinBases()) {
    const std::string_view base = b.name, toml_text = b.toml;
    if (!name.starts_with(base)) continue;
    std::string_view suffix = name.substr(base.size());
    std::string_view type;
    if (suffix.empty()) {
      type = "f32";
    } else if (suffix == "-f16" || suffix == "-bf16" || (suffix == "-q8_0" && b.q8_0)) {
      type = suffix.substr(1);
    } else {
      continue;
    }
    auto spec = ParseProfileToml(toml_text, StrCat("<built-in ", base, ">"));
    if (!spec.ok()) return std::nullopt;  // covered by a unit test
    spec->name = std::string(name);
    if (!b.lora.empty()) {
      spec->lora = std::string(b.lora);
      spec->description = std::string(b.description);
    }
    if (type != "f32") {
      spec->description += StrCat("; 2-D weights as ", type, ", 1-D tensors as f32");
      spec->cast.push_back({"*", std::string(type), 2});
    }
    spec->cast.push_back({"*", "f32", 0});
    return *spec;
  }
  return std::nullopt;
}

absl::StatusOr<Profile> LoadProfile(env::Env* env, std::string_view name_or_path) {
  if (name_or_path.find('/') == std::string_view::npos && !name_or_path.ends_with(".toml")) {
    auto spec = BuiltinProfile(name_or_path);
    if (!spec) {
      return absl::NotFoundError(
          StrCat("no built-in export profile '", name_or_path,
                 "' (built in: ", fmt::format("{}", fmt::join(BuiltinProfileNames(), ", ")),
                 "; or give a path to a .toml profile)"));
    }
    return CompileProfile(std::move(*spec));
  }
  std::string path(name_or_path);
  CKPTD_ASSIGN_OR_RETURN(std::string text, env::ReadWholeFile(env, path));
  CKPTD_ASSIGN_OR_RETURN(ProfileSpec spec, ParseProfileToml(text, path));
  return CompileProfile(std::move(spec));
}

absl::StatusOr<Profile> ResolveProfile(env::Env* env, const std::string& profiles_dir,
                                       std::string_view name) {
  if (auto spec = BuiltinProfile(name)) return CompileProfile(std::move(*spec));
  if (!IsValidExportName(name)) {
    return absl::InvalidArgumentError(
        StrCat("export profile name '", name, "' must be [a-z0-9_-]{1,64}"));
  }
  if (!profiles_dir.empty()) {
    std::string path = StrCat(profiles_dir, "/", name, ".toml");
    if (env->Stat(path).ok()) return LoadProfile(env, path);
  }
  return absl::NotFoundError(StrCat("no export profile '", name, "': built in are ",
                                    fmt::format("{}", fmt::join(BuiltinProfileNames(), ", ")),
                                    profiles_dir.empty()
                                        ? std::string("; the daemon has no [export] profiles_dir")
                                        : StrCat("; and none is in ", profiles_dir),
                                    " (or send the profile itself in ExportRequest.definition)"));
}

}  // namespace ckptd::exports
