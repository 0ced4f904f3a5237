// Conversions between the API's protobuf messages and the daemon's own
// types, with the validation the API promises: every rejection names the
// field and what to do.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/v1/ckptd.pb.h"
#include "daemon/export/profile.h"
#include "daemon/gguf/reader.h"
#include "daemon/gguf/value.h"
#include "daemon/policy/retention.h"
#include "daemon/policy/schedule.h"
#include "daemon/storage/checkpoint.h"
#include "daemon/storage/checkpoint_writer.h"

namespace ckptd::api {

absl::StatusOr<gguf::Value> FromProto(const v1::MetadataValue& v, const std::string& field);
v1::MetadataValue ToProto(const gguf::Value& v);

// Entries -> Metadata; rejects duplicate or empty keys and, unless
// allow_reserved, keys the daemon writes itself (ckpt.*, general.uuid,
// general.alignment).
absl::StatusOr<gguf::Metadata> FromProto(
    const google::protobuf::RepeatedPtrField<v1::MetadataEntry>& entries, const std::string& field,
    bool allow_reserved = false);
void ToProto(const gguf::Metadata& md, google::protobuf::RepeatedPtrField<v1::MetadataEntry>* out);

absl::StatusOr<std::vector<storage::PlannedTensor>> FromProto(
    const google::protobuf::RepeatedPtrField<v1::TensorDescriptor>& tensors);
void ToProto(const gguf::TensorInfo& t, storage::TensorGroup group, v1::TensorInfo* out);

policy::RetentionPolicy FromProto(const v1::RetentionPolicy& r);
v1::RetentionPolicy ToProto(const policy::RetentionPolicy& r);
policy::Schedule FromProto(const v1::Schedule& s);
v1::Schedule ToProto(const policy::Schedule& s);

void ToProto(const storage::CheckpointRecord& r, bool is_latest, v1::CheckpointInfo* out);
// Retention's verdicts (local or remote), in step order.
void ToProto(const std::vector<policy::RetentionDecision>& plan, v1::RetentionPlan* out);

exports::ProfileSpec FromProto(const v1::ExportProfile& p);
v1::ExportProfile ToProto(const exports::ProfileSpec& s);

// A message in protobuf's JSON mapping with the proto's field names: the
// schema the HTTP API and `ckptctl --json` share.
std::string MessageToJson(const google::protobuf::Message& m, bool pretty = false);

}  // namespace ckptd::api
