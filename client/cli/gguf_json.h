// JSON and table renderings of a parsed GGUF header, for `ckptctl inspect`.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "daemon/gguf/reader.h"

namespace ckptd::cli {

// Array items shown in tables before "..." (JSON is always complete).
inline constexpr size_t kTableArrayItems = 8;

// Non-finite floats become the strings "nan", "inf", "-inf" (JSON has none).
nlohmann::ordered_json ValueToJson(const gguf::Value& v);
// {"version","alignment","data_offset","file_size","metadata":[{key,type,value}],"tensors":[...]}
nlohmann::ordered_json FileToJson(const gguf::GgufFile& f);
// A gguf-dump style table; arrays longer than max_items are abbreviated.
std::string FileToTable(const gguf::GgufFile& f, size_t max_items);
// The metadata part of it: a `#  key  type  value` row per entry.
std::string MetadataToTable(const gguf::Metadata& md, size_t max_items);

}  // namespace ckptd::cli
