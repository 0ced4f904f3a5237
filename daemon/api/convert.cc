// Proto <-> domain conversions with API validation.
#include "daemon/api/convert.h"

#include <google/protobuf/util/json_util.h>

#include <limits>
#include <set>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/gguf/layout.h"

namespace ckptd::api {
namespace {

using v1::MetadataValue;

absl::Status Invalid(const std::string& field, const std::string& msg) {
  return absl::InvalidArgumentError(StrCat(field, ": ", msg));
}

template <typename T, typename U>
absl::StatusOr<gguf::Value> Narrow(U v, const std::string& field, const char* type) {
  if (v < static_cast<U>(std::numeric_limits<T>::min()) ||
      v > static_cast<U>(std::numeric_limits<T>::max())) {
    return Invalid(field, StrCat(v, " does not fit in ", type));
  }
  return gguf::Value(static_cast<T>(v));
}

gguf::ValueType CaseType(MetadataValue::ValueCase c) {
  switch (c) {
    case MetadataValue::kU8:
      return gguf::ValueType::kU8;
    case MetadataValue::kI8:
      return gguf::ValueType::kI8;
    case MetadataValue::kU16:
      return gguf::ValueType::kU16;
    case MetadataValue::kI16:
      return gguf::ValueType::kI16;
    case MetadataValue::kU32:
      return gguf::ValueType::kU32;
    case MetadataValue::kI32:
      return gguf::ValueType::kI32;
    case MetadataValue::kF32:
      return gguf::ValueType::kF32;
    case MetadataValue::kBoolValue:
      return gguf::ValueType::kBool;
    case MetadataValue::kStringValue:
      return gguf::ValueType::kString;
    case MetadataValue::kArray:
      return gguf::ValueType::kArray;
    case MetadataValue::kU64:
      return gguf::ValueType::kU64;
    case MetadataValue::kI64:
      return gguf::ValueType::kI64;
    case MetadataValue::kF64:
      return gguf::ValueType::kF64;
    case MetadataValue::VALUE_NOT_SET:
      break;
  }
  return gguf::ValueType::kArray;  // unreachable for set values
}

bool IsReserved(const std::string& key) {
  return key.starts_with("ckpt.") || key == gguf::kKeyUuid || key == gguf::kKeyAlignment;
}

}  // namespace

absl::StatusOr<gguf::Value> FromProto(const MetadataValue& v, const std::string& field) {
  switch (v.value_case()) {
    case MetadataValue::kU8:
      return Narrow<uint8_t>(v.u8(), field, "u8");
    case MetadataValue::kI8:
      return Narrow<int8_t>(v.i8(), field, "i8");
    case MetadataValue::kU16:
      return Narrow<uint16_t>(v.u16(), field, "u16");
    case MetadataValue::kI16:
      return Narrow<int16_t>(v.i16(), field, "i16");
    case MetadataValue::kU32:
      return gguf::Value(v.u32());
    case MetadataValue::kI32:
      return gguf::Value(v.i32());
    case MetadataValue::kF32:
      return gguf::Value(v.f32());
    case MetadataValue::kBoolValue:
      return gguf::Value(v.bool_value());
    case MetadataValue::kStringValue:
      return gguf::Value(v.string_value());
    case MetadataValue::kU64:
      return gguf::Value(v.u64());
    case MetadataValue::kI64:
      return gguf::Value(v.i64());
    case MetadataValue::kF64:
      return gguf::Value(v.f64());
    case MetadataValue::kArray: {
      auto elem = static_cast<gguf::ValueType>(v.array().element_type());
      if (elem == gguf::ValueType::kArray)
        return Invalid(field, "nested arrays are not allowed in GGUF");
      std::vector<gguf::Value> items;
      items.reserve(v.array().items_size());
      for (int i = 0; i < v.array().items_size(); ++i) {
        const MetadataValue& item = v.array().items(i);
        std::string at = StrCat(field, "[", i, "]");
        if (item.value_case() == MetadataValue::VALUE_NOT_SET ||
            CaseType(item.value_case()) != elem) {
          return Invalid(at, StrCat("array element is not ", gguf::ValueTypeName(elem),
                                    " (the array's element_type)"));
        }
        CKPTD_ASSIGN_OR_RETURN(gguf::Value value, FromProto(item, at));
        items.push_back(std::move(value));
      }
      return gguf::Value::MakeArray(elem, std::move(items));
    }
    case MetadataValue::VALUE_NOT_SET:
      break;
  }
  return Invalid(field, "no value set");
}

MetadataValue ToProto(const gguf::Value& v) {
  MetadataValue out;
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, uint8_t>)
          out.set_u8(x);
        else if constexpr (std::is_same_v<T, int8_t>)
          out.set_i8(x);
        else if constexpr (std::is_same_v<T, uint16_t>)
          out.set_u16(x);
        else if constexpr (std::is_same_v<T, int16_t>)
          out.set_i16(x);
        else if constexpr (std::is_same_v<T, uint32_t>)
          out.set_u32(x);
        else if constexpr (std::is_same_v<T, int32_t>)
          out.set_i32(x);
        else if constexpr (std::is_same_v<T, float>)
          out.set_f32(x);
        else if constexpr (std::is_same_v<T, bool>)
          out.set_bool_value(x);
        else if constexpr (std::is_same_v<T, std::string>)
          out.set_string_value(x);
        else if constexpr (std::is_same_v<T, uint64_t>)
          out.set_u64(x);
        else if constexpr (std::is_same_v<T, int64_t>)
          out.set_i64(x);
        else if constexpr (std::is_same_v<T, double>)
          out.set_f64(x);
        else {
          auto* arr = out.mutable_array();
          arr->set_element_type(static_cast<v1::ValueType>(x.element_type));
          for (const gguf::Value& item : x.items) *arr->add_items() = ToProto(item);
        }
      },
      v.storage());
  return out;
}

