// Builders of GGUF content for tests: random metadata of every value type,
// tensors of every type the writer supports, and whole files in memory.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "daemon/gguf/layout.h"
#include "daemon/gguf/writer.h"

namespace ckptd::testing {

// The tensor types ckptd writes (and promises llama.cpp-compatible sizes for).
const std::vector<gguf::TensorType>& WriterTensorTypes();

// One random value of the given type (arrays: random element type, never nested).
gguf::Value RandomValue(gguf::ValueType type, std::mt19937_64& rng);
// Metadata with at least one key of every value type and every array element type.
gguf::Metadata RandomMetadata(std::mt19937_64& rng);
// Tensors of every writer type, random small dims (1..4 of them).
std::vector<gguf::TensorSpec> RandomTensors(std::mt19937_64& rng);
// Random bytes for a tensor of n bytes.
std::string RandomBytes(uint64_t n, std::mt19937_64& rng);

struct BuiltFile {
  gguf::Layout layout;            // as planned (placeholders in the slots)
  std::vector<std::string> data;  // each tensor's bytes
  std::string bytes;              // the whole file
  gguf::ContentDigest digest;
};

// Plans, writes (in chunks of chunk bytes; 0 = one call per tensor) and returns the file.
BuiltFile BuildFile(gguf::Metadata md, std::vector<gguf::TensorSpec> tensors,
                    std::vector<std::string> data, const gguf::PlanOptions& options = {},
                    size_t chunk = 0);
// A file with RandomMetadata and RandomTensors filled with random bytes.
BuiltFile BuildRandomFile(std::mt19937_64& rng, const gguf::PlanOptions& options = {});

}  // namespace ckptd::testing
