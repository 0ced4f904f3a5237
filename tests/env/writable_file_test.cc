// WritableFile: content is exact whatever the chunking, header patches land
// before and after a flush, O_DIRECT falls back where refused.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <random>

#include "daemon/env/env.h"
#include "daemon/env/fault_env.h"
#include "daemon/env/posix_writable_file.h"
#include "tests/testing/temp_dir.h"

namespace ckptd::env {
namespace {

std::string Random(size_t n, std::mt19937_64& rng) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// expect_direct: nullopt when the filesystem decides (tmpfs gained O_DIRECT in Linux 6.6).
void WriteAndCheck(const std::string& dir, DirectIo mode, uint64_t seed,
                   std::optional<bool> expect_direct) {
  std::mt19937_64 rng(seed);
  Env* env = Env::Default();
  const size_t total = (seed % 2 ? 9 : 1) * kWriteBufferBytes / 2 + rng() % 10000;
  std::string want = Random(total, rng);
  std::string path = dir + "/f" + std::to_string(seed);
  auto file = env->NewWritableFile(path, mode);
  ASSERT_TRUE(file.ok()) << file.status();
  if (expect_direct) {
    EXPECT_EQ((*file)->direct(), *expect_direct);
  }
  for (size_t at = 0; at < total;) {
    size_t n = std::min<size_t>(total - at, 1 + rng() % (3 << 20));
    ASSERT_TRUE((*file)->Append(std::string_view(want).substr(at, n)).ok());
    at += n;
  }
  // Patch the "header" (already flushed for big files) and a spot near the end (buffered).
  std::string head = Random(100, rng);
  want.replace(3, head.size(), head);
  ASSERT_TRUE((*file)->WriteAt(3, head).ok());
  std::string tail = Random(10, rng);
  want.replace(total - 20, 10, tail);
  ASSERT_TRUE((*file)->WriteAt(total - 20, tail).ok());
  ASSERT_TRUE((*file)->Sync().ok());
  // A patch after the sync is read-modify-written and keeps the size.
  std::string late = Random(7, rng);
  want.replace(total - 5, 5, late.substr(0, 5));
  ASSERT_TRUE((*file)->WriteAt(total - 5, late.substr(0, 5)).ok());
  ASSERT_TRUE((*file)->Sync().ok());
  ASSERT_TRUE((*file)->Close().ok());
  EXPECT_EQ((*file)->size(), total);
  std::string got = testing::ReadFile(path);
  ASSERT_EQ(got.size(), total);
  EXPECT_TRUE(got == want) << "content differs";
  EXPECT_FALSE((*file)->WriteAt(total, "x").ok());
}

TEST(WritableFileTest, DirectIoContentIsExact) {
  testing::TempDir dir;
  bool direct_ok = false;
  {
    auto probe = Env::Default()->NewWritableFile(dir.Join("probe"), DirectIo::kAuto);
    ASSERT_TRUE(probe.ok());
    direct_ok = (*probe)->direct();
  }
  for (uint64_t seed = 1; seed <= 4; ++seed)
    WriteAndCheck(dir.path(), DirectIo::kAuto, seed, direct_ok);
}

// Stable appends: bytes in the same 4 KiB phase in memory and in the file
// are written from the caller's memory (their aligned middle, when it is at
// least 256 KiB), everything else through the buffer; interleaved with plain
// appends and a header patch, the file is exact either way.
TEST(WritableFileTest, StableAppendsWriteTheAlignedMiddleFromTheCallersMemory) {
  testing::TempDir dir;
  std::mt19937_64 rng(7);
  constexpr size_t kSource = 24 << 20;
  void* mem = nullptr;
  ASSERT_EQ(::posix_memalign(&mem, kDirectIoAlignment, kSource), 0);
  std::unique_ptr<char, decltype(&std::free)> source(static_cast<char*>(mem), &std::free);
  const std::string random = Random(kSource, rng);
  std::memcpy(source.get(), random.data(), kSource);
  for (DirectIo mode : {DirectIo::kAuto, DirectIo::kOff}) {
    const std::string path = dir.Join(mode == DirectIo::kAuto ? "auto" : "off");
    auto file = Env::Default()->NewWritableFile(path, mode);
    ASSERT_TRUE(file.ok()) << file.status();
    std::string want;
    uint64_t expect_zero_copy = 0;
    auto stable = [&](size_t from, size_t n) {
      const std::string_view bytes(source.get() + from, n);
      const uint64_t at = want.size();
      if ((*file)->direct() && (from - at) % kDirectIoAlignment == 0 && n >= (256 << 10)) {
        const uint64_t head = (kDirectIoAlignment - at % kDirectIoAlignment) % kDirectIoAlignment;
        expect_zero_copy += (n - head) / kDirectIoAlignment * kDirectIoAlignment;
      }
      ASSERT_TRUE((*file)->AppendStable(bytes).ok());
      want.append(bytes);
    };
    auto plain = [&](size_t n) {
      std::string b = Random(n, rng);
      ASSERT_TRUE((*file)->Append(b).ok());
      want += b;
    };
    plain(1000);                         // a header
    stable(1000 + 4096, 5 << 20);        // in phase, starts mid-block
    plain(4096 - (want.size() % 4096));  // padding to a boundary
    stable(8192, (9 << 20) + 123);       // in phase, aligned start, odd tail
    stable(12345, 300 << 10);            // out of phase: copied
    stable(0, 1000);                     // too small: copied
    plain(17);
    stable(4096 * 1024 + (want.size() % 4096), 6 << 20);  // in phase again
    stable(16 << 20, 4096);                               // small, aligned: copied
    const std::string head = Random(64, rng);
    want.replace(10, head.size(), head);
    ASSERT_TRUE((*file)->WriteAt(10, head).ok());
    ASSERT_TRUE((*file)->Sync().ok());
    ASSERT_TRUE((*file)->Close().ok());
    EXPECT_EQ((*file)->zero_copy_bytes(), expect_zero_copy);
    if ((*file)->direct()) {
      EXPECT_GT(expect_zero_copy, 19u << 20);
    }
    const std::string got = testing::ReadFile(path);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_TRUE(got == want) << "content differs";
  }
}

// A file starts on a small buffer and moves to a full-size one when it
// fills: content is exact at and around the move, with a sync before it
// and patches on both sides.
TEST(WritableFileTest, ContentIsExactAcrossTheMoveToAFullSizeBuffer) {
  testing::TempDir dir;
  std::mt19937_64 rng(11);
  for (DirectIo mode : {DirectIo::kAuto, DirectIo::kOff}) {
    for (size_t total : {size_t{1}, kFirstWriteBufferBytes - 1, kFirstWriteBufferBytes,
                         kFirstWriteBufferBytes + 1, 3 * kFirstWriteBufferBytes + 4097}) {
      const std::string path =
          dir.Join(std::to_string(static_cast<int>(mode)) + "-" + std::to_string(total));
      auto file = Env::Default()->NewWritableFile(path, mode);
      ASSERT_TRUE(file.ok()) << file.status();
      std::string want = Random(total, rng);
      bool synced = total < 2 * kFirstWriteBufferBytes;  // the big one syncs before it moves
      for (size_t at = 0; at < total;) {
        const size_t n = std::min<size_t>(total - at, 1 + rng() % 5000);
        ASSERT_TRUE((*file)->Append(std::string_view(want).substr(at, n)).ok());
        at += n;
        if (!synced && at >= total / 4) {
          ASSERT_TRUE((*file)->Sync().ok());
          synced = true;
        }
      }
      want[0] = 'P';
      want[total - 1] = 'Q';
      ASSERT_TRUE((*file)->WriteAt(0, "P").ok());
      ASSERT_TRUE((*file)->WriteAt(total - 1, "Q").ok());
      ASSERT_TRUE((*file)->Sync().ok());
      ASSERT_TRUE((*file)->Close().ok());
      const std::string got = testing::ReadFile(path);
      ASSERT_EQ(got.size(), total);
      EXPECT_TRUE(got == want) << "content differs at size " << total;
    }
  }
}

TEST(WritableFileTest, BufferedContentIsExact) {
  testing::TempDir dir;
  for (uint64_t seed = 1; seed <= 4; ++seed) WriteAndCheck(dir.path(), DirectIo::kOff, seed, false);
}

TEST(WritableFileTest, TmpfsWritesExactlyWithOrWithoutDirectIo) {
  testing::TempDir dir;
  std::string mnt = dir.Join("tmpfs");
  ASSERT_TRUE(Env::Default()->CreateDirs(mnt).ok());
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64m") != 0) {
    GTEST_SKIP() << "cannot mount tmpfs here (needs root)";
  }
  WriteAndCheck(mnt, DirectIo::kAuto, 7, std::nullopt);
  ::umount(mnt.c_str());
}

TEST(WritableFileTest, DiskFullDuringABackgroundWriteSurfaces) {
  testing::TempDir dir;
  std::string mnt = dir.Join("tiny");
  ASSERT_TRUE(Env::Default()->CreateDirs(mnt).ok());
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=6m") != 0) {
    GTEST_SKIP() << "cannot mount tmpfs here (needs root)";
  }
  for (DirectIo mode : {DirectIo::kAuto, DirectIo::kOff}) {
    std::string path = mnt + (mode == DirectIo::kAuto ? "/a" : "/b");
    auto f = Env::Default()->NewWritableFile(path, mode);
    ASSERT_TRUE(f.ok());
    // Exactly two full buffers: the second is written by the worker thread and
    // hits ENOSPC; nothing is left for Sync to write, so only the worker's
    // error can fail it. It must not be lost.
    std::string chunk(1 << 20, 'x');
    absl::Status st;
    for (int i = 0; i < 8 && st.ok(); ++i) st = (*f)->Append(chunk);
    if (st.ok()) st = (*f)->Sync();
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
    EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr(path));
    EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("No space left on device"));
    EXPECT_FALSE((*f)->Sync().ok());  // sticky
    ::unlink(path.c_str());
  }
  ::umount(mnt.c_str());
}

