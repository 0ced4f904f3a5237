// Renders GGUF headers for humans (table) and machines (JSON).
#include "client/cli/gguf_json.h"

#include <fmt/ranges.h>

#include <cmath>

#include "daemon/base/strings.h"

namespace ckptd::cli {
namespace {

template <typename F>
nlohmann::ordered_json FloatToJson(F x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return x;
}

std::string TypeLabel(const gguf::Value& v) {
  if (auto* arr = v.get_if<gguf::Array>()) {
    return StrCat("[", gguf::ValueTypeName(arr->element_type), "; ", arr->items.size(), "]");
  }
  return std::string(gguf::ValueTypeName(v.type()));
}

}  // namespace

nlohmann::ordered_json ValueToJson(const gguf::Value& v) {
  return std::visit(
      [](const auto& x) -> nlohmann::ordered_json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, gguf::Array>) {
          nlohmann::ordered_json out = nlohmann::ordered_json::array();
          for (const gguf::Value& item : x.items) out.push_back(ValueToJson(item));
          return out;
        } else if constexpr (std::is_floating_point_v<T>) {
          return FloatToJson(x);
        } else {
          return x;
        }
      },
      v.storage());
}

nlohmann::ordered_json FileToJson(const gguf::GgufFile& f) {
  nlohmann::ordered_json md = nlohmann::ordered_json::array();
  for (const auto& [key, value] : f.metadata.entries()) {
    nlohmann::ordered_json e = {{"key", key}, {"type", gguf::ValueTypeName(value.type())}};
    if (auto* arr = value.get_if<gguf::Array>()) {
      e["element_type"] = gguf::ValueTypeName(arr->element_type);
    }
    e["value"] = ValueToJson(value);
    md.push_back(std::move(e));
  }
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  for (const gguf::TensorInfo& t : f.tensors) {
    tensors.push_back({{"name", t.name},
                       {"type", gguf::LookupTensorType(static_cast<uint32_t>(t.type))->name},
                       {"type_id", static_cast<uint32_t>(t.type)},
                       {"ne", t.ne},
                       {"offset", t.offset},
                       {"nbytes", t.nbytes}});
  }
  return {{"version", f.version},     {"alignment", f.alignment},  {"data_offset", f.data_offset},
          {"file_size", f.file_size}, {"metadata", std::move(md)}, {"tensors", std::move(tensors)}};
}

std::string MetadataToTable(const gguf::Metadata& md, size_t max_items) {
  size_t key_width = 3;
  for (const auto& [key, value] : md.entries()) key_width = std::max(key_width, key.size());
  std::string out =
      fmt::format("{:>5}  {:<{}}  {:<14} {}\n", "#", "key", key_width, "type", "value");
  size_t i = 0;
  for (const auto& [key, value] : md.entries()) {
    fmt::format_to(std::back_inserter(out), "{:>5}  {:<{}}  {:<14} {}\n", ++i, key, key_width,
                   TypeLabel(value), gguf::FormatValue(value, max_items));
  }
  return out;
}

std::string FileToTable(const gguf::GgufFile& f, size_t max_items) {
  std::string out = fmt::format(
      "GGUF v{}, alignment {}, {} key/values, {} tensors, data at offset {}, {} bytes\n\n",
      f.version, f.alignment, f.metadata.size(), f.tensors.size(), f.data_offset, f.file_size);
  out += MetadataToTable(f.metadata, max_items);
  size_t name_width = 4;
  for (const auto& t : f.tensors) name_width = std::max(name_width, t.name.size());
  fmt::format_to(std::back_inserter(out), "\n{:>5}  {:<{}}  {:<7} {:<28} {:>14} {:>14}\n", "#",
                 "tensor", name_width, "type", "ne", "offset", "bytes");
  size_t i = 0;
  for (const auto& t : f.tensors) {
    fmt::format_to(std::back_inserter(out), "{:>5}  {:<{}}  {:<7} {:<28} {:>14} {:>14}\n", ++i,
                   t.name, name_width, gguf::LookupTensorType(static_cast<uint32_t>(t.type))->name,
                   fmt::format("[{}]", fmt::join(t.ne, ", ")), t.offset, t.nbytes);
  }
  return out;
}

}  // namespace ckptd::cli
