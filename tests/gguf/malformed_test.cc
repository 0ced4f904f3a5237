// Reader hardening: a table of malformed files, each rejected with the
// expected error. Files are built byte by byte here, not with our encoder.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>

#include "daemon/gguf/reader.h"
#include "tests/testing/gguf_fixtures.h"

namespace ckptd::gguf {
namespace {

// Raw little-endian byte builder, free to produce anything.
class Raw {
 public:
  Raw& U8(uint8_t v) { return Put(v); }
  Raw& U32(uint32_t v) { return Put(v); }
  Raw& U64(uint64_t v) { return Put(v); }
  Raw& Str(std::string_view s) {
    U64(s.size());
    b_.append(s);
    return *this;
  }
  Raw& Bytes(std::string_view s) {
    b_.append(s);
    return *this;
  }
  Raw& PadTo(size_t alignment) {
    b_.resize((b_.size() + alignment - 1) / alignment * alignment, '\0');
    return *this;
  }
  size_t size() const { return b_.size(); }
  std::string str() const { return b_; }

 private:
  template <typename T>
  Raw& Put(T v) {
    b_.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  std::string b_;
};

Raw Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  Raw r;
  r.U32(kMagic).U32(version).U64(n_tensors).U64(n_kv);
  return r;
}

Raw& KvString(Raw& r, std::string_view key, std::string_view value) {
  return r.Str(key).U32(8).Str(value);
}

Raw& TensorInfoRaw(Raw& r, std::string_view name, std::vector<uint64_t> ne, uint32_t type,
                   uint64_t offset) {
  r.Str(name).U32(static_cast<uint32_t>(ne.size()));
  for (uint64_t n : ne) r.U64(n);
  return r.U32(type).U64(offset);
}

// A valid two-tensor file, plus the offsets of its section boundaries.
struct Valid {
  std::string bytes;
  std::vector<std::tuple<std::string, size_t, std::string>> boundaries;  // where, size, error
};

Valid MakeValid() {
  Raw r = Header(2, 2);
  Valid v;
  v.boundaries.push_back({"empty file", 0, "truncated: magic"});
  v.boundaries.push_back({"inside magic", 2, "truncated: magic"});
  v.boundaries.push_back({"after magic", 4, "truncated: version"});
  v.boundaries.push_back({"after version", 8, "truncated: tensor count"});
  v.boundaries.push_back({"after tensor count", 16, "truncated: metadata count"});
  v.boundaries.push_back({"after kv count", 24, "metadata count 2 cannot fit"});
  r.Str("general.architecture");
  v.boundaries.push_back(
      {"after first key", r.size(), "tensor count 2 cannot fit in the 28 bytes"});
  r.U32(8);
  v.boundaries.push_back({"after first value type", r.size(), "tensor count 2 cannot fit"});
  r.U64(5);
  v.boundaries.push_back({"inside string value", r.size() + 2, "tensor count 2 cannot fit"});
  r.Bytes("llama");
  r.Str("tok").U32(9).U32(4).U64(3);
  v.boundaries.push_back({"inside array", r.size() + 5, "array 'tok' of 3 u32 cannot fit"});
  r.U32(1).U32(2).U32(3);
  v.boundaries.push_back({"after metadata", r.size(), "truncated: tensor name"});
  TensorInfoRaw(r, "a", {4, 2}, 0, 0);
  v.boundaries.push_back({"inside second tensor info", r.size() + 11, "truncated: tensor n_dims"});
  TensorInfoRaw(r, "b", {3}, 24, 32);
  v.boundaries.push_back(
      {"after tensor infos (before padding)", r.size(), "data section would start at"});
  r.PadTo(32);
  r.Bytes(std::string(32, '\x11'));
  v.boundaries.push_back(
      {"inside the last tensor's data", r.size() + 1, "tensor 'b' data [32, 35) runs past"});
  r.Bytes("\x01\x02\x03");
  v.bytes = r.str();
  return v;
}

absl::Status Read(const std::string& bytes) {
  MemorySource src(bytes);
  return ReadHeader(src).status();
}

struct Case {
  std::string name;
  std::function<std::string()> make;
  std::string want;  // substring of the error
};

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const auto& [where, at, want] : MakeValid().boundaries) {
    cases.push_back(
        {"truncated " + where, [at = at] { return MakeValid().bytes.substr(0, at); }, want});
  }
  cases.push_back({"bad magic",
                   [] {
                     auto b = MakeValid().bytes;
                     b[0] = 'X';
                     return b;
                   },
                   "bad magic 'XGUF'"});
  cases.push_back(
      {"version 1", [] { return Header(0, 0, 1).str(); }, "unsupported GGUF version 1"});
  cases.push_back(
      {"version 4", [] { return Header(0, 0, 4).str(); }, "unsupported GGUF version 4"});
  cases.push_back({"kv count past end", [] { return Header(0, 1ull << 60).str(); },
                   "metadata count 1152921504606846976 cannot fit"});
  cases.push_back({"kv count overflow", [] { return Header(0, ~0ull).str(); }, "cannot fit"});
  cases.push_back({"tensor count past end", [] { return Header(~0ull, 0).str(); },
                   "tensor count 18446744073709551615 cannot fit"});
  cases.push_back({"key length past end",
                   [] {
                     Raw r = Header(0, 1);
                     r.U64(1ull << 40).Bytes("abcdefghijklmnopq");
                     return r.str();
                   },
                   "metadata key length 1099511627776 runs past the end"});
  cases.push_back({"string value length past end",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("k").U32(8).U64(~0ull);
                     return r.str();
                   },
                   "string value length 18446744073709551615 runs past the end"});
  cases.push_back({"empty key",
                   [] {
                     Raw r = Header(0, 1);
                     KvString(r, "", "v");
                     return r.str();
                   },
                   "metadata key 0 is empty"});
  cases.push_back({"duplicate key",
                   [] {
                     Raw r = Header(0, 2);
                     KvString(r, "k", "a");
                     KvString(r, "k", "b");
                     return r.str();
                   },
                   "duplicate key 'k'"});
  cases.push_back({"unknown value type",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("k").U32(13).U32(0);
                     return r.str();
                   },
                   "unknown value type 13 for key 'k'"});
  cases.push_back({"unknown array element type",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("k").U32(9).U32(99).U64(0);
                     return r.str();
                   },
                   "unknown value type 99"});
  cases.push_back({"nested array",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("k").U32(9).U32(9).U64(1);
                     return r.str();
                   },
                   "nested array in key 'k'"});
  cases.push_back({"array count past end",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("k").U32(9).U32(4).U64(1ull << 61);
                     return r.str();
                   },
                   "array 'k' of 2305843009213693952 u32 cannot fit"});
  cases.push_back({"string array count past end",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("k").U32(9).U32(8).U64(100).U64(0);
                     return r.str();
                   },
                   "cannot fit"});
  cases.push_back({"array longer than the cap",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("k").U32(9).U32(0).U64((1ull << 24) + 1);
                     return r.Bytes(std::string((1u << 24) + 1, '\0')).str();
                   },
                   "has 16777217 elements; ckptd reads at most 16777216"});
  cases.push_back({"tensor count above the cap",
                   [] { return Header(1u << 21, 0).Bytes(std::string(80u << 20, '\0')).str(); },
                   "2097152 tensors and 0 key/values; ckptd reads at most 1048576"});
  cases.push_back({"bool not 0 or 1",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("k").U32(7).U8(2);
                     return r.str();
                   },
                   "bool value is 2"});
  cases.push_back({"alignment not u32",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("general.alignment").U32(10).U64(32);
                     return r.str();
                   },
                   "general.alignment is u64, must be u32"});
  cases.push_back({"alignment not power of two",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("general.alignment").U32(4).U32(48);
                     return r.str();
                   },
                   "general.alignment 48 is not a power of two"});
  cases.push_back({"alignment zero",
                   [] {
                     Raw r = Header(0, 1);
                     r.Str("general.alignment").U32(4).U32(0);
                     return r.str();
                   },
                   "general.alignment 0 is not a power of two"});
  auto one_tensor = [](std::string_view name, std::vector<uint64_t> ne, uint32_t type,
                       uint64_t offset, size_t data) {
    Raw r = Header(1, 0);
    TensorInfoRaw(r, name, std::move(ne), type, offset);
    r.PadTo(32).Bytes(std::string(data, '\0'));
    return r.str();
  };
  cases.push_back({"tensor name too long",
                   [=] { return one_tensor(std::string(64, 'x'), {1}, 0, 0, 32); },
                   "tensor name of 64 bytes; ggml allows at most 63"});
  cases.push_back(
      {"empty tensor name", [=] { return one_tensor("", {1}, 0, 0, 32); }, "tensor name is empty"});
  cases.push_back({"n_dims 5",
                   [=] {
                     return one_tensor("t", {1, 1, 1, 1, 1}, 0, 0, 32);
                   },
                   "tensor 't' has 5 dims; GGUF allows 1 to 4"});
  cases.push_back({"n_dims 0", [=] { return one_tensor("t", {}, 0, 0, 32); }, "has 0 dims"});
  cases.push_back({"n_dims huge",
                   [] {
                     Raw r = Header(1, 0);
                     r.Str("t").U32(0xffffffff).Bytes(std::string(40, 0));
                     return r.str();
                   },
                   "4294967295 dims"});
  cases.push_back({"zero dim", [=] { return one_tensor("t", {4, 0}, 0, 0, 32); }, "dim 1 is 0"});
  cases.push_back({"element count overflow",
                   [=] {
                     return one_tensor("t", {1ull << 32, 1ull << 32}, 24, 0, 32);
                   },
                   "element count overflows"});
  cases.push_back({"byte count overflow", [=] { return one_tensor("t", {1ull << 61}, 0, 0, 32); },
                   "byte size overflows"});
  cases.push_back({"dim negative as int64",
                   [=] { return one_tensor("t", {1ull << 63}, 24, 0, 32); }, "dim 0 is"});
  cases.push_back({"ne0 not a whole block", [=] { return one_tensor("t", {33}, 8, 0, 64); },
                   "not a multiple of q8_0's block of 32"});
  cases.push_back({"unknown tensor type", [=] { return one_tensor("t", {1}, 77, 0, 32); },
                   "tensor 't' has unknown ggml type 77"});
  cases.push_back({"retired tensor type", [=] { return one_tensor("t", {1}, 31, 0, 32); },
                   "unknown ggml type 31"});
  cases.push_back({"misaligned offset", [=] { return one_tensor("t", {1}, 0, 4, 32); },
                   "offset 4 is not a multiple of the alignment 32"});
  cases.push_back({"data past end of file", [=] { return one_tensor("t", {16}, 0, 0, 32); },
                   "tensor 't' data [0, 64) runs past the end of the file"});
  cases.push_back({"offset past end of file",
                   [=] { return one_tensor("t", {1}, 0, 1ull << 62, 32); }, "runs past the end"});
  cases.push_back({"duplicate tensor name",
                   [] {
                     Raw r = Header(2, 0);
                     TensorInfoRaw(r, "t", {1}, 0, 0);
                     TensorInfoRaw(r, "t", {1}, 0, 32);
                     return r.PadTo(32).Bytes(std::string(64, '\0')).str();
                   },
                   "duplicate tensor name 't'"});
  cases.push_back({"overlapping tensors",
                   [] {
                     Raw r = Header(2, 0);
                     TensorInfoRaw(r, "a", {16}, 0, 0);
                     TensorInfoRaw(r, "b", {1}, 0, 32);
                     return r.PadTo(32).Bytes(std::string(96, '\0')).str();
                   },
                   "tensors 'a' and 'b' overlap at data offset 32"});
  cases.push_back({"header ends before the data section",
                   [] {
                     Raw r = Header(0, 1);
                     KvString(r, "k", "v");  // 24 + 26 = 50 bytes; data would start at 64
                     return r.str();
                   },
                   "data section would start at 64"});
  return cases;
}

