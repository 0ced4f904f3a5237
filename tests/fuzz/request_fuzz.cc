// libFuzzer target: the request validator. Any bytes, decoded as a Save
// header or an OpenRun request (first byte), through the checks and
// conversions every save and OpenRun passes before touching a run. An
// answer or a Status naming the field; a crash, sanitizer report, a
// refusal without a message, or accepted tensor names that llama.cpp would
// not take are bugs.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "daemon/base/strings.h"
#include "daemon/rpc/requests.h"

namespace {

// Small limits, so the fuzzer reaches the refusals too.
const ckptd::rpc::RequestLimits kLimits{.max_tensors = 64, .max_metadata_bytes = 4096};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool open_run = (data[0] & 1) != 0;
  const uint8_t* body = data + 1;
  const int n = static_cast<int>(size - 1);
  if (open_run) {
    ckptd::v1::OpenRunRequest req;
    if (!req.ParseFromArray(body, n)) return 0;
    absl::Status st = ckptd::rpc::CheckLimits(kLimits, "model_tensors", req.model_tensors_size(),
                                              "model_metadata", req.model_metadata());
    if (!st.ok()) return st.message().empty() ? (std::abort(), 0) : 0;
    auto s = ckptd::rpc::SettingsFrom(req);
    if (!s.ok() && s.status().message().empty()) std::abort();
    return 0;
  }
  ckptd::v1::SaveHeader h;
  if (!h.ParseFromArray(body, n)) return 0;
  auto p = ckptd::rpc::ParamsFrom(h, ckptd::scheduler::SaveKind::kSave, kLimits);
  if (!p.ok()) {
    if (p.status().message().empty()) std::abort();
    return 0;
  }
  for (const auto& t : p->tensors) {
    if (!ckptd::NameProblem(t.spec.name).empty()) std::abort();
  }
  return 0;
}
