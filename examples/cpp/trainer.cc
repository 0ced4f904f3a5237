// A minimal C++ trainer loop against ckptd, built only from the installed
// SDK (find_package(ckptd) or pkg-config): open a run with a schedule,
// restore the latest checkpoint if there is one, hand the weights to
// MaybeSave every step (the daemon says which steps are due), and close the
// run with the final snapshot.
//
//   ckptd_example_trainer [--socket unix:./ckpt-runs/ckptd.sock] [--run demo]
//                         [--steps 200] [--every 50]
//
// Run it twice: the second run resumes from the first one's last step.
#include <ckptd/checkpointer.h>
#include <ckptd/client.h>
#include <ckptd/restore.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string socket = "unix:./ckpt-runs/ckptd.sock";
  std::string run = "demo";
  uint64_t steps = 200;
  uint64_t every = 50;
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--socket") {
      a.socket = value;
    } else if (flag == "--run") {
      a.run = value;
    } else if (flag == "--steps") {
      a.steps = std::stoull(value);
    } else if (flag == "--every") {
      a.every = std::stoull(value);
    } else {
      std::fprintf(stderr, "unknown option %s\n", flag.c_str());
      std::exit(2);
    }
  }
  return a;
}

int Fail(const char* what, const absl::Status& st) {
  std::fprintf(stderr, "%s: %s\n", what, st.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  auto client = ckptd::Client::Connect(args.socket);
  if (!client.ok()) return Fail("connect", client.status());

  ckptd::v1::OpenRunRequest open;
  open.set_run_id(args.run);
  open.mutable_schedule()->set_every_steps(args.every);
  auto* arch = open.add_model_metadata();
  arch->set_key("general.name");
  arch->mutable_value()->set_string_value("ckptd example");
  auto run = (*client)->OpenRun(open);
  if (!run.ok()) return Fail("open the run", run.status());

  // The model: one weight matrix, trained by a toy update rule.
  std::vector<float> w(256 * 256, 0.0f);
  uint64_t first = 1;
  const std::vector<uint64_t> dims = {256, 256};  // GGUF order
  const ckptd::ReadTarget target{.name = "w",
                                 .dst = w.data(),
                                 .n = w.size() * sizeof(float),
                                 .type = ckptd::v1::TENSOR_TYPE_F32,
                                 .ne = dims};
  // The latest checkpoint, or the newest before it that restores whole.
  auto restored = ckptd::Restore::ReadRun(**run, {&target, 1});
  if (restored.ok()) {
    for (const auto& s : (*restored)->skipped()) {
      std::printf("skipped step %llu: %s\n", static_cast<unsigned long long>(s.step),
                  s.why.c_str());
    }
    first = (*restored)->step() + 1;
    std::printf("restored step %llu\n", static_cast<unsigned long long>(first - 1));
  } else if (!absl::IsNotFound(restored.status())) {
    return Fail("restore", restored.status());
  }

  auto cp = ckptd::Checkpointer::Create(run->get());
  if (!cp.ok()) return Fail("checkpointer", cp.status());
  const std::vector<ckptd::TensorView> tensors = {
      {.name = "w", .ne = dims, .data = w.data(), .bytes = w.size() * sizeof(float)}};
  const uint64_t last = first + args.steps - 1;
  double loss = 0;
  for (uint64_t step = first; step <= last; ++step) {
    for (size_t i = 0; i < w.size(); ++i) w[i] += 0.001f * static_cast<float>((i + step) % 7);
    loss = 1.0 / std::sqrt(static_cast<double>(step));
    if (step == last) break;  // the final step is Close's snapshot, saved once
    auto saved = (*cp)->MaybeSave(step, tensors, {{"loss", loss}});
    if (!saved.ok()) return Fail("save", saved.status());
    if (*saved) std::printf("saved step %llu\n", static_cast<unsigned long long>(step));
  }
  auto closed = (*cp)->Close(last, tensors, {{"loss", loss}});
  if (!closed.ok()) return Fail("close", closed.status());
  std::printf("closed at step %llu (%s)\n", static_cast<unsigned long long>(last),
              (*cp)->stats().shared_memory ? "shared memory" : "stream");
  return 0;
}
