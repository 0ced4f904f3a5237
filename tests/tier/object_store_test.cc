// The ObjectStore contract, one suite for every implementation: MemoryStore
// always, and S3Store against a real Ceph RGW when CKPTD_TEST_S3_ENDPOINT
// (with CKPTD_S3_ACCESS_KEY, CKPTD_S3_SECRET_KEY and CKPTD_TEST_S3_BUCKET;
// CKPTD_TEST_S3_CA_FILE for an https endpoint)
// names one, as the tier.s3 suite does. The same cases passing on both is
// what lets the upload, coordination and fetch logic be tested on memory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <memory>

#include "daemon/base/strings.h"
#include "daemon/tier/memory_store.h"
#include "daemon/tier/s3_store.h"
#include "tests/testing/status_matchers.h"

namespace ckptd::tier {
namespace {

using ::testing::HasSubstr;

struct StoreKind {
  std::string name;
  std::function<std::unique_ptr<ObjectStore>()> make;  // null: not available here
};

void PrintTo(const StoreKind& k, std::ostream* os) { *os << k.name; }

std::unique_ptr<ObjectStore> MakeS3() {
  const char* endpoint = std::getenv("CKPTD_TEST_S3_ENDPOINT");
  const char* bucket = std::getenv("CKPTD_TEST_S3_BUCKET");
  const char* access = std::getenv("CKPTD_S3_ACCESS_KEY");
  const char* secret = std::getenv("CKPTD_S3_SECRET_KEY");
  const char* ca = std::getenv("CKPTD_TEST_S3_CA_FILE");  // for an https endpoint
  if (!endpoint || !bucket || !access || !secret) return nullptr;
  auto store = std::make_unique<S3Store>(S3Config{.endpoint = endpoint,
                                                  .bucket = bucket,
                                                  .access_key = access,
                                                  .secret_key = secret,
                                                  .stall_timeout_s = 10,
                                                  .ca_file = ca ? ca : ""});
  if (!store->CreateBucket().ok()) return nullptr;
  return store;
}

class ObjectStoreContract : public ::testing::TestWithParam<StoreKind> {
 protected:
  void SetUp() override {
    store_ = GetParam().make();
    if (!store_) GTEST_SKIP() << "no " << GetParam().name << " store here";
    // Every test in its own prefix, so runs against a shared bucket never meet.
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '-');
    prefix_ = StrCat("contract/", name, "-", ::getpid(), "-", std::rand(), "/");
  }
  std::string Key(const std::string& name) const { return prefix_ + name; }