TEST(WritableFileTest, NewFileRefusesToClobber) {
  testing::TempDir dir;
  testing::WriteFile(dir.Join("x"), "old");
  auto f = Env::Default()->NewWritableFile(dir.Join("x"), DirectIo::kAuto);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(testing::ReadFile(dir.Join("x")), "old");
}

TEST(EnvTest, RenameSymlinkListRemoveAtomicWrite) {
  testing::TempDir dir;
  Env* env = Env::Default();
  ASSERT_TRUE(env->CreateDirs(dir.Join("a/b/c")).ok());
  ASSERT_TRUE(WriteFileAtomically(env, dir.Join("a/state.json"), "{\"v\":1}").ok());
  EXPECT_EQ(*ReadWholeFile(env, dir.Join("a/state.json")), "{\"v\":1}");
  ASSERT_TRUE(env->Symlink("state.json", dir.Join("a/link")).ok());
  EXPECT_EQ(*env->ReadLink(dir.Join("a/link")), "state.json");
  EXPECT_TRUE(env->Stat(dir.Join("a/link"))->is_symlink);
  auto names = env->ListDir(dir.Join("a"));
  ASSERT_TRUE(names.ok());
  EXPECT_THAT(*names, ::testing::UnorderedElementsAre("b", "state.json", "link"));
  ASSERT_TRUE(env->RenameFile(dir.Join("a/state.json"), dir.Join("a/b/s.json")).ok());
  EXPECT_EQ(env->Stat(dir.Join("a/state.json")).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(env->RemoveFile(dir.Join("a/b/s.json")).ok());
  EXPECT_GT(env->Space(dir.path())->free_bytes, 0u);
  EXPECT_EQ(*env->RealPath(dir.Join("a/b/../b")), *env->RealPath(dir.Join("a")) + "/b");
}

TEST(FaultEnvTest, FailsTheNthCallAndRunsOutOfSpace) {
  testing::TempDir dir;
  auto env = NewFaultInjectionEnv(Env::Default(), "fail=sync:2:EIO;enospc_after_bytes=10");
  ASSERT_TRUE(env.ok()) << env.status();
  auto f = (*env)->NewWritableFile(dir.Join("f"), DirectIo::kOff);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE((*f)->Append("0123456789").ok());
  absl::Status full = (*f)->Append("x");
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()), ::testing::HasSubstr(dir.Join("f")));
  EXPECT_TRUE((*f)->Sync().ok());
  EXPECT_THAT(std::string((*f)->Sync().message()), ::testing::HasSubstr("Input/output error"));
  EXPECT_TRUE((*f)->Sync().ok());
}

TEST(FaultEnvTest, BadSpecsAreRejected) {
  for (const char* spec :
       {"crash_before=rename", "fail=sync:1:EWHAT", "frob=1", "delay=teleport:1"}) {
    EXPECT_FALSE(NewFaultInjectionEnv(Env::Default(), spec).ok()) << spec;
  }
}

TEST(FaultEnvDeathTest, CrashesBeforeTheNthRename) {
  testing::TempDir dir;
  testing::WriteFile(dir.Join("a"), "a");
  testing::WriteFile(dir.Join("b"), "b");
  EXPECT_EXIT(
      {
        auto env = NewFaultInjectionEnv(Env::Default(), "crash_before=rename:2");
        (void)(*env)->RenameFile(dir.Join("a"), dir.Join("a2"));
        (void)(*env)->RenameFile(dir.Join("b"), dir.Join("b2"));
        std::exit(0);
      },
      ::testing::ExitedWithCode(kCrashExitCode), "crash before rename #2");
  EXPECT_EQ(testing::ReadFile(dir.Join("a2")), "a");  // the first rename happened
  EXPECT_EQ(testing::ReadFile(dir.Join("b")), "b");   // the second did not
}

}  // namespace
}  // namespace ckptd::env
