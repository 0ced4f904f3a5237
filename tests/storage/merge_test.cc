// MergeParts: parts written as the daemon writes them (split and shard
// keys), merged, compared tensor by tensor with the single-file checkpoint
// of the whole tensors; the refusals name what is wrong and leave nothing.
#include "daemon/storage/merge.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/gguf/reader.h"
#include "daemon/storage/checkpoint_writer.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/split_part.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::storage {
namespace {

using ::testing::HasSubstr;

// Whole tensors, row-major floats: "a" [rows=6][cols=4] (ne {4, 6}), sliced
// along its rows (dim 1, the outermost); "b" [3][8] (ne {8, 3}) sliced along
// dim 0 (inside each row); "c" whole, on rank 1.
struct Full {
  std::vector<float> a = Iota(24, 0), b = Iota(24, 100), c = Iota(5, 200);
  static std::vector<float> Iota(size_t n, float from) {
    std::vector<float> v(n);
    std::iota(v.begin(), v.end(), from);
    return v;
  }
};

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// Rows [r0, r1) of a row-major [rows][cols] matrix.
std::vector<float> Rows(const std::vector<float>& m, size_t cols, size_t r0, size_t r1) {
  return {m.begin() + static_cast<ptrdiff_t>(r0 * cols),
          m.begin() + static_cast<ptrdiff_t>(r1 * cols)};
}
// Columns [c0, c1) of every row.
std::vector<float> Cols(const std::vector<float>& m, size_t cols, size_t c0, size_t c1) {
  std::vector<float> out;
  for (size_t r = 0; r < m.size() / cols; ++r) {
    for (size_t c = c0; c < c1; ++c) out.push_back(m[r * cols + c]);
  }
  return out;
}

void Shard(gguf::Metadata* md, const std::string& name, std::vector<uint64_t> full, uint32_t dim,
           uint64_t offset) {
  std::vector<gguf::Value> ne;
  for (uint64_t d : full) ne.emplace_back(d);
  md->Set(StrCat(kShardPrefix, name, ".full_ne"),
          gguf::Value::MakeArray(gguf::ValueType::kU64, std::move(ne)));
  md->Set(StrCat(kShardPrefix, name, ".dim"), gguf::Value(dim));
  md->Set(StrCat(kShardPrefix, name, ".offset"), gguf::Value(offset));
}

class MergeTest : public ::testing::Test {
 protected:
  // Rank r of 2: rows [3r, 3r+3) of a, columns [4r, 4r+4) of b; c on rank 1.
  // `a_rows`: rank 1's share of a's rows (3 tiles exactly).
  void WritePart(uint32_t rank, uint64_t a_from = 3, uint64_t a_rows = 3) {
    gguf::Metadata model;
    model.Set("general.architecture", gguf::Value("llama"));
    SavePlan plan;
    plan.step = 7;
    plan.part = SplitName{.step = 7, .rank = rank, .world_size = 2};
    plan.model_metadata = *SplitPartMetadata(model, rank, 2, 3);
    const uint64_t a0 = rank == 0 ? 0 : a_from, an = rank == 0 ? 3 : a_rows;
    Shard(&plan.model_metadata, "a", {4, 6}, 1, a0);
    Shard(&plan.model_metadata, "b", {8, 3}, 0, rank * 4);
    plan.tensors.push_back({{"a", gguf::TensorType::kF32, {4, an}}, TensorGroup::kModel});
    plan.tensors.push_back({{"b", gguf::TensorType::kF32, {4, 3}}, TensorGroup::kModel});
    if (rank == 1)
      plan.tensors.push_back({{"c", gguf::TensorType::kF32, {5}}, TensorGroup::kModel});
    auto w = CheckpointWriter::Create(env::Env::Default(), tmp_.path(), std::move(plan));
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->WriteData(Bytes(Rows(full_.a, 4, a0, a0 + an))).ok());
    ASSERT_TRUE((*w)->WriteData(Bytes(Cols(full_.b, 8, rank * 4, rank * 4 + 4))).ok());
    if (rank == 1) {
      ASSERT_TRUE((*w)->WriteData(Bytes(full_.c)).ok());
    }
    ASSERT_TRUE((*w)->Finish().ok());
    ASSERT_TRUE(env::Env::Default()
                    ->RenameFile((*w)->model().temp_path, tmp_.Join((*w)->model().final_name))
                    .ok());
    (*w)->Release();
  }
  std::string First() const { return tmp_.Join(SplitFileName(7, 0, 2)); }
  std::string TensorBytes(const std::string& path, const std::string& name) {
    auto f = env::Env::Default()->OpenForRead(path);
    auto h = gguf::ReadHeader(**f);
    for (const auto& t : h->tensors) {
      if (t.name != name) continue;
      std::string out(t.nbytes, '\0');
      EXPECT_TRUE((*f)->ReadUpTo(h->data_offset + t.offset, t.nbytes, out.data()).ok());
      return out;
    }
    return "";
  }
  Full full_;
  testing::TempDir tmp_;
};

