// Requests to save parameters: the limits one request may declare and the
// checks and conversions every save and OpenRun goes through before
// anything is allocated for it or touches a run. Pure (no registry, no
// I/O); fuzzed (tests/fuzz/request_fuzz.cc).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "ckptd/v1/ckptd.pb.h"
#include "daemon/env/env.h"
#include "daemon/scheduler/run_lifecycle.h"
#include "daemon/scheduler/run_registry.h"
#include "daemon/scheduler/save_session.h"

namespace ckptd::rpc {

// What one request may declare, whatever its transport allows.
struct RequestLimits {
  uint64_t max_tensors = 100000;
  uint64_t max_metadata_bytes = uint64_t{64} << 20;
  // Streams that hold a server thread for long: beyond these, the call is
  // refused at once, so that unary calls (ShouldSave, SaveShared, WaitSaved)
  // always find a thread, whatever dashboards and stalled trainers hold.
  uint32_t max_watch_streams = 16;
  uint32_t max_save_streams = 32;
  // Calls that wait holding a thread (WaitSaved's wait, SavePointers' read):
  // beyond this WaitSaved answers at once and SavePointers is refused.
  uint32_t max_waiting_calls = 16;
  double watch_max_seconds = 3600;  // a WatchRun ends after this; resume with since_step
  uint64_t memory_budget_bytes = uint64_t{256} << 20;  // see MemoryBudget
  uint32_t max_streams_per_peer = 64;  // watch + save streams of one TCP host; 0 = no limit
};

// `tensors` tensors and `metadata` against the limits; the fields named in errors.
absl::Status CheckLimits(const RequestLimits& limits, const char* tensors_field, int tensors,
                         const char* metadata_field,
                         const google::protobuf::RepeatedPtrField<v1::MetadataEntry>& metadata);

// A save's header: limits, metric names, tensors and metadata, converted.
absl::StatusOr<scheduler::SaveParams> ParamsFrom(const v1::SaveHeader& h, scheduler::SaveKind kind,
                                                 const RequestLimits& limits);

// What the memory budget charges for a save header that arrived as
// `message_bytes` on the wire: the parsed message and what it is converted
// into (SaveParams, the planned files' layouts), measured in
// tests/rpc/header_cost_test.cc: a per-tensor cost on top of the factor on
// the wire size, since a tensor's ~28 wire bytes become ~490-650 bytes
// parsed and planned (48.7 MB for 100k tensors, where 3x the wire size
// charged 8.4 MB).
inline constexpr uint64_t kChargePerTensor = 640;
uint64_t SaveHeaderCharge(const v1::SaveHeader& h, uint64_t message_bytes);

// OpenRun's settings but exports (model metadata, provenance, schedule, retention).
absl::StatusOr<scheduler::RunSettings> SettingsFrom(const v1::OpenRunRequest& req);
// OpenRun's request as the run lifecycle takes it: settings converted,
// export profiles resolved (built-in, from `profiles_dir`, or defined in the
// request), the declared model tensors, and the budget charge (the
// request's size x MemoryBudget::kParsedFactor). The stored form is the
// request as protobuf JSON, so a restart converts it with the same code.
class RequestCodec final : public scheduler::SettingsCodec {
 public:
  RequestCodec(env::Env* env, std::string profiles_dir)
      : env_(env), profiles_dir_(std::move(profiles_dir)) {}
  absl::StatusOr<scheduler::DeclaredSettings> Declared(const v1::OpenRunRequest& req) const;
  absl::StatusOr<scheduler::DeclaredSettings> Decode(std::string_view stored) const override;
  static std::string Stored(const v1::OpenRunRequest& req);

 private:
  env::Env* env_;
  std::string profiles_dir_;
};

// OpenRun's multi_rank: bounds checked, the coordinator and timeout
// defaulted; a world of 0 or 1 leaves `out` a single-rank run.
absl::Status MultiRankFrom(const v1::MultiRank& m, scheduler::RunMultiRank* out);

}  // namespace ckptd::rpc
