// libFuzzer target: any text through the export-profile parser and
// compiler (TOML, rename patterns, conversions). A Profile or a Status; a
// crash or sanitizer report is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/export/profile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto spec = ckptd::exports::ParseProfileToml(text, "fuzz.toml");
  if (!spec.ok()) {
    if (spec.status().message().empty()) std::abort();
    return 0;
  }
  auto profile = ckptd::exports::CompileProfile(*spec);
  if (!profile.ok() && profile.status().message().empty()) std::abort();
  return 0;
}
