// Bearer tokens per run-id prefix: the file's grammar and each answer.
#include "daemon/rpc/tokens.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "tests/testing/temp_dir.h"

namespace ckptd::rpc {
namespace {

using ::testing::HasSubstr;

const std::string kLlama = "llama-token-0123456789abcdef";
const std::string kAll = "every-run-token-0123456789";

TokenTable Table() {
  auto t = TokenTable::Parse(
      "# prefix   token\n\n"
      "llama-  " +
          kLlama +
          "\n"
          "mistral-\t" +
          kLlama +
          "   # the same token, a second prefix\n"
          "*       " +
          kAll + "\n",
      "tokens");
  EXPECT_TRUE(t.ok()) << t.status();
  return *t;
}

TEST(TokenTableTest, ATokenCoversTheRunsOfItsPrefixes) {
  TokenTable t = Table();
  EXPECT_EQ(t.size(), 2u);
  EXPECT_TRUE(t.Authorize("Bearer " + kLlama, "llama-7b").ok());
  EXPECT_TRUE(t.Authorize("Bearer " + kLlama, "mistral-7b").ok());
  absl::Status other = t.Authorize("Bearer " + kLlama, "gpt-2");
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(other.message(), HasSubstr("covers runs 'llama-*', 'mistral-*', not 'gpt-2'"));
  EXPECT_TRUE(t.Authorize("Bearer " + kAll, "gpt-2").ok());
  // A call naming no run needs a token for every run.
  EXPECT_TRUE(t.Authorize("Bearer " + kAll, "").ok());
  EXPECT_THAT(t.Authorize("Bearer " + kLlama, "").message(), HasSubstr("names no run"));
  EXPECT_TRUE(t.Covers("Bearer " + kLlama, "llama-x"));
  EXPECT_FALSE(t.Covers("Bearer " + kLlama, "x-llama-"));
}

TEST(TokenTableTest, MissingMalformedAndUnknownTokensAreUnauthenticated) {
  TokenTable t = Table();
  EXPECT_EQ(t.Authorize(std::nullopt, "llama-7b").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(t.Authorize(std::nullopt, "llama-7b").message(),
              HasSubstr("requires a bearer token"));
  EXPECT_THAT(t.Authorize(kLlama, "llama-7b").message(), HasSubstr("not 'Bearer <token>'"));
  absl::Status unknown = t.Authorize("Bearer " + kLlama + "x", "llama-7b");
  EXPECT_EQ(unknown.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(unknown.message(), HasSubstr("not one this daemon knows"));
  EXPECT_FALSE(t.Covers("Bearer " + kLlama.substr(0, 20), "llama-7b"));  // a prefix of a token
  // Nothing of the token is echoed.
  EXPECT_THAT(std::string(unknown.message()), ::testing::Not(HasSubstr(kLlama)));
}

TEST(TokenTableTest, TheFileGrammarIsStrictAndSaysWhere) {
  auto err = [](const std::string& text) {
    auto t = TokenTable::Parse(text, "tokens");
    EXPECT_FALSE(t.ok());
    return std::string(t.status().message());
  };
  EXPECT_THAT(err("llama- short\n"), HasSubstr("tokens:1: a token is 16 to 512 characters"));
  EXPECT_THAT(err("\nllama-\n"), HasSubstr("tokens:2: expected '<run-id prefix> <token>'"));
  EXPECT_THAT(err("a b c\n"), HasSubstr("found 3 words"));
  EXPECT_THAT(err("x " + std::string(600, 'a') + "\n"), HasSubstr("this one has 600"));
  EXPECT_THAT(err("x " + kAll + "\x7f\n"), HasSubstr("printable ASCII"));
  // '*' ends a prefix or is the whole of it; anywhere else it is refused.
  EXPECT_THAT(err("llama-*-7b " + kAll + "\n"),
              HasSubstr("tokens:1: 'llama-*-7b': a '*' may only end a run-id prefix"));
  EXPECT_THAT(err("\n*llama " + kAll + "\n"), HasSubstr("tokens:2: '*llama'"));
  EXPECT_THAT(err("** " + kAll + "\n"), HasSubstr("tokens:1: '**'"));
  auto star = TokenTable::Parse("llama-* " + kAll + "\n", "tokens");
  ASSERT_TRUE(star.ok()) << star.status();
  EXPECT_TRUE(star->Covers("Bearer " + kAll, "llama-7b"));  // as "llama-"
  EXPECT_FALSE(star->Covers("Bearer " + kAll, "mistral"));
  // A '#' inside a token is part of it, not a comment.
  auto hash = TokenTable::Parse("* abc#defghijklmnopqrstuvwxyz\n", "tokens");
  ASSERT_TRUE(hash.ok());
  EXPECT_TRUE(hash->Covers("Bearer abc#defghijklmnopqrstuvwxyz", "r"));
  EXPECT_FALSE(hash->Covers("Bearer abc", "r"));
}

TEST(TokenTableTest, FilesOthersCanReadAreRefused) {
  testing::TempDir dir;
  const std::string path = dir.Join("tokens");
  testing::WriteFile(path, "* " + kAll + "\n");
  env::Env* env = env::Env::Default();
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  auto open = TokenTable::Load(env, path);
  ASSERT_FALSE(open.ok());
  EXPECT_THAT(open.status().message(), HasSubstr("mode 0644); chmod o-rwx it"));
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  auto t = TokenTable::Load(env, path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->Covers("Bearer " + kAll, "anything"));
  testing::WriteFile(path, "# nothing\n");
  EXPECT_THAT(TokenTable::Load(env, path).status().message(), HasSubstr("no tokens"));
  testing::WriteFile(path, kAll + "\n");
  auto single = LoadSingleToken(env, path);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ(*single, kAll);
  testing::WriteFile(path, kAll + "\n" + kLlama + "\n");
  EXPECT_THAT(LoadSingleToken(env, path).status().message(), HasSubstr("one token on one line"));
}

}  // namespace
}  // namespace ckptd::rpc
