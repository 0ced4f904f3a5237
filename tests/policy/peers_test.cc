// Ring-style peer choice.
#include "daemon/policy/peers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckptd::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(RingPeersTest, TheNextNodesAroundTheRingNeverItself) {
  const std::vector<std::string> nodes = {"a:1", "b:1", "c:1", "d:1"};
  EXPECT_THAT(*RingPeers(nodes, "a:1", 1), ElementsAre("b:1"));
  EXPECT_THAT(*RingPeers(nodes, "c:1", 2), ElementsAre("d:1", "a:1"));
  EXPECT_THAT(*RingPeers(nodes, "d:1", 2), ElementsAre("a:1", "b:1"));    // wraps
  EXPECT_THAT(*RingPeers({"a:1", "b:1"}, "b:1", 2), ElementsAre("a:1"));  // a small ring
  EXPECT_TRUE(RingPeers({"a:1"}, "a:1", 1)->empty());
  EXPECT_THAT(std::string(RingPeers(nodes, "e:1", 1).status().message()),
              HasSubstr("'e:1') is not in the list of nodes"));
  EXPECT_THAT(std::string(RingPeers({"a:1", "a:1"}, "a:1", 1).status().message()),
              HasSubstr("listed twice"));
  EXPECT_FALSE(RingPeers(nodes, "a:1", 0).ok());
  EXPECT_FALSE(RingPeers(nodes, "a:1", 3).ok());
}

}  // namespace
}  // namespace ckptd::policy
