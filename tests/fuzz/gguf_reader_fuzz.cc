// libFuzzer target: any bytes through ReadHeader and, when they parse, Verify.
// The reader must reject garbage with a Status; any crash or sanitizer report
// is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "daemon/gguf/reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ckptd::MemorySource src(std::string_view(reinterpret_cast<const char*>(data), size));
  auto file = ckptd::gguf::ReadHeader(src);
  if (file.ok()) (void)ckptd::gguf::Verify(src, *file);
  return 0;
}
