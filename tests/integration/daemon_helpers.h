// Helpers the daemon_tests sources share: metadata entries, a small model,
// the OpenRun request most tests start from, a hand-made Save header.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "ckptd/client.h"
#include "tests/integration/daemon_fixture.h"

namespace ckptd::testing {

namespace fs = std::filesystem;

inline std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  return out;
}

inline v1::MetadataEntry Entry(const std::string& key, const std::string& s) {
  v1::MetadataEntry e;
  e.set_key(key);
  e.mutable_value()->set_string_value(s);
  return e;
}

inline v1::MetadataEntry EntryU32(const std::string& key, uint32_t v) {
  v1::MetadataEntry e;
  e.set_key(key);
  e.mutable_value()->set_u32(v);
  return e;
}

// A small model: two f32 matrices filled from a seed.
struct Model {
  std::vector<float> embd, out, adam;
  explicit Model(float seed, size_t n = 4096) : embd(n), out(n / 2), adam(n) {
    for (size_t i = 0; i < embd.size(); ++i) embd[i] = seed + 0.001f * static_cast<float>(i);
    for (size_t i = 0; i < out.size(); ++i) out[i] = seed * 2 - 0.5f * static_cast<float>(i);
    for (size_t i = 0; i < adam.size(); ++i) adam[i] = seed / (1.0f + static_cast<float>(i));
  }
  std::vector<TensorView> Views(bool with_train = false) const {
    std::vector<TensorView> v = {
        {"token_embd.weight",
         v1::TENSOR_TYPE_F32,
         {64, embd.size() / 64},
         embd.data(),
         embd.size() * 4},
        {"output.weight", v1::TENSOR_TYPE_F32, {out.size()}, out.data(), out.size() * 4}};
    if (with_train) {
      v.push_back({"adam.m.token_embd",
                   v1::TENSOR_TYPE_F32,
                   {adam.size()},
                   adam.data(),
                   adam.size() * 4,
                   v1::TENSOR_GROUP_TRAIN});
    }
    return v;
  }
};

inline v1::OpenRunRequest OpenRequest(const std::string& run_id, uint64_t every_steps = 100) {
  v1::OpenRunRequest req;
  req.set_run_id(run_id);
  *req.add_model_metadata() = Entry("general.architecture", "llama");
  *req.add_model_metadata() = Entry("general.name", "tiny");
  *req.add_model_metadata() = EntryU32("llama.block_count", 2);
  req.mutable_provenance()->set_git_commit("abc123");
  req.mutable_provenance()->set_command_line("train.py --lr 3e-4");
  req.mutable_provenance()->set_seed(42);
  (*req.mutable_provenance()->mutable_framework_versions())["torch"] = "2.3.0";
  req.set_base_model_uuid("11111111-2222-8333-8444-555555555555");
  req.mutable_schedule()->set_every_steps(every_steps);
  req.mutable_schedule()->set_final_on_close(true);
  return req;
}

// The first message of a hand-made Save stream: one f32 tensor "w" of `floats` elements.
inline v1::SaveRequest OneTensorHeader(const std::string& run, uint64_t step, uint64_t floats,
                                       bool force = false) {
  v1::SaveRequest msg;
  v1::SaveHeader* h = msg.mutable_header();
  h->set_run_id(run);
  h->set_step(step);
  h->set_force(force);
  auto* d = h->add_tensors();
  d->set_name("w");
  d->add_ne(floats);
  return msg;
}

using DaemonTest = DaemonFixture;

}  // namespace ckptd::testing