  std::unique_ptr<ObjectStore> store_;
  std::string prefix_;
};

TEST_P(ObjectStoreContract, PutGetHeadAndRangesGiveTheBytesAndTheirMd5) {
  const std::string body = "0123456789abcdef";
  auto etag = store_->Put(Key("a"), body, Precondition::kNone, {});
  ASSERT_OK(etag.status());
  EXPECT_EQ(*etag, Md5Hex(body));
  EXPECT_EQ(*store_->Get(Key("a"), std::nullopt), body);
  EXPECT_EQ(*store_->Get(Key("a"), ByteRange{.offset = 3, .length = 4}), "3456");
  auto head = store_->Head(Key("a"));
  ASSERT_OK(head.status());
  ASSERT_TRUE(head->has_value());
  EXPECT_EQ((*head)->size, body.size());
  EXPECT_EQ((*head)->etag, Md5Hex(body));
  // Asking past the end is an error, never fewer bytes.
  EXPECT_FALSE(store_->Get(Key("a"), ByteRange{.offset = 10, .length = 10}).ok());
  EXPECT_FALSE(store_->Get(Key("a"), ByteRange{.offset = 16, .length = 1}).ok());
  // What is not there.
  EXPECT_EQ(store_->Get(Key("nope"), std::nullopt).status().code(), absl::StatusCode::kNotFound);
  auto none = store_->Head(Key("nope"));
  ASSERT_OK(none.status());
  EXPECT_FALSE(none->has_value());
  // A body that does not match its Content-MD5 is refused.
  absl::Status bad = store_->Put(Key("b"), body, Precondition::kNone, Md5Hex("other")).status();
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(bad.message(), HasSubstr("BadDigest"));
  EXPECT_FALSE(store_->Head(Key("b"))->has_value());
}

TEST_P(ObjectStoreContract, ListingsPageInByteOrderUnderTheirPrefix) {
  for (const char* name : {"b", "a", "a~", "aa", "c/d", "B"}) {
    ASSERT_OK(store_->Put(Key(name), name, Precondition::kNone, {}).status());
  }
  ASSERT_OK(
      store_->Put(prefix_.substr(0, prefix_.size() - 1) + "x", "outside", Precondition::kNone, {})
          .status());
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    auto page = store_->ListPageOf(prefix_, token, 2);
    ASSERT_OK(page.status());
    EXPECT_LE(page->objects.size(), 2u);
    for (const ObjectInfo& o : page->objects) seen.push_back(o.key.substr(prefix_.size()));
    token = page->next_token;
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(seen, (std::vector<std::string>{"B", "a", "aa", "a~", "b", "c/d"}));
  EXPECT_EQ(pages, 3);
  auto all = store_->List(prefix_);
  ASSERT_OK(all.status());
  EXPECT_EQ(all->size(), 6u);
  EXPECT_EQ((*all)[1].etag, Md5Hex("a"));
  // Deleting keys that are gone is fine; a batch deletes them all.
  ASSERT_OK(store_->Delete({Key("a"), Key("nope"), Key("b")}));
  EXPECT_EQ(store_->List(prefix_)->size(), 4u);
  ASSERT_OK(store_->Delete({prefix_.substr(0, prefix_.size() - 1) + "x"}));
}

TEST_P(ObjectStoreContract, MultipartObjectsAreTheirPartsInOrderWithS3sEtag) {
  const uint64_t part = kMinPartSize;
  std::string p1(part, 'x'), p2(part, 'y'), p3 = "tail";
  p1[7] = 'q';
  auto id = store_->CreateMultipartUpload(Key("big"));
  ASSERT_OK(id.status());
  auto uploads = store_->ListMultipartUploads(prefix_);
  ASSERT_OK(uploads.status());
  ASSERT_EQ(uploads->size(), 1u);
  EXPECT_EQ((*uploads)[0].upload_id, *id);
  // Parts may arrive in any order.
  auto e3 = store_->UploadPart(Key("big"), *id, 3, p3, Md5Hex(p3));
  auto e1 = store_->UploadPart(Key("big"), *id, 1, p1, Md5Hex(p1));
  auto e2 = store_->UploadPart(Key("big"), *id, 2, p2, {});
  ASSERT_OK(e1.status());
  ASSERT_OK(e2.status());
  ASSERT_OK(e3.status());
  EXPECT_EQ(*e1, Md5Hex(p1));
  EXPECT_EQ(*e3, Md5Hex(p3));
  // Invisible until completed.
  EXPECT_FALSE(store_->Head(Key("big"))->has_value());
  // Completion naming an ETag the store did not give is refused.
  EXPECT_FALSE(store_->CompleteMultipartUpload(Key("big"), *id, {*e1, *e3, *e2}).ok());
  auto etag = store_->CompleteMultipartUpload(Key("big"), *id, {*e1, *e2, *e3});
  ASSERT_OK(etag.status());
  EXPECT_EQ(*etag, MultipartEtag({*e1, *e2, *e3}));
  EXPECT_EQ((*store_->Head(Key("big")))->etag, *etag);
  EXPECT_EQ((*store_->Head(Key("big")))->size, 2 * part + 4);
  EXPECT_EQ(*store_->Get(Key("big"), ByteRange{.offset = part - 2, .length = 4}), "xxyy");
  EXPECT_EQ(*store_->Get(Key("big"), ByteRange{.offset = 7, .length = 1}), "q");
  // The upload is gone once completed.
  EXPECT_TRUE(IsNoSuchUpload(store_->UploadPart(Key("big"), *id, 4, "x", {}).status()));
  EXPECT_TRUE(store_->ListMultipartUploads(prefix_)->empty());
  ASSERT_OK(store_->Delete({Key("big")}));
}

TEST_P(ObjectStoreContract, PartsUnderTheMinimumFailTheCompletionButTheLast) {
  auto id = store_->CreateMultipartUpload(Key("small"));
  ASSERT_OK(id.status());
  auto e1 = store_->UploadPart(Key("small"), *id, 1, "tiny", {});
  auto e2 = store_->UploadPart(Key("small"), *id, 2, "tail", {});
  ASSERT_OK(e1.status());
  ASSERT_OK(e2.status());
  absl::Status st = store_->CompleteMultipartUpload(Key("small"), *id, {*e1, *e2}).status();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(st.message(), HasSubstr("EntityTooSmall"));
  ASSERT_OK(store_->AbortMultipartUpload(Key("small"), *id));
  ASSERT_OK(store_->AbortMultipartUpload(Key("small"), *id));  // gone already: fine
  EXPECT_TRUE(store_->ListMultipartUploads(prefix_)->empty());
}

TEST_P(ObjectStoreContract, APartCopiedFromAnotherObjectIsThatRange) {
  std::string source(kMinPartSize + 100, 's');
  for (size_t i = 0; i < source.size(); i += 997) source[i] = static_cast<char>('a' + i % 26);
  ASSERT_OK(store_->Put(Key("src"), source, Precondition::kNone, {}).status());
  auto id = store_->CreateMultipartUpload(Key("copy"));
  ASSERT_OK(id.status());
  auto e1 = store_->UploadPartCopy(Key("copy"), *id, 1, Key("src"),
                                   ByteRange{.offset = 50, .length = kMinPartSize});
  ASSERT_OK(e1.status());
  EXPECT_EQ(*e1, Md5Hex(source.substr(50, kMinPartSize)));
  auto e2 = store_->UploadPart(Key("copy"), *id, 2, "end", {});
  ASSERT_OK(e2.status());
  EXPECT_FALSE(store_
                   ->UploadPartCopy(Key("copy"), *id, 3, Key("src"),
                                    ByteRange{.offset = source.size() - 1, .length = 2})
                   .ok());
  EXPECT_EQ(
      store_
          ->UploadPartCopy(Key("copy"), *id, 3, Key("missing"), ByteRange{.offset = 0, .length = 1})
          .status()
          .code(),
      absl::StatusCode::kNotFound);
  ASSERT_OK(store_->CompleteMultipartUpload(Key("copy"), *id, {*e1, *e2}).status());
  EXPECT_EQ(*store_->Get(Key("copy"), std::nullopt), source.substr(50, kMinPartSize) + "end");
  ASSERT_OK(store_->Delete({Key("src"), Key("copy")}));
}

TEST_P(ObjectStoreContract, CreateOnlyPutsRefuseAnExistingKeyWhereTheStoreChecks) {
  ASSERT_OK(store_->Put(Key("once"), "1", Precondition::kIfAbsent, {}).status());
  absl::StatusOr<std::string> again = store_->Put(Key("once"), "2", Precondition::kIfAbsent, {});
  if (store_->capabilities().checks_if_absent) {
    EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
    EXPECT_EQ(*store_->Get(Key("once"), std::nullopt), "1");
  } else {
    // A store that ignores it (Ceph RGW 16) overwrites: callers never rely on it.
    EXPECT_TRUE(again.ok() || absl::IsAlreadyExists(again.status())) << again.status();
  }
  ASSERT_OK(store_->Delete({Key("once")}));
}

INSTANTIATE_TEST_SUITE_P(
    Stores, ObjectStoreContract,
    ::testing::Values(StoreKind{"Memory", [] { return std::make_unique<MemoryStore>(); }},
                      StoreKind{"RgwIfAbsentIgnored",
                                [] {
                                  return std::make_unique<MemoryStore>(
                                      MemoryStore::Options{.checks_if_absent = false});
                                }},
                      StoreKind{"S3", MakeS3}),
    [](const ::testing::TestParamInfo<StoreKind>& info) { return info.param.name; });

}  // namespace
}  // namespace ckptd::tier
