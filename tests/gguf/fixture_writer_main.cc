// gguf_fixture_writer OUT.gguf EXPECTED.json [SEED] [ALIGNMENT]
// Writes a random GGUF file with metadata of every value type and tensors of
// every type ckptd writes, and beside it what the file must contain (from the
// in-memory plan, not from reading the file back), for outside parsers.
#include <cstdio>
#include <fstream>
#include <string>

#include "client/cli/gguf_json.h"
#include "tests/testing/gguf_fixtures.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s OUT.gguf EXPECTED.json [SEED] [ALIGNMENT]\n", argv[0]);
    return 2;
  }
  uint64_t seed = argc > 3 ? std::stoull(argv[3]) : 1;
  uint32_t alignment = argc > 4 ? static_cast<uint32_t>(std::stoul(argv[4])) : 32;
  std::mt19937_64 rng(seed);
  auto built = ckptd::testing::BuildRandomFile(rng, {.alignment = alignment});

  ckptd::gguf::Layout final_layout = built.layout;
  ckptd::gguf::FillDigestSlots(built.digest, &final_layout);
  ckptd::gguf::GgufFile expected;
  expected.version = ckptd::gguf::kVersion;
  expected.metadata = final_layout.metadata;
  expected.tensors = final_layout.tensors;
  expected.alignment = final_layout.alignment;
  expected.data_offset = final_layout.data_offset;
  expected.file_size = final_layout.file_size;

  std::ofstream(argv[1], std::ios::binary) << built.bytes;
  std::ofstream(argv[2]) << ckptd::cli::FileToJson(expected).dump(
                                2, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                         << "\n";
  return 0;
}