absl::StatusOr<gguf::Metadata> FromProto(
    const google::protobuf::RepeatedPtrField<v1::MetadataEntry>& entries, const std::string& field,
    bool allow_reserved) {
  gguf::Metadata md;
  for (int i = 0; i < entries.size(); ++i) {
    const std::string& key = entries[i].key();
    std::string at = StrCat(field, "[", i, "] '", Printable(key), "'");
    if (std::string problem = NameProblem(key); !problem.empty()) {
      return Invalid(
          at, StrCat("the key ", problem, "; keys are UTF-8 without NUL or control characters"));
    }
    if (!allow_reserved && IsReserved(key)) {
      return Invalid(at, "this key is written by the daemon; use another name");
    }
    CKPTD_ASSIGN_OR_RETURN(gguf::Value value, FromProto(entries[i].value(), at));
    absl::Status st = md.Add(key, std::move(value));
    if (!st.ok()) return Invalid(at, std::string(st.message()));
  }
  return md;
}

void ToProto(const gguf::Metadata& md, google::protobuf::RepeatedPtrField<v1::MetadataEntry>* out) {
  for (const auto& [key, value] : md.entries()) {
    v1::MetadataEntry* e = out->Add();
    e->set_key(key);
    *e->mutable_value() = ToProto(value);
  }
}

absl::StatusOr<std::vector<storage::PlannedTensor>> FromProto(
    const google::protobuf::RepeatedPtrField<v1::TensorDescriptor>& tensors) {
  std::vector<storage::PlannedTensor> out;
  out.reserve(tensors.size());
  for (int i = 0; i < tensors.size(); ++i) {
    const v1::TensorDescriptor& t = tensors[i];
    std::string at = StrCat("tensors[", i, "] '", Printable(t.name()), "'");
    if (std::string problem = NameProblem(t.name()); !problem.empty()) {
      return Invalid(at, StrCat("the name ", problem,
                                "; names are UTF-8 without NUL or control characters (llama.cpp "
                                "compares them as C strings)"));
    }
    if (!v1::TensorType_IsValid(t.type())) {
      return Invalid(at, StrCat("type ", static_cast<int>(t.type()),
                                " is not one ckptd writes (F32, F16, BF16, F64, I8-I64, Q8_0)"));
    }
    if (t.group() != v1::TENSOR_GROUP_MODEL && t.group() != v1::TENSOR_GROUP_TRAIN) {
      return Invalid(at, "group must be MODEL or TRAIN");
    }
    storage::PlannedTensor p;
    p.spec.name = t.name();
    p.spec.type = static_cast<gguf::TensorType>(t.type());
    p.spec.ne.assign(t.ne().begin(), t.ne().end());
    p.group = t.group() == v1::TENSOR_GROUP_TRAIN ? storage::TensorGroup::kTrain
                                                  : storage::TensorGroup::kModel;
    out.push_back(std::move(p));
  }
  return out;
}

