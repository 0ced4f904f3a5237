// Writer and planner contracts: every invalid plan or misuse is refused with
// a message that names the problem.
#include "daemon/gguf/writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace ckptd::gguf
