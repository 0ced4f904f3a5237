// LazyTree: what a power cut keeps, operation by operation.
#include "tests/powercut/lazy_tree.h"

#include <gtest/gtest.h>

#include <set>

namespace ckptd::powercut {
namespace {

class LazyTreeTest : public ::testing::Test {
 protected:
  Ino MakeFile(Ino dir, const std::string& name, const std::string& bytes) {
    Node n;
    n.data = bytes;
    Ino ino = 0;
    EXPECT_EQ(tree_.Create(dir, name, n, &ino), 0);
    return ino;
  }
  Ino MakeDir(Ino dir, const std::string& name) {
    Node n;
    n.kind = Node::Kind::kDir;
    Ino ino = 0;
    EXPECT_EQ(tree_.Create(dir, name, n, &ino), 0);
    return ino;
  }
  // The bytes at `path`, or "<none>".
  std::string At(const std::string& path) const {
    auto ino = tree_.Lookup(path);
    return ino ? tree_.Get(*ino)->data : "<none>";
  }
  CutStats Cut(CutMode mode = CutMode::kDropUnsynced) { return tree_.Cut(mode, rng_); }

  LazyTree tree_;
  std::mt19937_64 rng_{7};
};

TEST_F(LazyTreeTest, AFileNeverSyncedIsGoneAfterACut) {
  MakeFile(kRootIno, "a", "bytes");
  EXPECT_EQ(At("/a"), "bytes");
  const CutStats s = Cut();
  EXPECT_EQ(At("/a"), "<none>");
  EXPECT_EQ(s.ops_dropped, 1u);
}

TEST_F(LazyTreeTest, ASyncedFileWithoutItsDirectorySyncHasNoName) {
  tree_.SyncFile(MakeFile(kRootIno, "a", "bytes"));
  Cut();
  EXPECT_EQ(At("/a"), "<none>");
}

TEST_F(LazyTreeTest, ASyncedNameWithoutSyncedBytesIsEmpty) {
  MakeFile(kRootIno, "a", "bytes");
  tree_.SyncDir(kRootIno);
  Cut();
  EXPECT_EQ(At("/a"), "");
}

TEST_F(LazyTreeTest, FileThenDirectorySyncKeepsBothAndLaterWritesAreLost) {
  const Ino a = MakeFile(kRootIno, "a", "bytes");
  tree_.SyncFile(a);
  tree_.SyncDir(kRootIno);
  tree_.GetMutable(a)->data = "changed";
  EXPECT_EQ(tree_.unsynced_files(), 1u);
  Cut();
  EXPECT_EQ(At("/a"), "bytes");
}

TEST_F(LazyTreeTest, RenamesAndUnlinksNeedTheirDirectorysSync) {
  const Ino d = MakeDir(kRootIno, "d");
  const Ino a = MakeFile(d, "a.tmp", "one");
  tree_.SyncFile(a);
  tree_.SyncDir(d);
  tree_.SyncDir(kRootIno);
  ASSERT_EQ(tree_.Rename(d, "a.tmp", d, "a", false), 0);
  EXPECT_EQ(At("/d/a"), "one");
  Cut();
  EXPECT_EQ(At("/d/a"), "<none>");
  EXPECT_EQ(At("/d/a.tmp"), "one");

  ASSERT_EQ(tree_.Rename(d, "a.tmp", d, "a", false), 0);
  tree_.SyncDir(d);
  ASSERT_EQ(tree_.Unlink(d, "a", false), 0);
  Cut();
  EXPECT_EQ(At("/d/a"), "one");  // the unlink was never synced
  EXPECT_EQ(At("/d/a.tmp"), "<none>");
}

TEST_F(LazyTreeTest, SyncingADirectoryLeavesOtherDirectoriesVolatile) {
  const Ino x = MakeDir(kRootIno, "x");
  const Ino y = MakeDir(kRootIno, "y");
  tree_.SyncDir(kRootIno);
  MakeFile(x, "f", "");
  MakeFile(y, "g", "");
  tree_.SyncDir(y);
  Cut();
  EXPECT_EQ(At("/x/f"), "<none>");
  EXPECT_EQ(At("/y/g"), "");
}

TEST_F(LazyTreeTest, AnUnlinkedFileLivesWhileOpenAndIsForgottenAfter) {
  const Ino a = MakeFile(kRootIno, "a", "bytes");
  tree_.Ref(a);
  ASSERT_EQ(tree_.Unlink(kRootIno, "a", false), 0);
  tree_.SyncDir(kRootIno);
  ASSERT_NE(tree_.Get(a), nullptr);
  EXPECT_EQ(tree_.Get(a)->data, "bytes");
  tree_.Unref(a);
  EXPECT_EQ(tree_.Get(a), nullptr);
}

TEST_F(LazyTreeTest, DirectoryOperationsRefuseAsPosixDoes) {
  const Ino d = MakeDir(kRootIno, "d");
  MakeFile(d, "f", "");
  MakeFile(kRootIno, "g", "");
  EXPECT_EQ(tree_.Create(kRootIno, "d", Node{}, nullptr), EEXIST);
  EXPECT_EQ(tree_.Unlink(kRootIno, "d", true), ENOTEMPTY);
  EXPECT_EQ(tree_.Unlink(kRootIno, "d", false), EISDIR);
  EXPECT_EQ(tree_.Unlink(kRootIno, "g", true), ENOTDIR);
  EXPECT_EQ(tree_.Rename(kRootIno, "g", kRootIno, "d", false), EISDIR);
  EXPECT_EQ(tree_.Rename(d, "f", kRootIno, "g", true), EEXIST);
  EXPECT_EQ(tree_.Rename(kRootIno, "nope", kRootIno, "x", false), ENOENT);
}

// Any subset of un-synced operations may survive, but each rename whole:
// over many cuts every combination shows up and none is half a rename.
TEST_F(LazyTreeTest, AnySubsetKeepsEachRenameWholeAndTearsFiles) {
  std::set<std::string> outcomes;
  uint64_t torn = 0;
  for (int round = 0; round < 200; ++round) {
    LazyTree tree;
    Node old_bytes;
    old_bytes.data = std::string(8192, 'o');
    Ino a = 0, b = 0;
    ASSERT_EQ(tree.Create(kRootIno, "a", old_bytes, &a), 0);
    ASSERT_EQ(tree.Create(kRootIno, "b.tmp", Node{}, &b), 0);
    tree.SyncFile(a);
    tree.SyncFile(b);
    tree.SyncDir(kRootIno);
    ASSERT_EQ(tree.Rename(kRootIno, "b.tmp", kRootIno, "b", false), 0);
    tree.Ref(a);  // open, so its bytes can change after the unlink
    ASSERT_EQ(tree.Unlink(kRootIno, "a", false), 0);
    tree.GetMutable(a)->data = std::string(8192, 'n');
    const CutStats s = tree.Cut(CutMode::kAnySubset, rng_);
    torn += s.files_torn;
    const bool has_a = tree.Lookup("/a").has_value();
    const bool has_b = tree.Lookup("/b").has_value();
    const bool has_tmp = tree.Lookup("/b.tmp").has_value();
    ASSERT_NE(has_b, has_tmp) << "half a rename survived";
    outcomes.insert(std::string(has_a ? "a" : "-") + (has_b ? "b" : "t"));
    if (has_a) {
      const std::string& data = tree.Get(*tree.Lookup("/a"))->data;
      ASSERT_EQ(data.size(), 8192u);
      for (char c : data) ASSERT_TRUE(c == 'o' || c == 'n');
    }
  }
  EXPECT_EQ(outcomes.size(), 4u);
  EXPECT_GT(torn, 0u);
}

}  // namespace
}  // namespace ckptd::powercut
