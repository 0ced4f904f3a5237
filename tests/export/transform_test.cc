// BuildOutput: fuse along rows and columns, split, the rotary row order of
// convert_hf_to_gguf.py, dim permutes, and casts.
#include "daemon/export/transform.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "daemon/gguf/convert.h"

namespace ckptd::exports {
namespace {

using gguf::TensorType;

std::string Floats(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}
std::vector<float> Values(const std::string& s) {
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), s.size());
  return v;
}
std::vector<float> Iota(size_t n, float start = 0) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

OutputRecipe Recipe(OutputRecipe::Kind kind, std::vector<uint64_t> ne, size_t n_sources = 1) {
  OutputRecipe r{.kind = kind};
  r.out = {"t", TensorType::kF32, ne};
  r.element_type = TensorType::kF32;
  r.assembled_ne = ne;
  for (size_t i = 0; i < n_sources; ++i) r.sources.push_back(i);
  return r;
}

TEST(TransformTest, FuseRowsConcatenatesAndFuseColsInterleaves) {
  // Two members of ne [2, 2] (2 rows of 2): rows -> [2, 4], cols -> [4, 2].
  std::string a = Floats({1, 2, 3, 4}), b = Floats({5, 6, 7, 8});
  std::vector<std::string_view> src{a, b};
  std::string out;
  OutputRecipe rows = Recipe(OutputRecipe::Kind::kFuse, {2, 4}, 2);
  rows.axis = 1;
  ASSERT_TRUE(BuildOutput(rows, src, &out).ok());
  EXPECT_EQ(Values(out), (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}));
  OutputRecipe cols = Recipe(OutputRecipe::Kind::kFuse, {4, 2}, 2);
  cols.axis = 0;
  ASSERT_TRUE(BuildOutput(cols, src, &out).ok());
  EXPECT_EQ(Values(out), (std::vector<float>{1, 2, 5, 6, 3, 4, 7, 8}));
}

TEST(TransformTest, SplitTakesItsPart) {
  std::string a = Floats(Iota(12));  // ne [2, 6]
  std::vector<std::string_view> src{a};
  OutputRecipe r = Recipe(OutputRecipe::Kind::kSplit, {2, 2});
  r.axis = 1;
  r.part = 1;
  r.parts = 3;
  std::string out;
  ASSERT_TRUE(BuildOutput(r, src, &out).ok());
  EXPECT_EQ(Values(out), (std::vector<float>{4, 5, 6, 7}));
  r.axis = 0;
  r.assembled_ne = {1, 6};
  r.out.ne = {1, 6};
  r.parts = 2;
  r.part = 1;
  ASSERT_TRUE(BuildOutput(r, src, &out).ok());
  EXPECT_EQ(Values(out), (std::vector<float>{1, 3, 5, 7, 9, 11}));
}

// convert_hf_to_gguf.py: w.reshape(n_head, 2, rows // n_head // 2, cols)
// .swapaxes(1, 2).reshape(rows, cols), computed by hand for 2 heads of 4 rows:
// head rows [a0 a1 b0 b1] (halves a, b) become [a0 b0 a1 b1].
TEST(TransformTest, RopePermuteMatchesTheConverter) {
  EXPECT_EQ(RopeSourceRow(0, 8, 2), 0u);
  EXPECT_EQ(RopeSourceRow(1, 8, 2), 2u);
  EXPECT_EQ(RopeSourceRow(2, 8, 2), 1u);
  EXPECT_EQ(RopeSourceRow(3, 8, 2), 3u);
  EXPECT_EQ(RopeSourceRow(5, 8, 2), 6u);
  std::string a = Floats(Iota(8));  // 8 rows of 1 column
  std::vector<std::string_view> src{a};
  OutputRecipe r = Recipe(OutputRecipe::Kind::kCopy, {1, 8});
  r.rope_heads = 2;
  std::string out;
  ASSERT_TRUE(BuildOutput(r, src, &out).ok());
  EXPECT_EQ(Values(out), (std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7}));
}