void ToProto(const gguf::TensorInfo& t, storage::TensorGroup group, v1::TensorInfo* out) {
  v1::TensorDescriptor* d = out->mutable_tensor();
  d->set_name(t.name);
  d->set_type(static_cast<v1::TensorType>(t.type));
  for (uint64_t n : t.ne) d->add_ne(n);
  d->set_group(group == storage::TensorGroup::kTrain ? v1::TENSOR_GROUP_TRAIN
                                                     : v1::TENSOR_GROUP_MODEL);
  out->set_offset(t.offset);
  out->set_nbytes(t.nbytes);
}

policy::RetentionPolicy FromProto(const v1::RetentionPolicy& r) {
  return {.keep_last = r.keep_last(),
          .keep_every_steps = r.keep_every_steps(),
          .keep_best = r.keep_best(),
          .metric = r.metric().empty() ? "loss" : r.metric(),
          .mode = r.mode() == v1::RetentionPolicy::MODE_MAX ? policy::MetricMode::kMax
                                                            : policy::MetricMode::kMin,
          .missing_metric = r.keep_missing_metric() ? policy::MissingMetric::kKeep
                                                    : policy::MissingMetric::kIgnore,
          .keep_time_interval_seconds = r.keep_time_interval_seconds(),
          .keep_time_window_seconds = r.keep_time_window_seconds(),
          .max_bytes = r.max_bytes()};
}

v1::RetentionPolicy ToProto(const policy::RetentionPolicy& r) {
  v1::RetentionPolicy out;
  out.set_keep_last(r.keep_last);
  out.set_keep_every_steps(r.keep_every_steps);
  out.set_keep_best(r.keep_best);
  out.set_metric(r.metric);
  out.set_mode(r.mode == policy::MetricMode::kMax ? v1::RetentionPolicy::MODE_MAX
                                                  : v1::RetentionPolicy::MODE_MIN);
  out.set_keep_missing_metric(r.missing_metric == policy::MissingMetric::kKeep);
  out.set_keep_time_interval_seconds(r.keep_time_interval_seconds);
  out.set_keep_time_window_seconds(r.keep_time_window_seconds);
  out.set_max_bytes(r.max_bytes);
  return out;
}

policy::Schedule FromProto(const v1::Schedule& s) {
  return {.every_steps = s.every_steps(),
          .every_seconds = s.every_seconds(),
          .at_steps = {s.at_steps().begin(), s.at_steps().end()},
          .final_on_close = !s.has_final_on_close() || s.final_on_close(),
          .memory_every_steps = s.memory_every_steps(),
          .memory_keep_last = s.memory_keep_last(),
          .memory_auto = s.memory_auto(),
          .memory_overhead_budget = s.memory_overhead_budget()};
}

v1::Schedule ToProto(const policy::Schedule& s) {
  v1::Schedule out;
  out.set_every_steps(s.every_steps);
  out.set_every_seconds(s.every_seconds);
  for (uint64_t step : s.at_steps) out.add_at_steps(step);
  out.set_final_on_close(s.final_on_close);
  out.set_memory_every_steps(s.memory_every_steps);
  out.set_memory_keep_last(s.memory_keep_last);
  out.set_memory_auto(s.memory_auto);
  out.set_memory_overhead_budget(s.memory_overhead_budget);
  return out;
}

void ToProto(const storage::CheckpointRecord& r, bool is_latest, v1::CheckpointInfo* out) {
  out->set_step(r.step);
  out->set_file(r.model_path);
  out->set_train_file(r.train_path);
  out->set_size_bytes(r.model_bytes);
  out->set_train_size_bytes(r.train_bytes);
  out->set_uuid(r.uuid);
  out->set_content_digest(r.content_digest);
  out->set_time_utc(r.time_utc);
  for (const auto& [k, v] : r.metrics) (*out->mutable_metrics())[k] = v;
  out->set_tensor_count(r.tensor_count);
  out->set_is_latest(is_latest);
  out->set_parent_uuid(r.parent_uuid);
  out->set_base_model_uuid(r.base_model_uuid);
  out->set_rank(r.rank);
  out->set_world_size(r.world_size);
  out->set_shared_bytes(r.shared_bytes);
  for (const auto& e : r.exports) {
    v1::ExportInfo* x = out->add_exports();
    x->set_name(e.name);
    x->set_file(e.path);
    x->set_size_bytes(e.bytes);
    x->set_uuid(e.uuid);
    x->set_profile(e.profile);
    x->set_base(e.base);
  }
}

