// A trainer that dies right after handing over a save: opens a run, stages
// one tensor of N bytes (byte i = i * 7 mod 251) in a sealed memfd arena,
// calls SaveShared, prints "accepted <save_id>", and SIGKILLs itself.
// Usage: shm_trainer SOCKET RUN_ID STEP BYTES
//        shm_trainer register ARENA_SOCKET TOKEN   (registers a 1 MiB arena,
//        prints the daemon's answer: "OK <id>" or the error; exit 0 or 1)
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "ckptd/arena.h"
#include "ckptd/client.h"

namespace {

int RegisterOnly(const std::string& socket, const std::string& token) {
  auto arena = ckptd::Arena::Create(1 << 20);
  if (!arena.ok()) return 1;
  auto channel = ckptd::ArenaChannel::Connect(socket);
  if (!channel.ok()) {
    std::printf("%s\n", channel.status().ToString().c_str());
    return 1;
  }
  auto id = (*channel)->Register((*arena)->fd(), token);
  if (!id.ok()) {
    std::printf("%s\n", id.status().ToString().c_str());
    return 1;
  }
  std::printf("OK %llu\n", static_cast<unsigned long long>(*id));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "register") return RegisterOnly(argv[2], argv[3]);
  if (argc != 5) {
    std::fprintf(stderr, "usage: shm_trainer SOCKET RUN_ID STEP BYTES\n");
    return 2;
  }
  const uint64_t step = std::stoull(argv[3]);
  const size_t bytes = std::stoull(argv[4]);
  auto client = ckptd::Client::Connect(argv[1]);
  ckptd::v1::OpenRunRequest open;
  open.set_run_id(argv[2]);
  auto run = (*client)->OpenRun(open);
  if (!run.ok()) {
    std::fprintf(stderr, "OpenRun: %s\n", std::string(run.status().message()).c_str());
    return 1;
  }
  auto arena = ckptd::Arena::Create(bytes);
  auto channel = ckptd::ArenaChannel::Connect((*run)->opened().arena_socket());
  if (!arena.ok() || !channel.ok()) return 1;
  for (size_t i = 0; i < bytes; ++i) (*arena)->data()[i] = static_cast<char>(i * 7 % 251);
  auto id = (*channel)->Register((*arena)->fd(), (*run)->opened().arena_token());
  if (!id.ok()) {
    std::fprintf(stderr, "Register: %s\n", std::string(id.status().message()).c_str());
    return 1;
  }
  ckptd::TensorView t{"blob", ckptd::v1::TENSOR_TYPE_I8, {bytes}, nullptr, bytes};
  ckptd::v1::TensorLocation loc;
  loc.set_arena_id(*id);
  auto r = (*run)->SaveShared(step, {t}, {loc}, {{"loss", 0.5}}, {.force = true});
  if (!r.ok()) {
    std::fprintf(stderr, "SaveShared: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  std::printf("accepted %llu\n", static_cast<unsigned long long>(r->save_id()));
  std::fflush(stdout);
  ::raise(SIGKILL);  // no cleanup of any kind: the kernel closes our fds
  return 0;
}