TEST(TransformTest, PermuteTransposesAndCastFollows) {
  std::string a = Floats(Iota(6));  // ne [3, 2]: rows {0 1 2} {3 4 5}
  std::vector<std::string_view> src{a};
  OutputRecipe r = Recipe(OutputRecipe::Kind::kCopy, {2, 3});
  r.assembled_ne = {3, 2};
  r.permute = {1, 0};
  std::string out;
  ASSERT_TRUE(BuildOutput(r, src, &out).ok());
  EXPECT_EQ(Values(out), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  r.out.type = TensorType::kBF16;
  ASSERT_TRUE(BuildOutput(r, src, &out).ok());
  ASSERT_EQ(out.size(), 12u);
  uint16_t h;
  std::memcpy(&h, out.data() + 2, 2);
  EXPECT_EQ(h, gguf::Fp32ToBf16(3.0f));
}

TEST(TransformTest, HalfSourcesWidenBeforeQ8_0) {
  std::vector<uint16_t> halves(32);
  std::vector<float> f(32);
  for (int i = 0; i < 32; ++i) {
    f[i] = 0.25f * static_cast<float>(i - 16);
    halves[i] = gguf::Fp32ToFp16(f[i]);
  }
  std::string a(reinterpret_cast<const char*>(halves.data()), 64);
  std::vector<std::string_view> src{a};
  OutputRecipe r = Recipe(OutputRecipe::Kind::kCopy, {32});
  r.element_type = TensorType::kF16;
  r.out.type = TensorType::kQ8_0;
  std::string out;
  ASSERT_TRUE(BuildOutput(r, src, &out).ok());
  std::vector<uint8_t> want(34);
  ASSERT_TRUE(gguf::QuantizeQ8_0(f, want).ok());
  EXPECT_EQ(out, std::string(want.begin(), want.end()));
}

}  // namespace

// W (ne [3, 2]: rows {1 2 3} {4 5 6}) + 0.5 * B A with rank 2, A in f16:
// B A's row o is sum_k B[o][k] A[k]; the q-side rotary permutation and the
// cast apply to the merged rows.
TEST(TransformTest, MergedLoraIsWPlusScaledBTimesA) {
  std::string w = Floats({1, 2, 3, 4, 5, 6});
  std::vector<uint16_t> a16;
  for (float x : {1.0F, 0.0F, 2.0F, 0.0F, 1.0F, -1.0F}) a16.push_back(gguf::Fp32ToFp16(x));
  std::string a(reinterpret_cast<const char*>(a16.data()), a16.size() * 2);
  std::string b = Floats({1, 2, 3, 4});  // ne [2, 2]: B[0] = {1 2}, B[1] = {3 4}
  std::vector<std::string_view> src{w, a, b};
  OutputRecipe r = Recipe(OutputRecipe::Kind::kCopy, {3, 2}, 3);
  r.merge_lora = true;
  r.lora_scale = 0.5F;
  r.lora_rank = 2;
  r.lora_types = {TensorType::kF32, TensorType::kF16, TensorType::kF32};
  std::string out;
  ASSERT_TRUE(BuildOutput(r, src, &out).ok());
  // B A = {1*{1 0 2} + 2*{0 1 -1}, 3*{1 0 2} + 4*{0 1 -1}} = {{1 2 0}, {3 4 2}}.
  EXPECT_EQ(Values(out), (std::vector<float>{1.5F, 3, 3, 5.5F, 7, 7}));
  r.out.type = TensorType::kF16;
  r.assembled_ne = {3, 2};
  r.rope_heads = 1;
  ASSERT_TRUE(BuildOutput(r, src, &out).ok());
  ASSERT_EQ(out.size(), 12u);
  uint16_t h;
  std::memcpy(&h, out.data(), 2);
  EXPECT_EQ(h, gguf::Fp32ToFp16(1.5F)) << "one head of 2 rows: the order is unchanged";
}

}  // namespace ckptd::exports
