// Config loading: file -> environment -> command line, with provenance and
// "path:line: message" errors.
#include "daemon/config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testing/temp_dir.h"

namespace ckptd::config {
namespace {

using ::testing::HasSubstr;

class ConfigTest : public ::testing::Test {
 protected:
  std::string File(const std::string& text) {
    std::string path = dir_.Join("ckptd.toml");
    testing::WriteFile(path, text);
    return path;
  }
  std::string Error(const std::string& text) {
    auto c = LoadConfig(File(text), {}, {});
    EXPECT_FALSE(c.ok());
    return std::string(c.status().message());
  }
  testing::TempDir dir_;
};

TEST_F(ConfigTest, DefaultsAreTheDevSetup) {
  auto c = LoadConfig("", {}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "unix:./ckpt-runs/ckptd.sock");
  EXPECT_EQ(c->roots, std::vector<std::string>{"./ckpt-runs"});
  EXPECT_EQ(c->schedule.every_steps, 1000u);
  EXPECT_EQ(c->sources.at("server.listen"), "default");
  EXPECT_EQ(c->disk_guard.on_full, policy::OnFull::kRefuse);  // never deletes what is kept
}

TEST_F(ConfigTest, DiskGuardOnFullIsRefuseOrAnExplicitPruneOldest) {
  auto c = LoadConfig(File("[disk_guard]\non_full = \"prune_oldest\"\n"), {}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->disk_guard.on_full, policy::OnFull::kPruneOldest);
  EXPECT_THAT(Describe(*c), HasSubstr("on_full = \"prune_oldest\""));
  EXPECT_THAT(Error("[disk_guard]\non_full = \"delete\"\n"),
              HasSubstr(":2: disk_guard.on_full: 'delete' is not \"refuse\" or \"prune_oldest\""));
}

TEST_F(ConfigTest, TheMemoryTierHasItsOwnRootAndMemoryStepsNeedIt) {
  auto c = LoadConfig(File("[memory]\nroot = \"/dev/shm/ckptd\"\nkeep_last = 3\nmax_bytes = 1024\n"
                           "[schedule]\nmemory_every_steps = 10\n"),
                      {}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->memory_root, "/dev/shm/ckptd");
  EXPECT_EQ(c->memory_keep_last, 3u);
  EXPECT_EQ(c->memory_max_bytes, 1024u);
  EXPECT_EQ(c->schedule.memory_every_steps, 10u);
  EXPECT_THAT(Error("[schedule]\nmemory_every_steps = 10\n"),
              HasSubstr("schedule.memory_every_steps: memory steps need the memory tier"));
  EXPECT_THAT(Error("[storage]\nroots = [\"/srv/ckpt\"]\n[memory]\nroot = \"/srv/ckpt/mem\"\n"),
              HasSubstr("memory.root: '/srv/ckpt/mem' overlaps storage.roots '/srv/ckpt'"));
  EXPECT_THAT(Error("[storage]\nroots = [\"/dev/shm/x/runs\"]\n[memory]\nroot = \"/dev/shm/x\"\n"),
              HasSubstr("overlaps storage.roots"));
  EXPECT_THAT(Error("[memory]\nroot = \"/dev/shm/a\"\nkeep_last = 0\n"),
              HasSubstr("memory.keep_last: must be at least 1"));
}

TEST_F(ConfigTest, PeersNeedTheMemoryTierABudgetAndTlsOrAnExplicitInsecure) {
  const std::string memory = "[memory]\nroot = \"/dev/shm/ckptd\"\n";
  auto c = LoadConfig(File(memory + "[peers]\nlisten = \"10.0.0.1:7070\"\nmax_bytes = 1024\n"
                                    "insecure = true\nnodes = [\"10.0.0.1:7070\", "
                                    "\"10.0.0.2:7070\"]\nreplicas = 2\n"),
                      {}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->peers_nodes.size(), 2u);
  EXPECT_EQ(c->peers_replicas, 2u);
  EXPECT_THAT(Error("[peers]\nlisten = \"10.0.0.1:7070\"\nmax_bytes = 1\ninsecure = true\n"),
              HasSubstr("peers.listen: replicas are held in the memory tier"));
  EXPECT_THAT(Error(memory + "[peers]\nlisten = \"10.0.0.1:7070\"\ninsecure = true\n"),
              HasSubstr("peers.max_bytes"));
  EXPECT_THAT(Error(memory + "[peers]\nlisten = \"10.0.0.1:7070\"\nmax_bytes = 1\n"),
              HasSubstr("or peers.insecure = true"));
  EXPECT_THAT(Error(memory + "[peers]\nlisten = \"10.0.0.1:7070\"\nmax_bytes = 1\n"
                             "tls_cert = \"c\"\ntls_key = \"k\"\n"),
              HasSubstr("peers.tls_ca"));
  EXPECT_THAT(Error(memory + "[peers]\nlisten = \"10.0.0.1:7070\"\nmax_bytes = 1\n"
                             "insecure = true\nnodes = [\"10.0.0.2:7070\"]\n"),
              HasSubstr("'10.0.0.1:7070') is not in the list of nodes"));
  EXPECT_THAT(Error(memory + "[peers]\nlisten = \"10.0.0.1:7070\"\nmax_bytes = 1\n"
                             "insecure = true\nnodes = [\"10.0.0.1:7070\"]\nreplicas = 3\n"),
              HasSubstr("1 or 2 peers"));
  EXPECT_THAT(Error("[peers]\nnodes = [\"a:1\"]\n"), HasSubstr("needs peers.listen"));
}

TEST_F(ConfigTest, TcpNeedsTlsOrAnExplicitInsecure) {
  const std::string tcp = "[server]\nlisten = \"0.0.0.0:7000\"\n";
  EXPECT_THAT(Error(tcp), HasSubstr("server.listen: '0.0.0.0:7000' is TCP without TLS"));
  EXPECT_TRUE(LoadConfig(File(tcp + "insecure = true\n"), {}, {}).ok());
  auto c = LoadConfig(File(tcp), {}, {.insecure = true});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sources.at("server.insecure"), "--insecure");
  EXPECT_TRUE(LoadConfig(File(tcp + "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n"), {}, {}).ok());
  EXPECT_THAT(Error(tcp + "tls_cert = \"c.pem\"\n"), HasSubstr("go together"));
  EXPECT_THAT(Error(tcp + "insecure = true\ntls_client_ca = \"ca.pem\"\n"),
              HasSubstr("server.tls_client_ca: client certificates need TLS"));
  EXPECT_THAT(Error(tcp + "insecure = true\ntokens_file = \"t\"\n"),
              HasSubstr("server.tokens_file: bearer tokens need TLS"));
  EXPECT_THAT(Error("[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n"),
              HasSubstr("TLS is for a HOST:PORT listen"));
}

TEST_F(ConfigTest, ListenAddressesAreCheckedWhereTheyAreWritten) {
  auto listen = [&](const std::string& v) {
    return Error("[server]\ninsecure = true\nlisten = \"" + v + "\"\n");
  };
  EXPECT_THAT(listen("tcp://0.0.0.0:7000"),
              HasSubstr(":3: server.listen: 'tcp://0.0.0.0:7000' has a scheme (tcp://)"));
  EXPECT_THAT(listen("0.0.0.0:65536"),
              HasSubstr("the port must be a number from 0 to 65535 (0 picks a free one)"));
  EXPECT_THAT(listen("0.0.0.0:70000"), HasSubstr("from 0 to 65535"));
  EXPECT_THAT(listen("0.0.0.0:http"), HasSubstr("from 0 to 65535"));
  EXPECT_THAT(listen("::1:7000"), HasSubstr("an IPv6 host goes in brackets"));
  EXPECT_THAT(listen("unix:"), HasSubstr("is not unix:PATH or HOST:PORT"));
  EXPECT_THAT(listen(":7000"), HasSubstr("is not HOST:PORT"));
  EXPECT_TRUE(
      LoadConfig(File("[server]\ninsecure = true\nlisten = \"[::1]:65535\"\n"), {}, {}).ok());
  // The API and HTTP listeners may ask for a free port (the log names it);
  // peers may not: the other nodes list this one's address.
  EXPECT_TRUE(
      LoadConfig(File("[server]\ninsecure = true\nlisten = \"127.0.0.1:0\"\n"), {}, {}).ok());
  EXPECT_TRUE(LoadConfig(File("[http]\nlisten = \"127.0.0.1:0\"\n"), {}, {}).ok());
  EXPECT_THAT(Error("[http]\nlisten = \"http://127.0.0.1:9477\"\n"),
              HasSubstr(":2: http.listen: 'http://127.0.0.1:9477' has a scheme"));
  EXPECT_THAT(Error("[http]\nlisten = \"127.0.0.1:99999\"\n"),
              HasSubstr("from 0 to 65535 (0 picks a free one)"));
  // The command line is checked as strictly, and named as the source.
  auto c = LoadConfig("", {}, {.listen = "tcp://h:1"});
  EXPECT_THAT(c.status().message(), HasSubstr("--listen: server.listen: 'tcp://h:1'"));
}

TEST_F(ConfigTest, SocketModeAndGroup) {
  auto c = LoadConfig(File("[server]\nsocket_mode = \"0660\"\nsocket_group = \"root\"\n"), {}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->socket_mode, 0660u);
  EXPECT_THAT(Describe(*c), HasSubstr("socket_mode = \"0660\""));
  EXPECT_EQ(LoadConfig("", {}, {})->socket_mode, 0660u);  // the group may connect by default
  EXPECT_THAT(Error("[server]\nsocket_mode = 660\n"), HasSubstr("expected an octal string"));
  EXPECT_THAT(Error("[server]\nsocket_mode = \"0999\"\n"),
              HasSubstr(":2: server.socket_mode: '0999' is not a mode like \"0660\""));
  EXPECT_THAT(Error("[server]\nsocket_mode = \"01777\"\n"), HasSubstr("at most 0777"));
  EXPECT_THAT(Error("[server]\nsocket_group = \"no-such-group-here\"\n"),
              HasSubstr(":2: server.socket_group: no group named 'no-such-group-here'"));
  EXPECT_EQ(GroupId("root"), 0);
  EXPECT_EQ(GroupId("no-such-group-here"), -1);
}

TEST_F(ConfigTest, FileThenEnvironmentThenCommandLine) {
  std::string path = File(
      "[server]\nlisten = \"unix:/run/x.sock\"\nmax_threads = 8\n"
      "[storage]\nroots = [\"/a\", \"/b\"]\n"
      "[schedule]\nevery_steps = 50\nevery_seconds = 1.5\nat_steps = [3, 9]\n"
      "final_on_close = false\n[log]\nlevel = \"debug\"\n");
  auto c = LoadConfig(path, {{"CKPTD_LOG_LEVEL", "warn"}}, {.roots = {"/c"}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "unix:/run/x.sock");
  EXPECT_EQ(c->sources.at("server.listen"), path + ":2");
  EXPECT_EQ(c->max_threads, 8u);
  EXPECT_EQ(c->roots, std::vector<std::string>{"/c"});
  EXPECT_EQ(c->sources.at("storage.roots"), "--root");
  EXPECT_EQ(c->log_level, "warn");
  EXPECT_EQ(c->sources.at("log.level"), "env CKPTD_LOG_LEVEL");
  EXPECT_EQ(c->schedule.every_steps, 50u);
  EXPECT_EQ(c->schedule.every_seconds, 1.5);
  EXPECT_EQ(c->schedule.at_steps, (std::vector<uint64_t>{3, 9}));
  EXPECT_FALSE(c->schedule.final_on_close);
  EXPECT_THAT(Describe(*c), HasSubstr("level = \"warn\""));
  EXPECT_THAT(Describe(*c), HasSubstr("# env CKPTD_LOG_LEVEL"));
}

TEST_F(ConfigTest, ErrorsNameFileAndLine) {
  std::string path = dir_.Join("ckptd.toml");
  EXPECT_EQ(Error("[server]\n\nmax_threads = \"many\"\n"),
            path + ":3: server.max_threads: expected an integer, got a string");
  EXPECT_EQ(Error("[storage]\nroots = [\"/a\"]\nrootz = [\"/b\"]\n"),
            path + ":3: unknown key 'storage.rootz' (see config/ckptd.example.toml)");
  EXPECT_THAT(Error("[nope]\nx = 1\n"), HasSubstr(":2: unknown key 'nope.x'"));
  EXPECT_THAT(Error("listen = \"x\"\n"), HasSubstr(":1: unknown key 'listen'"));
  EXPECT_THAT(Error("[server\n"), HasSubstr(path + ":1: "));
  EXPECT_EQ(Error("[storage]\nalignment = 48\n"),
            path + ":2: storage.alignment: 48 is not a power of two up to 1 MiB");
  EXPECT_EQ(Error("[storage]\nroots = []\n"),
            path + ":2: storage.roots: at least one root is needed");
  EXPECT_THAT(Error("[log]\nlevel = \"loud\"\n"), HasSubstr(":2: log.level: 'loud' is not one of"));
  EXPECT_THAT(Error("[server]\nmax_threads = -3\n"),
              HasSubstr(":2: server.max_threads: -3 is out of range"));
  EXPECT_THAT(Error("[schedule]\nat_steps = [1, \"x\"]\n"),
              HasSubstr(":2: schedule.at_steps: expected"));
}

TEST_F(ConfigTest, MissingFileIsAnError) {
  auto c = LoadConfig(dir_.Join("absent.toml"), {}, {});
  EXPECT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("absent.toml"));
}

// [tier.s3] is a nested table; its keys load with their provenance, and
// each bad value is refused naming the key and what to do.
TEST_F(ConfigTest, TheObjectStorageTierIsANestedTableCheckedKeyByKey) {
  auto c = LoadConfig(File("[tier.s3]\nendpoint = \"http://127.0.0.1:7480\"\nbucket = \"b\"\n"
                           "prefix = \"ckpt/a\"\npart_size = 8388608\n"),
                      {}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->s3_endpoint, "http://127.0.0.1:7480");
  EXPECT_EQ(c->s3_part_size, 8u << 20);
  EXPECT_THAT(c->sources.at("tier.s3.bucket"), HasSubstr("ckptd.toml:3"));
  EXPECT_THAT(Describe(*c), HasSubstr("[tier.s3]\nbucket = \"b\""));
  EXPECT_THAT(Error("[tier.s3]\nendpoint = \"127.0.0.1:7480\"\nbucket = \"b\"\n"),
              HasSubstr("tier.s3.endpoint: '127.0.0.1:7480' is not http://"));
  EXPECT_THAT(Error("[tier.s3]\nendpoint = \"http://h:1\"\n"), HasSubstr("needs tier.s3.bucket"));
  EXPECT_THAT(Error("[tier.s3]\npart_size = 1048576\n"),
              HasSubstr("tier.s3.part_size: S3 parts are 5 MiB"));
  EXPECT_THAT(Error("[tier.s3]\npart_size = 16777216\nmax_memory_bytes = 8388608\n"),
              HasSubstr("tier.s3.max_memory_bytes: must hold at least one part"));
  EXPECT_THAT(Error("[tier.s3]\nprefix = \"/ckpt\"\n"), HasSubstr("tier.s3.prefix"));
  EXPECT_THAT(Error("[tier.s3]\nparallel_parts = 0\n"), HasSubstr("tier.s3.parallel_parts"));
  EXPECT_THAT(Error("[tier.s3]\nsecret_key = \"x\"\n"),
              HasSubstr("unknown key 'tier.s3.secret_key'"));
}

}  // namespace
}  // namespace ckptd::config
