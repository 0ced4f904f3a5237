// Typed GGUF metadata values and the ordered key/value list of a file.
// Types are kept exactly as declared: llama.cpp refuses a u64 where it
// expects a u32, so nothing here ever widens or narrows. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "daemon/gguf/types.h"

namespace ckptd::gguf {

class Value;

// A homogeneous array; GGUF (and ggml) allow no nested arrays.
struct Array {
  ValueType element_type = ValueType::kU8;
  std::vector<Value> items;
  friend bool operator==(const Array& a, const Array& b);
};

class Value {
 public:
  // Alternative index == GGUF value type id.
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string, Array, uint64_t, int64_t, double>;

  Value() : v_(uint8_t{0}) {}
  template <typename T>
  requires std::is_constructible_v<Storage, T>
  explicit Value(T v) : v_(std::move(v)) {}
  explicit Value(const char* s) : v_(std::string(s)) {}

  static Value String(std::string s) { return Value(std::move(s)); }
  static Value MakeArray(ValueType element_type, std::vector<Value> items) {
    return Value(Array{element_type, std::move(items)});
  }

  ValueType type() const { return static_cast<ValueType>(v_.index()); }
  const Storage& storage() const { return v_; }
  template <typename T>
  const T* get_if() const {
    return std::get_if<T>(&v_);
  }

  // Bitwise for floats, so NaN payloads round-trip as equal.
  friend bool operator==(const Value& a, const Value& b);

 private:
  Storage v_;
};

// Checks an array's elements all have its element type and none is an array.
absl::Status ValidateValue(const Value& v);
// Bytes the value occupies in a GGUF file (type id not included).
uint64_t EncodedValueSize(const Value& v);
// Human-readable rendering; arrays longer than max_items are abbreviated.
std::string FormatValue(const Value& v, size_t max_items = SIZE_MAX);

// Ordered key/value list; keys are unique and non-empty.
class Metadata {
 public:
  using Entry = std::pair<std::string, Value>;

  // Fails on an empty or duplicate key or an invalid value.
  absl::Status Add(std::string key, Value v);
  // Replaces the value under `key`, or appends it.
  void Set(std::string key, Value v);
  bool Remove(std::string_view key);
  const Value* Find(std::string_view key) const;

  const std::vector<Entry>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }
  friend bool operator==(const Metadata& a, const Metadata& b) = default;

 private:
  std::vector<Entry> entries_;
};

}  // namespace ckptd::gguf
