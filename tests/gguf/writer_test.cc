// Writer and planner contracts: every invalid plan or misuse is refused with
// a message that names the problem.
#include "daemon/gguf/writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/base/status.h"

namespace ckptd::gguf {
namespace {

using ::testing::HasSubstr;

absl::Status Plan(std::vector<TensorSpec> tensors, Metadata md = {}, PlanOptions options = {}) {
  return PlanLayout(std::move(md), std::move(tensors), options).status();
}

TEST(PlanLayoutTest, RejectsInvalidTensors) {
  EXPECT_THAT(std::string(Plan({{"", TensorType::kF32, {1}}}).message()), HasSubstr("empty"));
  EXPECT_THAT(std::string(Plan({{std::string(64, 'n'), TensorType::kF32, {1}}}).message()),
              HasSubstr("at most 63"));
  EXPECT_TRUE(Plan({{std::string(63, 'n'), TensorType::kF32, {1}}}).ok());
  EXPECT_THAT(
      std::string(Plan({{"a", TensorType::kF32, {1}}, {"a", TensorType::kF16, {2}}}).message()),
      HasSubstr("duplicate tensor name 'a'"));
  EXPECT_THAT(std::string(Plan({{"a", TensorType::kF32, {}}}).message()), HasSubstr("1 to 4"));
  EXPECT_THAT(std::string(Plan({{"a", TensorType::kF32, {1, 1, 1, 1, 1}}}).message()),
              HasSubstr("1 to 4"));
  EXPECT_THAT(std::string(Plan({{"a", TensorType::kF32, {4, 0}}}).message()),
              HasSubstr("dim 1 is 0"));
  EXPECT_THAT(std::string(Plan({{"a", TensorType::kQ8_0, {33}}}).message()),
              HasSubstr("multiple of q8_0"));
  EXPECT_THAT(std::string(Plan({{"a", TensorType::kF32, {1ull << 40, 1ull << 30}}}).message()),
              HasSubstr("overflows"));
  EXPECT_THAT(std::string(Plan({{"a", static_cast<TensorType>(4), {1}}}).message()),
              HasSubstr("unknown tensor type id 4"));
}

TEST(PlanLayoutTest, RejectsBadMetadataAndAlignment) {
  Metadata nested;
  nested.Set("k", Value::MakeArray(ValueType::kArray, {}));
  EXPECT_THAT(std::string(Plan({}, nested).message()), HasSubstr("nested"));
  Metadata mixed;
  mixed.Set("k", Value::MakeArray(ValueType::kU32, {Value(uint32_t{1}), Value(uint64_t{2})}));
  EXPECT_THAT(std::string(Plan({}, mixed).message()), HasSubstr("element 1 is u64"));
  EXPECT_THAT(std::string(Plan({}, {}, {.alignment = 48}).message()),
              HasSubstr("not a power of two"));
  Metadata wrong_type;
  wrong_type.Set("general.alignment", Value(uint64_t{32}));
  EXPECT_THAT(std::string(Plan({}, wrong_type).message()), HasSubstr("must be u32"));
  Metadata conflict;
  conflict.Set("general.alignment", Value(uint32_t{32}));
  EXPECT_THAT(std::string(Plan({}, conflict, {.alignment = 64}).message()), HasSubstr("disagrees"));
  Metadata dup;
  ASSERT_TRUE(dup.Add("k", Value(1)).ok());
  EXPECT_THAT(std::string(dup.Add("k", Value(2)).message()),
              HasSubstr("duplicate metadata key 'k'"));
  EXPECT_THAT(std::string(dup.Add("", Value(2)).message()), HasSubstr("empty"));
}

TEST(PlanLayoutTest, NonDefaultAlignmentIsRecordedAsU32) {
  auto layout = PlanLayout({}, {{"a", TensorType::kF32, {3}}}, {.alignment = 4096});
  ASSERT_TRUE(layout.ok());
  const Value* a = layout->metadata.Find(kKeyAlignment);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(*a, Value(uint32_t{4096}));
  EXPECT_EQ(layout->data_offset % 4096, 0u);
  EXPECT_EQ(layout->file_size, layout->data_offset + 4096);
}

TEST(WriterTest, TensorsAreContiguousAndEachPaddedLikeGgml) {
  auto layout = PlanLayout({}, {{"a", TensorType::kF32, {3}},
                                {"b", TensorType::kQ8_0, {64}},
                                {"c", TensorType::kBF16, {5, 3}}});
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->tensors[0].offset, 0u);
  EXPECT_EQ(layout->tensors[0].nbytes, 12u);
  EXPECT_EQ(layout->tensors[1].offset, 32u);
  EXPECT_EQ(layout->tensors[1].nbytes, 68u);
  EXPECT_EQ(layout->tensors[2].offset, 128u);
  EXPECT_EQ(layout->tensors[2].nbytes, 30u);
  EXPECT_EQ(layout->file_size, layout->data_offset + 160);
}

TEST(WriterTest, RefusesMisuse) {
  auto layout = PlanLayout({}, {{"a", TensorType::kI8, {4}}, {"b", TensorType::kI8, {2}}});
  ASSERT_TRUE(layout.ok());
  StringSink sink;
  Writer w(*layout, &sink);
  EXPECT_EQ(w.WriteData("x").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(w.WriteHeader().ok());
  EXPECT_EQ(w.WriteHeader().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(w.WriteData("abcde").ok());  // spans into tensor b
  EXPECT_EQ(w.current_tensor(), 1u);
  auto early = w.Finish();
  EXPECT_THAT(std::string(early.status().message()), HasSubstr("tensor 'b' has 1 of 2 bytes"));
  EXPECT_THAT(std::string(w.WriteData("fgh").message()),
              HasSubstr("2 bytes of data past the last tensor"));
}

// A sink that fails after n appends, like a disk that fills up.
class FailingSink : public Sink {
 public:
  explicit FailingSink(int ok_appends) : left_(ok_appends) {}
  absl::Status Append(std::string_view) override {
    return left_-- > 0 ? absl::OkStatus() : absl::ResourceExhaustedError("disk full");
  }
  absl::Status WriteAt(uint64_t, std::string_view) override { return absl::OkStatus(); }

 private:
  int left_;
};

TEST(WriterTest, SinkErrorsPropagate) {
  auto layout = PlanLayout({}, {{"a", TensorType::kI8, {4}}});
  ASSERT_TRUE(layout.ok());
  FailingSink sink(1);
  Writer w(*layout, &sink);
  ASSERT_TRUE(w.WriteHeader().ok());
  EXPECT_EQ(w.WriteData("abcd").code(), absl::StatusCode::kResourceExhausted);
}

// A sink over memory that shares a clone source's bytes the way a file
// system with reflink does (here: by copying them), or cannot.
class CloningSink final : public Sink {
 public:
  CloningSink(std::string source, bool can_share) : source_(std::move(source)), can_(can_share) {}
  absl::Status Append(std::string_view bytes) override { return out_.Append(bytes); }
  absl::Status WriteAt(uint64_t offset, std::string_view bytes) override {
    return out_.WriteAt(offset, bytes);
  }
  absl::Status AppendClone(uint64_t src_offset, uint64_t n) override {
    if (!can_) return absl::UnimplementedError("no reflink here");
    shared_ += n;
    return out_.Append(std::string_view(source_).substr(src_offset, n));
  }
  const std::string& data() const { return out_.data(); }
  uint64_t shared() const { return shared_; }

 private:
  StringSink out_;
  std::string source_;
  bool can_;
  uint64_t shared_ = 0;
};

// Three 5000-byte tensors a, b, c at 4 KiB alignment.
absl::StatusOr<Layout> ThreeLayout() {
  return PlanLayout({},
                    {{"a", TensorType::kI8, {5000}},
                     {"b", TensorType::kI8, {5000}},
                     {"c", TensorType::kI8, {5000}}},
                    {.alignment = 4096});
}

// Writes three 5000-byte tensors at 4 KiB alignment into `sink`, tensor i
// filled with fills[i], in chunks of 3000 bytes; `stable` per chunk.
absl::StatusOr<ContentDigest> WriteThree(Sink* sink, const std::string& fills,
                                         std::vector<std::optional<CloneCandidate>> clones = {},
                                         bool stable = true, uint64_t* shared = nullptr,
                                         std::vector<std::optional<Digest128>> known = {},
                                         uint64_t* known_bytes = nullptr) {
  auto layout = ThreeLayout();
  if (!layout.ok()) return layout.status();
  Writer w(*layout, sink);
  w.SetCloneCandidates(std::move(clones));
  w.SetKnownDigests(std::move(known));
  CKPTD_TRY(w.WriteHeader());
  std::string data;
  for (char f : fills) data += std::string(5000, f);
  for (size_t at = 0; at < data.size(); at += 3000) {
    CKPTD_TRY(w.WriteData(std::string_view(data).substr(at, 3000), stable));
  }
  auto digest = w.Finish();
  if (shared != nullptr) *shared = w.shared_bytes();
  if (known_bytes != nullptr) *known_bytes = w.known_bytes();
  return digest;
}

TEST(WriterTest, UnchangedTensorsAreSharedAndTheFileIsTheSameBytes) {
  StringSink before;
  auto first = WriteThree(&before, "xyz");
  ASSERT_TRUE(first.ok()) << first.status();
  auto layout = ThreeLayout();
  ASSERT_TRUE(layout.ok());
  // Every tensor a candidate; b changed ('Y'), so its digest differs.
  std::vector<std::optional<CloneCandidate>> clones;
  for (size_t i = 0; i < 3; ++i) {
    clones.push_back(CloneCandidate{.src_offset = layout->data_offset + layout->tensors[i].offset,
                                    .length = 8192,
                                    .digest = first->tensors[i]});
  }
  StringSink plain;
  auto want = WriteThree(&plain, "xYz");
  ASSERT_TRUE(want.ok());
  CloningSink sharing(before.data(), /*can_share=*/true);
  uint64_t shared = 0;
  auto got = WriteThree(&sharing, "xYz", clones, /*stable=*/true, &shared);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(shared, 2 * 8192u);  // a and c
  EXPECT_EQ(sharing.shared(), 2 * 8192u);
  EXPECT_EQ(sharing.data(), plain.data());  // the same bytes as a plain write
  EXPECT_EQ(got->content, want->content);

  // A sink that cannot share writes everything, and the bytes are the same.
  CloningSink unable(before.data(), /*can_share=*/false);
  got = WriteThree(&unable, "xYz", clones, true, &shared);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(shared, 0u);
  EXPECT_EQ(unable.data(), plain.data());

  // Bytes the caller may reuse are never held back: written as they come.
  CloningSink unstable(before.data(), true);
  got = WriteThree(&unstable, "xYz", clones, /*stable=*/false, &shared);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(shared, 0u);
  EXPECT_EQ(unstable.data(), plain.data());

  // A candidate whose recorded digest is not the bytes' (a stale or lying
  // source) is written: the digest decides, never the name.
  clones[0]->digest.low ^= 1;
  CloningSink stale(before.data(), true);
  got = WriteThree(&stale, "xYz", clones, true, &shared);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(shared, 8192u);  // c only
  EXPECT_EQ(stale.data(), plain.data());
}

// A digest the caller proves (bytes that cannot change, hashed before) is
// taken instead of hashing: recorded as given, and when it equals the clone
// candidate's, the tensor is shared without its bytes being looked at.
TEST(WriterTest, AKnownDigestIsRecordedAndSharesWithoutHashing) {
  StringSink before;
  auto first = WriteThree(&before, "xyz");
  ASSERT_TRUE(first.ok()) << first.status();
  auto layout = ThreeLayout();
  ASSERT_TRUE(layout.ok());
  std::vector<std::optional<CloneCandidate>> clones(3);
  clones[0] = CloneCandidate{.src_offset = layout->data_offset + layout->tensors[0].offset,
                             .length = 8192,
                             .digest = first->tensors[0]};
  // The same bytes, a's digest known: the same file, a shared, 5000 bytes not hashed.
  CloningSink sharing(before.data(), true);
  uint64_t shared = 0, known = 0;
  auto got = WriteThree(&sharing, "xyz", clones, true, &shared, {first->tensors[0]}, &known);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->content, first->content);
  EXPECT_EQ(sharing.data(), before.data());
  EXPECT_EQ(shared, 8192u);
  EXPECT_EQ(known, 5000u);
  // Bytes that come unstable (the pointer path) are shared too when the
  // digest is known before they arrive: nothing needs holding back.
  CloningSink unstable(before.data(), true);
  got =
      WriteThree(&unstable, "xyz", clones, /*stable=*/false, &shared, {first->tensors[0]}, &known);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(unstable.data(), before.data());
  EXPECT_EQ(unstable.shared(), 8192u);
  EXPECT_EQ(shared, 8192u);
  // Where the sink cannot share, the bytes are written as they come.
  CloningSink unable(before.data(), false);
  got = WriteThree(&unable, "xyz", clones, /*stable=*/false, &shared, {first->tensors[0]}, &known);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(unable.data(), before.data());
  EXPECT_EQ(shared, 0u);
  // The writer does not re-check what it is told (that is the point): a
  // different digest for b is recorded as given. Its callers tell only
  // digests of bytes sealed against writes (ingest::RegionDigests).
  Digest128 told = first->tensors[1];
  told.low ^= 1;
  StringSink plain;
  got = WriteThree(&plain, "xyz", {}, true, nullptr, {std::nullopt, told}, &known);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->tensors[1], told);
  EXPECT_EQ(got->tensors[0], first->tensors[0]);
  EXPECT_EQ(known, 5000u);
}

}  // namespace
}  // namespace ckptd::gguf
