// Tensor-name patterns: captures, wildcards, expansion, bad patterns.
#include "daemon/export/pattern.h"

#include <gtest/gtest.h>

namespace ckptd::exports {
namespace {

TEST(PatternTest, CapturesStopAtDots) {
  auto p = Pattern::Compile("model.layers.{L}.self_attn.q_proj.weight");
  ASSERT_TRUE(p.ok());
  auto m = p->Match("model.layers.12.self_attn.q_proj.weight");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->at("L"), "12");
  EXPECT_FALSE(p->Match("model.layers.1.2.self_attn.q_proj.weight"));  // {L} excludes '.'
  EXPECT_FALSE(p->Match("model.layers..self_attn.q_proj.weight"));     // {L} is non-empty
  EXPECT_FALSE(p->Match("model.layers.3.self_attn.q_proj.weight.x"));  // whole name only
  auto out = Pattern::Compile("blk.{L}.attn_q.weight");
  EXPECT_EQ(*out->Expand(*m), "blk.12.attn_q.weight");
}

TEST(PatternTest, BacktracksAndRepeatsMustAgree) {
  auto p = Pattern::Compile("{A}_{B}.x");
  auto m = p->Match("a_b_c.x");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->at("A"), "a");  // shortest first, then backtracking finds a fit
  EXPECT_EQ(m->at("B"), "b_c");
  auto same = Pattern::Compile("{X}.{X}");
  EXPECT_TRUE(same->Match("a.a"));
  EXPECT_FALSE(same->Match("a.b"));
}

TEST(PatternTest, WildcardMatchesDotsButCannotBeExpanded) {
  auto p = Pattern::Compile("*.rotary_emb.inv_freq");
  EXPECT_TRUE(p->Match("model.layers.0.self_attn.rotary_emb.inv_freq"));
  EXPECT_TRUE(Pattern::Compile("*")->Match("anything.at.all"));
  EXPECT_FALSE(p->Expand({}).ok());
  EXPECT_FALSE(Pattern::Compile("blk.{L}.x")->Expand({}).ok());  // {L} not captured
}

TEST(PatternTest, StarredCapturesSpanDots) {
  auto p = Pattern::Compile("{all*}");
  auto m = p->Match("model.layers.0.mlp.up_proj.weight");
  ASSERT_TRUE(m);
  EXPECT_EQ(*Pattern::Compile("x.{all*}")->Expand(*m), "x.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(Pattern::Compile("{a*}.weight")->Match("a.b.weight")->at("a"), "a.b");
}

// Backtracking without memory takes ~10^11 steps here: the test would hang
// until CTest's timeout. Remembered failures answer at once.
TEST(PatternTest, ManyWildcardsNeverBacktrackExponentially) {
  const std::string a63(63, 'a');
  auto evil = Pattern::Compile("*a*a*a*a*a*a*a*a*a*a*a*b");
  ASSERT_TRUE(evil.ok());
  EXPECT_FALSE(evil->Match(a63));
  EXPECT_TRUE(evil->Match(a63 + "b"));
  auto captures = Pattern::Compile("{A*}a{B*}a{C*}a{D*}a{E*}a{F*}a{G*}a{H*}b");
  ASSERT_TRUE(captures.ok());
  EXPECT_FALSE(captures->Match(std::string(1000, 'a')));
  // A name used twice: the memory includes what it bound, so the answer stays right.
  auto twice = Pattern::Compile("{X*}.{Y*}.{X*}");
  ASSERT_TRUE(twice.ok());
  auto m = twice->Match("a.b.c.a.b");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->at("X"), "a.b");
  EXPECT_EQ(m->at("Y"), "c");
  EXPECT_FALSE(twice->Match("a.b.c.a.c"));
  EXPECT_FALSE(twice->Match(std::string(300, 'a') + "." + std::string(300, 'b')));
}

TEST(PatternTest, RefusesMalformedPatterns) {
  for (const char* bad : {"", "a{", "a}", "{}", "{1x}", "{A}{B}", "{A}*", "**"}) {
    EXPECT_FALSE(Pattern::Compile(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace ckptd::exports
