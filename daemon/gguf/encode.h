// Byte encoding of a planned GGUF header (little-endian, v3). Pure.
#pragma once

#include <string>

#include "daemon/gguf/layout.h"
#include "daemon/gguf/value.h"

namespace ckptd::gguf {

// The whole header: magic, version, counts, key/values, tensor infos and the
// zero padding up to layout.data_offset. Its size is exactly data_offset.
std::string EncodeHeader(const Layout& layout);

// Appends one value's bytes (without its type id) to out.
void AppendValue(std::string* out, const Value& v);

}  // namespace ckptd::gguf