TEST(MalformedTest, ValidBaseFileParses) {
  auto st = Read(MakeValid().bytes);
  EXPECT_TRUE(st.ok()) << st;
}

TEST(MalformedTest, EveryCaseIsRejectedWithItsError) {
  std::vector<Case> cases = Cases();
  ASSERT_GE(cases.size(), 25u);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    absl::Status st = Read(c.make());
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr(c.want));
    EXPECT_THAT(std::string(st.message()), ::testing::StartsWith("malformed GGUF"));
  }
}

TEST(MalformedTest, EveryTruncationOfAWrittenFileIsRejected) {
  std::mt19937_64 rng(5);
  auto built = testing::BuildRandomFile(rng);
  // The last tensor's padding may be missing without harm; anything shorter fails.
  const auto& last = built.layout.tensors.back();
  const size_t needed = built.layout.data_offset + last.offset + last.nbytes;
  for (size_t n = 0; n < needed; n += (n < 4096 ? 1 : 61)) {
    ASSERT_FALSE(Read(built.bytes.substr(0, n)).ok()) << n;
  }
  EXPECT_TRUE(Read(built.bytes.substr(0, needed)).ok());
}

// Random header corruptions: the reader never crashes, every rejection is a
// format error with a message, and a corrupted file that still reads and
// verifies has exactly the original tensor table (the content digest covers
// names, types and dims, so a changed table cannot verify).
TEST(MalformedTest, RandomByteFlipsAreRejectedOrHarmless) {
  std::mt19937_64 rng(9);
  auto built = testing::BuildRandomFile(rng);
  MemorySource original_src(built.bytes);
  auto original = ReadHeader(original_src);
  ASSERT_TRUE(original.ok()) << original.status();
  int rejected = 0, verified = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string b = built.bytes;
    for (int k = 0; k < 1 + i % 4; ++k) {
      b[rng() % built.layout.data_offset] = static_cast<char>(rng());
    }
    MemorySource src(b);
    auto f = ReadHeader(src);
    absl::Status st = f.ok() ? Verify(src, *f).status() : f.status();
    if (!st.ok()) {
      ++rejected;
      EXPECT_FALSE(st.message().empty()) << "flip " << i;
      EXPECT_TRUE(st.code() == absl::StatusCode::kInvalidArgument ||
                  st.code() == absl::StatusCode::kDataLoss ||
                  st.code() == absl::StatusCode::kOutOfRange ||
                  st.code() == absl::StatusCode::kFailedPrecondition)  // digest key hit
          << "flip " << i << ": " << st;
      continue;
    }
    ++verified;
    ASSERT_EQ(f->tensors.size(), original->tensors.size()) << "flip " << i;
    for (size_t t = 0; t < f->tensors.size(); ++t) {
      EXPECT_EQ(f->tensors[t].name, original->tensors[t].name) << "flip " << i;
      EXPECT_EQ(f->tensors[t].ne, original->tensors[t].ne) << "flip " << i;
      EXPECT_EQ(f->tensors[t].type, original->tensors[t].type) << "flip " << i;
    }
  }
  EXPECT_GT(rejected, 1500) << verified << " verified";
}

}  // namespace
}  // namespace ckptd::gguf
