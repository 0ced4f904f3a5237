// gguf_fixture_writer OUT.gguf EXPECTED.json [SEED] [ALIGNMENT] [gguf-hash]
// Writes a random GGUF file with metadata of every value type and tensors of
// every type ckptd writes, and beside it what the file must contain, taken
// from the in-memory plan (not from reading the file back), for outside
// parsers. Every scalar in EXPECTED.json is a string so nothing is lost in
// a JavaScript number: integers in decimal, floats as their IEEE bits in hex
// ("nan" for any NaN, whose payload JavaScript does not keep).
#include <bit>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/testing/gguf_fixtures.h"

namespace {

using ckptd::gguf::Value;

nlohmann::ordered_json Exact(const Value& v) {
  return std::visit(
      [](const auto& x) -> nlohmann::ordered_json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, ckptd::gguf::Array>) {
          nlohmann::ordered_json out = nlohmann::ordered_json::array();
          for (const Value& item : x.items) out.push_back(Exact(item));
          return out;
        } else if constexpr (std::is_same_v<T, std::string>) {
          return x;
        } else if constexpr (std::is_same_v<T, bool>) {
          return x ? "true" : "false";
        } else if constexpr (std::is_floating_point_v<T>) {
          if (std::isnan(x)) return "nan";
          using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
          char buf[32];
          std::snprintf(buf, sizeof buf, "%llx",
                        static_cast<unsigned long long>(std::bit_cast<Bits>(x)));
          return buf;
        } else {
          return std::to_string(x);
        }
      },
      v.storage());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s OUT.gguf EXPECTED.json [SEED] [ALIGNMENT]\n", argv[0]);
    return 2;
  }
  uint64_t seed = argc > 3 ? std::stoull(argv[3]) : 1;
  uint32_t alignment = argc > 4 ? static_cast<uint32_t>(std::stoul(argv[4])) : 32;
  std::mt19937_64 rng(seed);
  const bool gguf_hash = argc > 5 && std::string(argv[5]) == "gguf-hash";
  auto built = ckptd::testing::BuildRandomFile(
      rng, {.alignment = alignment,
            .uuid_scheme = gguf_hash ? ckptd::gguf::UuidScheme::kGgufHash
                                     : ckptd::gguf::UuidScheme::kContent});
  ckptd::gguf::Layout layout = built.layout;
  ckptd::gguf::FillDigestSlots(built.digest, &layout);

  nlohmann::ordered_json md = nlohmann::ordered_json::array();
  for (const auto& [key, value] : layout.metadata.entries()) {
    nlohmann::ordered_json e = {{"key", key}, {"type", static_cast<uint32_t>(value.type())}};
    if (auto* arr = value.get_if<ckptd::gguf::Array>()) {
      e["element_type"] = static_cast<uint32_t>(arr->element_type);
    }
    e["value"] = Exact(value);
    md.push_back(std::move(e));
  }
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  for (const auto& t : layout.tensors) {
    std::vector<std::string> ne;
    for (uint64_t n : t.ne) ne.push_back(std::to_string(n));
    tensors.push_back({{"name", t.name},
                       {"type", static_cast<uint32_t>(t.type)},
                       {"ne", ne},
                       {"offset", std::to_string(t.offset)},
                       {"nbytes", std::to_string(t.nbytes)}});
  }
  nlohmann::ordered_json expected = {{"version", 3},
                                     {"alignment", layout.alignment},
                                     {"data_offset", std::to_string(layout.data_offset)},
                                     {"file_size", std::to_string(layout.file_size)},
                                     {"metadata", md},
                                     {"tensors", tensors}};
  std::ofstream(argv[1], std::ios::binary) << built.bytes;
  std::ofstream(argv[2]) << expected.dump(1) << "\n";
  return 0;
}