exports::ProfileSpec FromProto(const v1::ExportProfile& p) {
  exports::ProfileSpec s;
  s.name = p.name();
  s.description = p.description();
  s.architecture = p.architecture();
  s.adapter = p.adapter();
  s.lora = p.lora();
  s.drop = {p.drop().begin(), p.drop().end()};
  s.remove_metadata = {p.remove_metadata().begin(), p.remove_metadata().end()};
  for (const auto& r : p.rename()) s.rename.push_back({r.from(), r.to()});
  for (const auto& f : p.fuse()) s.fuse.push_back({f.from(), f.order(), f.axis(), f.to()});
  for (const auto& sp : p.split())
    s.split.push_back({sp.from(), sp.axis(), {sp.to().begin(), sp.to().end()}});
  for (const auto& t : p.transform()) {
    s.transform.push_back(
        {t.match(), t.rope_permute(), t.transpose(), {t.permute().begin(), t.permute().end()}});
  }
  for (const auto& c : p.cast()) s.cast.push_back({c.match(), c.type(), c.dims()});
  for (const auto& m : p.metadata()) {
    exports::ProfileSpec::MetadataRule rule{
        m.key(), m.type(), {m.from().begin(), m.from().end()}, m.derive()};
    if (m.has_value()) rule.value = m.value();
    rule.required = !m.has_required() || m.required();
    s.metadata.push_back(std::move(rule));
  }
  return s;
}

v1::ExportProfile ToProto(const exports::ProfileSpec& s) {
  v1::ExportProfile p;
  p.set_name(s.name);
  p.set_description(s.description);
  p.set_architecture(s.architecture);
  p.set_adapter(s.adapter);
  p.set_lora(s.lora);
  for (const auto& d : s.drop) p.add_drop(d);
  for (const auto& d : s.remove_metadata) p.add_remove_metadata(d);
  for (const auto& r : s.rename) {
    auto* x = p.add_rename();
    x->set_from(r.from);
    x->set_to(r.to);
  }
  for (const auto& f : s.fuse) {
    auto* x = p.add_fuse();
    x->set_from(f.from);
    x->set_order(f.order);
    x->set_axis(f.axis);
    x->set_to(f.to);
  }
  for (const auto& sp : s.split) {
    auto* x = p.add_split();
    x->set_from(sp.from);
    x->set_axis(sp.axis);
    for (const auto& t : sp.to) x->add_to(t);
  }
  for (const auto& t : s.transform) {
    auto* x = p.add_transform();
    x->set_match(t.match);
    x->set_rope_permute(t.rope_permute);
    x->set_transpose(t.transpose);
    for (int d : t.permute) x->add_permute(d);
  }
  for (const auto& c : s.cast) {
    auto* x = p.add_cast();
    x->set_match(c.match);
    x->set_type(c.type);
    x->set_dims(c.dims);
  }
  for (const auto& m : s.metadata) {
    auto* x = p.add_metadata();
    x->set_key(m.key);
    x->set_type(m.type);
    for (const auto& f : m.from) x->add_from(f);
    x->set_derive(m.derive);
    if (m.value) x->set_value(*m.value);
    if (!m.required) x->set_required(false);
  }
  return p;
}

std::string MessageToJson(const google::protobuf::Message& m, bool pretty) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = pretty;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

void ToProto(const std::vector<policy::RetentionDecision>& plan, v1::RetentionPlan* out) {
  for (const policy::RetentionDecision& d : plan) {
    v1::RetentionDecision* p = out->add_decisions();
    p->set_step(d.step);
    p->set_keep(d.keep);
    p->set_reason(d.reason);
    p->set_bytes(d.bytes);
  }
}

}  // namespace ckptd::api
