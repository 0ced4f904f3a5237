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

TEST(PatternTest, RefusesMalformedPatterns) {
  for (const char* bad : {"", "a{", "a}", "{}", "{1x}", "{A}{B}", "{A}*", "**"}) {
    EXPECT_FALSE(Pattern::Compile(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace ckptd::exports