TEST_F(MergeTest, SlicesAreReassembledIntoTheWholeTensors) {
  WritePart(0);
  WritePart(1);
  const std::string out = tmp_.Join("merged.gguf");
  auto merged = MergeParts(env::Env::Default(), First(), out);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(merged->tensors, 3u);
  EXPECT_EQ(merged->sliced_tensors, 2u);
  EXPECT_EQ(TensorBytes(out, "a"), Bytes(full_.a));
  EXPECT_EQ(TensorBytes(out, "b"), Bytes(full_.b));
  EXPECT_EQ(TensorBytes(out, "c"), Bytes(full_.c));
  auto f = env::Env::Default()->OpenForRead(out);
  auto h = gguf::ReadHeader(**f);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->tensors[0].ne, (std::vector<uint64_t>{4, 6}));
  EXPECT_EQ(h->metadata.Find(kSplitNo), nullptr);
  EXPECT_EQ(h->metadata.Find("ckpt.shard.a.dim"), nullptr);
  EXPECT_NE(h->metadata.Find("general.architecture"), nullptr);
  auto verified = gguf::Verify(**f, *h);  // digests of the merged file hold
  EXPECT_TRUE(verified.ok()) << verified.status();
}

TEST_F(MergeTest, AGapAMissingPartOrACorruptPartIsRefusedAndLeavesNothing) {
  WritePart(0);
  WritePart(1, /*a_from=*/4, /*a_rows=*/2);  // rows 3 missing
  const std::string out = tmp_.Join("merged.gguf");
  auto gap = MergeParts(env::Env::Default(), First(), out);
  EXPECT_THAT(gap.status().message(), HasSubstr("gap"));
  EXPECT_FALSE(env::Env::Default()->Stat(out).ok());
  ASSERT_TRUE(env::Env::Default()->RemoveFile(tmp_.Join(SplitFileName(7, 1, 2))).ok());
  auto missing = MergeParts(env::Env::Default(), First(), out);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("part 2 of 2"));
  WritePart(1);
  {  // one byte of part 2's tensor "c" flipped
    const std::string p = tmp_.Join(SplitFileName(7, 1, 2));
    auto f = env::Env::Default()->OpenForRead(p);
    auto h = gguf::ReadHeader(**f);
    ASSERT_TRUE(h.ok());
    auto text = env::ReadWholeFile(env::Env::Default(), p);
    ASSERT_TRUE(text.ok());
    (*text)[h->data_offset + h->tensors.back().offset] ^= 1;
    ASSERT_TRUE(env::WriteFileAtomically(env::Env::Default(), p, *text).ok());
  }
  auto corrupt = MergeParts(env::Env::Default(), First(), out);
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kDataLoss);
  auto names = env::Env::Default()->ListDir(tmp_.path());
  ASSERT_TRUE(names.ok());
  for (const std::string& name : *names) {
    EXPECT_FALSE(name.starts_with(".") || name == "merged.gguf") << name;
  }
  EXPECT_THAT(
      MergeParts(env::Env::Default(), tmp_.Join(SplitFileName(7, 1, 2)), out).status().message(),
      HasSubstr("not the first part"));
}

}  // namespace
}  // namespace ckptd::storage
