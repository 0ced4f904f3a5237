// PosixEnv read paths: errors name the path; reads are bounded.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/env/env.h"
#include "daemon/env/posix_error.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::env {
namespace {

using ::testing::HasSubstr;

TEST(PosixErrorTest, NamesContextAndMapsCodes) {
  absl::Status st = PosixError("open /x/step_5.gguf.tmp", ENOSPC);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(st.message(), "open /x/step_5.gguf.tmp: No space left on device");
  EXPECT_EQ(PosixError("x", ENOENT).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(PosixError("x", EEXIST).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(PosixError("x", EIO).code(), absl::StatusCode::kInternal);
}

TEST(PosixEnvTest, MissingFileNamesThePath) {
  testing::TempDir dir;
  auto f = Env::Default()->OpenForRead(dir.Join("nope.gguf"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(dir.Join("nope.gguf")));
}

TEST(PosixEnvTest, DirectoryIsNotARegularFile) {
  testing::TempDir dir;
  auto f = Env::Default()->OpenForRead(dir.path());
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("not a regular file"));
}

TEST(PosixEnvTest, PreadAndMmapReadTheSameBytesAndStopAtTheEnd) {
  testing::TempDir dir;
  std::string path = dir.Join("f");
  testing::WriteFile(path, "hello, world");
  auto f = Env::Default()->OpenForRead(path);
  auto m = Env::Default()->MapForRead(path);
  ASSERT_TRUE(f.ok() && m.ok());
  for (const ByteSource* src :
       {static_cast<const ByteSource*>(f->get()), static_cast<const ByteSource*>(m->get())}) {
    EXPECT_EQ(src->size(), 12u);
    char buf[5];
    ASSERT_TRUE(src->ReadAt(7, 5, buf).ok());
    EXPECT_EQ(std::string(buf, 5), "world");
    EXPECT_EQ(src->ReadAt(8, 5, buf).code(), absl::StatusCode::kOutOfRange);
    EXPECT_EQ(src->ReadAt(~0ull, 1, buf).code(), absl::StatusCode::kOutOfRange);
  }
  EXPECT_EQ((*m)->bytes(), "hello, world");
}

// Reads of any offset and length through O_DIRECT's aligned spans give the
// file's bytes, across the buffer's size and at the file's unaligned end.
TEST(PosixEnvTest, DirectReadSourceReadsAnyRangeExactly) {
  testing::TempDir dir;
  const std::string path = dir.Join("d");
  std::string bytes((9 << 20) + 12345, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
  testing::WriteFile(path, bytes);
  auto direct = Env::Default()->OpenForDirectRead(path);
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_GT((*direct)->direct_alignment(), 0u) << "the test directory takes no O_DIRECT";
  const DirectReadSource src(std::move(*direct));
  ASSERT_EQ(src.size(), bytes.size());
  const std::vector<std::pair<uint64_t, size_t>> ranges = {{0, 1},
                                                           {1, 4095},
                                                           {4095, 2},
                                                           {12345, 3 << 20},
                                                           {0, 9 << 20},
                                                           {7, (8 << 20) + 5},
                                                           {bytes.size() - 1, 1},
                                                           {bytes.size() - 5000, 5000},
                                                           {0, bytes.size()}};
  for (const auto& [offset, n] : ranges) {
    std::string got(n, '\0');
    ASSERT_TRUE(src.ReadAt(offset, n, got.data()).ok()) << offset << "+" << n;
    EXPECT_TRUE(got == bytes.substr(offset, n)) << offset << "+" << n;
  }
  char c;
  EXPECT_EQ(src.ReadAt(bytes.size(), 1, &c).code(), absl::StatusCode::kOutOfRange);
}

TEST(PosixEnvTest, EmptyFileMaps) {
  testing::TempDir dir;
  testing::WriteFile(dir.Join("e"), "");
  auto m = Env::Default()->MapForRead(dir.Join("e"));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->size(), 0u);
}

}  // namespace
}  // namespace ckptd::env
