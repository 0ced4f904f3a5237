// Profiles: the built-ins parse and compile, TOML errors name the line, the
// digest follows the definition and not its spelling.
#include "daemon/export/profile.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/base/strings.h"

namespace ckptd::exports {
namespace {

using ::testing::HasSubstr;

TEST(ProfileTest, EveryBuiltinCompilesAndCastsAsNamed) {
  for (const std::string& name : BuiltinProfileNames()) {
    auto spec = BuiltinProfile(name);
    ASSERT_TRUE(spec) << name;
    auto p = CompileProfile(*spec);
    ASSERT_TRUE(p.ok()) << name << ": " << p.status();
    EXPECT_EQ(p->spec.name, name);
    ASSERT_FALSE(p->cast.empty());
    EXPECT_EQ(p->cast.back().type, gguf::TensorType::kF32);  // 1-D tensors and the rest
    if (name.ends_with("-q8_0")) {
      EXPECT_EQ(p->cast.front().type, gguf::TensorType::kQ8_0);
      EXPECT_EQ(p->cast.front().dims, 2);
    }
  }
  // Four models x 4 (hf-llama, per-head-llama, and hf-llama's LoRA merged
  // and base), the adapter x 3.
  EXPECT_EQ(BuiltinProfileNames().size(), 19u);
  EXPECT_FALSE(BuiltinProfile("hf-llama-q4_0"));
  EXPECT_FALSE(BuiltinProfile("hf-llama-lora-q8_0"));  // a factor's rank is not a multiple of 32
  EXPECT_EQ(BuiltinProfile("hf-llama-lora-f16")->adapter, "lora");
  EXPECT_EQ(BuiltinProfile("hf-llama-lora-merged-q8_0")->lora, "merge");
  EXPECT_EQ(BuiltinProfile("hf-llama-lora-base-bf16")->lora, "base");
  EXPECT_TRUE(BuiltinProfile("hf-llama-f16")->lora.empty());
}

TEST(ProfileTest, DigestIgnoresSpellingButNotMeaning) {
  auto a = ParseProfileToml("name = \"p\"\nrename = [{ from = \"a\", to = \"b\" }]\n", "a.toml");
  auto b =
      ParseProfileToml("# comment\nname = 'p'\n\n[[rename]]\nto = \"b\"\nfrom = \"a\"\n", "b.toml");
  auto c = ParseProfileToml("name = \"p\"\nrename = [{ from = \"a\", to = \"c\" }]\n", "c.toml");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(CompileProfile(*a)->digest, CompileProfile(*b)->digest);
  EXPECT_NE(CompileProfile(*a)->digest, CompileProfile(*c)->digest);
  // The canonical text parses back to the same digest.
  auto again = ParseProfileToml(CanonicalText(*BuiltinProfile("hf-llama-q8_0")), "canon");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(CompileProfile(*again)->digest,
            CompileProfile(*BuiltinProfile("hf-llama-q8_0"))->digest);
}

TEST(ProfileTest, ErrorsNameTheFileLineAndField) {
  auto bad_key = ParseProfileToml("name = \"p\"\n\nrenames = []\n", "p.toml");
  EXPECT_THAT(bad_key.status().message(), HasSubstr("p.toml:3: unknown key 'renames'"));
  auto bad_field =
      ParseProfileToml("name = \"p\"\nfuse = [{ from = \"a\", too = \"b\" }]\n", "p.toml");
  EXPECT_THAT(bad_field.status().message(), HasSubstr("fuse.too"));
  auto syntax = ParseProfileToml("name = \n", "p.toml");
  EXPECT_THAT(syntax.status().message(), HasSubstr("p.toml:1"));
  EXPECT_THAT(ParseProfileToml("drop = []\n", "p.toml").status().message(), HasSubstr("'name'"));
}

TEST(ProfileTest, CompileRefusesWhatCannotWork) {
  auto compile = [](std::string toml) {
    auto spec = ParseProfileToml(toml, "t");
    return spec.ok() ? CompileProfile(*spec).status() : spec.status();
  };
  EXPECT_THAT(compile("name = \"Bad Name\"").message(), HasSubstr("[a-z0-9_-]"));
  EXPECT_THAT(compile("name = \"train\"").message(), HasSubstr("not 'train'"));
  EXPECT_THAT(compile("name = \"p\"\narchitecture = \"gpt9\"").message(), HasSubstr("gpt9"));
  EXPECT_THAT(compile("name = \"p\"\ncast = [{ match = \"*\", type = \"q4_0\" }]").message(),
              HasSubstr("q4_0"));
  EXPECT_THAT(compile("name = \"p\"\nfuse = [{ from = \"a.{H}\", order = \"X\", axis = \"rows\", "
                      "to = \"a\" }]")
                  .message(),
              HasSubstr("order 'X'"));
  EXPECT_THAT(compile("name = \"p\"\nfuse = [{ from = \"a.{H}\", order = \"H\", axis = \"up\", "
                      "to = \"a\" }]")
                  .message(),
              HasSubstr("axis 'up'"));
  EXPECT_THAT(compile("name = \"p\"\ntransform = [{ match = \"a\", transpose = true, "
                      "rope_permute = \"k\" }]")
                  .message(),
              HasSubstr("exactly one"));
  EXPECT_THAT(compile("name = \"p\"\ntransform = [{ match = \"a\", permute = [0, 0] }]").message(),
              HasSubstr("each dim once"));
  EXPECT_THAT(compile("name = \"p\"\nmetadata = [{ key = \"k\", type = \"u32\", value = \"x\" }]")
                  .message(),
              HasSubstr("'x' is not a u32"));
  EXPECT_THAT(compile("name = \"p\"\nmetadata = [{ key = \"k\", type = \"u32\" }]").message(),
              HasSubstr("needs from, derive or value"));
}

TEST(ProfileTest, LimitsBoundWhatOneProfileMayAsk) {
  ProfileSpec wild{.name = "p"};
  wild.drop = {"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b"};  // 17 wildcards
  EXPECT_THAT(CompileProfile(wild).status().message(),
              HasSubstr("has 17 wildcards and captures; at most 16"));
  ProfileSpec long_pattern{.name = "p"};
  long_pattern.drop = {std::string(257, 'a')};
  EXPECT_THAT(CompileProfile(long_pattern).status().message(),
              HasSubstr("a pattern of 257 bytes; at most 256"));
  ProfileSpec many{.name = "p"};
  many.drop.assign(1025, "a");
  EXPECT_THAT(CompileProfile(many).status().message(),
              HasSubstr("1025 rules; a profile may have at most 1024"));
  ProfileSpec split{.name = "p"};
  split.split.push_back({.from = "w", .axis = "rows"});
  for (int i = 0; i < 65; ++i) split.split.back().to.push_back(StrCat("w", i));
  EXPECT_THAT(CompileProfile(split).status().message(),
              HasSubstr("has 65 outputs; it needs 2 to 64"));
  split.split.back().to.resize(64);
  EXPECT_TRUE(CompileProfile(split).ok()) << CompileProfile(split).status();
}

TEST(ProfileTest, ExportNames) {
  EXPECT_TRUE(IsValidExportName("hf-llama-q8_0"));
  EXPECT_FALSE(IsValidExportName("train"));
  EXPECT_FALSE(IsValidExportName(""));
  EXPECT_FALSE(IsValidExportName("a.b"));
  EXPECT_FALSE(IsValidExportName("A"));
  EXPECT_FALSE(IsValidExportName(std::string(65, 'a')));
}

}  // namespace
}  // namespace ckptd::exports
