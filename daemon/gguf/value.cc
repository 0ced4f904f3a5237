// Typed metadata values: validation, sizing, formatting, equality.
#include "daemon/gguf/value.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "daemon/base/strings.h"

namespace ckptd::gguf {
namespace {

// Bit-identical (NaN payloads and -0 included), not numerically equal.
template <typename F>
bool SameBits(F a, F b) {
  return std::bit_cast<std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>>(a) ==
         std::bit_cast<std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>>(b);
}

std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          fmt::format_to(std::back_inserter(out), "\\x{:02x}", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

bool operator==(const Value& a, const Value& b) {
  if (a.v_.index() != b.v_.index()) return false;
  if (auto* f = a.get_if<float>()) return SameBits(*f, *b.get_if<float>());
  if (auto* d = a.get_if<double>()) return SameBits(*d, *b.get_if<double>());
  return a.v_ == b.v_;
}

bool operator==(const Array& a, const Array& b) {
  return a.element_type == b.element_type && a.items == b.items;
}

absl::Status ValidateValue(const Value& v) {
  const Array* arr = v.get_if<Array>();
  if (arr == nullptr) return absl::OkStatus();
  if (arr->element_type == ValueType::kArray) {
    return absl::InvalidArgumentError("nested arrays are not allowed in GGUF");
  }
  if (static_cast<uint32_t>(arr->element_type) >= kValueTypeCount) {
    return absl::InvalidArgumentError("array element type is unknown");
  }
  for (size_t i = 0; i < arr->items.size(); ++i) {
    if (arr->items[i].type() != arr->element_type) {
      return absl::InvalidArgumentError(StrCat("array element ", i, " is ",
                                               ValueTypeName(arr->items[i].type()),
                                               ", array holds ", ValueTypeName(arr->element_type)));
    }
  }
  return absl::OkStatus();
}

uint64_t EncodedValueSize(const Value& v) {
  if (auto* s = v.get_if<std::string>()) return 8 + s->size();
  if (auto* arr = v.get_if<Array>()) {
    uint64_t total = 4 + 8;
    for (const Value& item : arr->items) total += EncodedValueSize(item);
    return total;
  }
  return *ScalarSize(v.type());
}

std::string FormatValue(const Value& v, size_t max_items) {
  return std::visit(
      [&](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return Quote(x);
        } else if constexpr (std::is_same_v<T, Array>) {
          std::string out = "[";
          size_t shown = std::min(max_items, x.items.size());
          for (size_t i = 0; i < shown; ++i) {
            if (i) out += ", ";
            out += FormatValue(x.items[i], max_items);
          }
          if (shown < x.items.size()) {
            StrAppend(&out, shown ? ", " : "", "... ", x.items.size() - shown, " more");
          }
          return out + "]";
        } else if constexpr (std::is_same_v<T, bool>) {
          return x ? "true" : "false";
        } else if constexpr (std::is_floating_point_v<T>) {
          return fmt::format("{}", x);  // the shortest text that reads back exactly
        } else if constexpr (sizeof(T) == 1) {
          return StrCat(static_cast<int>(x));
        } else {
          return StrCat(x);
        }
      },
      v.storage());
}

absl::Status Metadata::Add(std::string key, Value v) {
  if (key.empty()) return absl::InvalidArgumentError("metadata key is empty");
  if (Find(key) != nullptr) {
    return absl::InvalidArgumentError(StrCat("duplicate metadata key '", key, "'"));
  }
  if (absl::Status st = ValidateValue(v); !st.ok()) {
    return absl::InvalidArgumentError(StrCat("metadata key '", key, "': ", st.message()));
  }
  entries_.emplace_back(std::move(key), std::move(v));
  return absl::OkStatus();
}

void Metadata::Set(std::string key, Value v) {
  for (auto& [k, value] : entries_) {
    if (k == key) {
      value = std::move(v);
      return;
    }
  }
  entries_.emplace_back(std::move(key), std::move(v));
}

bool Metadata::Remove(std::string_view key) {
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const Entry& e) { return e.first == key; });
  if (it == entries_.end()) return false;
  entries_.erase(it);
  return true;
}

const Value* Metadata::Find(std::string_view key) const {
  for (const auto& [k, v] : entries_) {
    if (k == key) return &v;
  }
  return nullptr;
}

}  // namespace ckptd::gguf
