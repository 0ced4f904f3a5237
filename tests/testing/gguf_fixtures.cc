// GGUF test content builders.
#include "tests/testing/gguf_fixtures.h"

#include <gtest/gtest.h>

#include "daemon/base/strings.h"

namespace ckptd::testing {
namespace {

using gguf::Value;
using gguf::ValueType;

template <typename T>
T RandomInt(std::mt19937_64& rng) {
  return static_cast<T>(rng());
}

template <typename F, typename U>
F RandomFloat(std::mt19937_64& rng) {
  // Any bit pattern, NaNs and infinities included: values must round-trip bitwise.
  U bits = static_cast<U>(rng());
  F f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::string RandomString(std::mt19937_64& rng) {
  // Whole UTF-8 code points, including ones JSON and terminals must escape.
  static const std::vector<std::string> kPieces = {
      "a", "b",  "Z",  "0",  "9",  " ",    "_",      ".",      "-",
      "/", "\"", "\\", "\n", "\t", "\x01", "\u00e9", "\u4e2d", "\U0001F600"};
  std::string s;
  size_t n = rng() % 24;
  for (size_t i = 0; i < n; ++i) s += kPieces[rng() % kPieces.size()];
  return s;
}

}  // namespace

const std::vector<gguf::TensorType>& WriterTensorTypes() {
  using T = gguf::TensorType;
  static const std::vector<T> kTypes = {T::kF32, T::kF16, T::kBF16, T::kF64, T::kI8,
                                        T::kI16, T::kI32, T::kI64,  T::kQ8_0};
  return kTypes;
}

Value RandomValue(ValueType type, std::mt19937_64& rng) {
  switch (type) {
    case ValueType::kU8:
      return Value(RandomInt<uint8_t>(rng));
    case ValueType::kI8:
      return Value(RandomInt<int8_t>(rng));
    case ValueType::kU16:
      return Value(RandomInt<uint16_t>(rng));
    case ValueType::kI16:
      return Value(RandomInt<int16_t>(rng));
    case ValueType::kU32:
      return Value(RandomInt<uint32_t>(rng));
    case ValueType::kI32:
      return Value(RandomInt<int32_t>(rng));
    case ValueType::kU64:
      return Value(RandomInt<uint64_t>(rng));
    case ValueType::kI64:
      return Value(RandomInt<int64_t>(rng));
    case ValueType::kF32:
      return Value(RandomFloat<float, uint32_t>(rng));
    case ValueType::kF64:
      return Value(RandomFloat<double, uint64_t>(rng));
    case ValueType::kBool:
      return Value(rng() % 2 == 0);
    case ValueType::kString:
      return Value::String(RandomString(rng));
    case ValueType::kArray: {
      ValueType elem;
      do {
        elem = static_cast<ValueType>(rng() % gguf::kValueTypeCount);
      } while (elem == ValueType::kArray);
      std::vector<Value> items;
      size_t n = rng() % 20;
      for (size_t i = 0; i < n; ++i) items.push_back(RandomValue(elem, rng));
      return Value::MakeArray(elem, std::move(items));
    }
  }
  return Value();
}

gguf::Metadata RandomMetadata(std::mt19937_64& rng) {
  gguf::Metadata md;
  EXPECT_TRUE(md.Add("general.architecture", Value("llama")).ok());
  for (uint32_t t = 0; t < gguf::kValueTypeCount; ++t) {
    auto type = static_cast<ValueType>(t);
    EXPECT_TRUE(
        md.Add(StrCat("test.scalar.", gguf::ValueTypeName(type)), RandomValue(type, rng)).ok());
    if (type == ValueType::kArray) continue;
    std::vector<Value> items;
    for (size_t i = 0; i < 1 + rng() % 9; ++i) items.push_back(RandomValue(type, rng));
    EXPECT_TRUE(md.Add(StrCat("test.array.", gguf::ValueTypeName(type)),
                       Value::MakeArray(type, std::move(items)))
                    .ok());
  }
  EXPECT_TRUE(md.Add("test.array.empty", Value::MakeArray(ValueType::kU32, {})).ok());
  for (int i = 0; i < 5; ++i) {
    auto type = static_cast<ValueType>(rng() % gguf::kValueTypeCount);
    EXPECT_TRUE(md.Add(StrCat("test.random.", i), RandomValue(type, rng)).ok());
  }
  return md;
}

std::vector<gguf::TensorSpec> RandomTensors(std::mt19937_64& rng) {
  std::vector<gguf::TensorSpec> out;
  int i = 0;
  for (gguf::TensorType type : WriterTensorTypes()) {
    auto info = *gguf::LookupTensorType(static_cast<uint32_t>(type));
    gguf::TensorSpec spec{StrCat("blk.", i++, ".", info.name, ".weight"), type, {}};
    size_t dims = 1 + rng() % gguf::kMaxDims;
    spec.ne.push_back(info.block_elems * (1 + rng() % 3));
    for (size_t d = 1; d < dims; ++d) spec.ne.push_back(1 + rng() % 5);
    out.push_back(std::move(spec));
  }
  return out;
}

std::string RandomBytes(uint64_t n, std::mt19937_64& rng) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

BuiltFile BuildFile(gguf::Metadata md, std::vector<gguf::TensorSpec> tensors,
                    std::vector<std::string> data, const gguf::PlanOptions& options, size_t chunk) {
  BuiltFile out;
  auto layout = gguf::PlanLayout(std::move(md), std::move(tensors), options);
  EXPECT_TRUE(layout.ok()) << layout.status();
  out.layout = *layout;
  out.data = std::move(data);
  gguf::StringSink sink;
  gguf::Writer writer(*layout, &sink);
  EXPECT_TRUE(writer.WriteHeader().ok());
  std::string all;
  for (const std::string& d : out.data) all += d;
  if (chunk == 0) {
    for (const std::string& d : out.data) EXPECT_TRUE(writer.WriteData(d).ok());
  } else {
    for (size_t at = 0; at < all.size(); at += chunk) {
      EXPECT_TRUE(writer.WriteData(std::string_view(all).substr(at, chunk)).ok());
    }
  }
  auto digest = writer.Finish();
  EXPECT_TRUE(digest.ok()) << digest.status();
  if (digest.ok()) out.digest = *digest;
  out.bytes = sink.data();
  return out;
}

BuiltFile BuildRandomFile(std::mt19937_64& rng, const gguf::PlanOptions& options) {
  gguf::Metadata md = RandomMetadata(rng);
  std::vector<gguf::TensorSpec> tensors = RandomTensors(rng);
  std::vector<std::string> data;
  for (const auto& t : tensors) data.push_back(RandomBytes(*gguf::TensorBytes(t.type, t.ne), rng));
  return BuildFile(std::move(md), std::move(tensors), std::move(data), options);
}

}  // namespace ckptd::testing
