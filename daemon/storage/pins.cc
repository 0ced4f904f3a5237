// Durable pin store.
#include "daemon/storage/pins.h"

#include <nlohmann/json.hpp>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/storage/file_names.h"

namespace ckptd::storage {

absl::StatusOr<PinStore> PinStore::Load(env::Env* env, const std::string& run_dir) {
  PinStore store(env, StrCat(run_dir, "/", kPinsFile));
  auto text = env::ReadWholeFile(env, store.path_);
  if (absl::IsNotFound(text.status())) return store;
  if (!text.ok()) return text.status();
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j["pins"].is_array()) {
    return absl::DataLossError(StrCat(store.path_, ": not a ckptd pins file; fix or remove it"));
  }
  for (const auto& p : j["pins"]) {
    if (!p.is_object() || !p["step"].is_number_unsigned() || !p["reason"].is_string()) {
      return absl::DataLossError(StrCat(store.path_, ": a pin lacks step or reason"));
    }
    store.pins_[p["step"].get<uint64_t>()] = p["reason"].get<std::string>();
  }
  return store;
}

const std::string* PinStore::Find(uint64_t step) const {
  auto it = pins_.find(step);
  return it == pins_.end() ? nullptr : &it->second;
}

absl::Status PinStore::Save() const {
  nlohmann::json j = {{"pins", nlohmann::json::array()}};
  for (const auto& [step, reason] : pins_)
    j["pins"].push_back({{"step", step}, {"reason", reason}});
  return env::WriteFileAtomically(env_, path_, j.dump(1) + "\n");
}

absl::Status PinStore::Pin(uint64_t step, std::string reason) {
  auto old = pins_;
  pins_[step] = std::move(reason);
  absl::Status st = Save();
  if (!st.ok()) pins_ = std::move(old);
  return st;
}

absl::Status PinStore::Unpin(uint64_t step) {
  if (!pins_.count(step)) return absl::NotFoundError(StrCat("step ", step, " is not pinned"));
  auto old = pins_;
  pins_.erase(step);
  absl::Status st = Save();
  if (!st.ok()) pins_ = std::move(old);
  return st;
}

absl::Status PinStore::Forget(uint64_t step) {
  if (!pins_.count(step)) return absl::OkStatus();
  return Unpin(step);
}

}  // namespace ckptd::storage
