// The llama architecture's expected tensors (llama.cpp's LLM_ARCH_LLAMA
// loader: token_embd, output_norm, optional output, and per block the
// attention and SwiGLU feed-forward weights).
#include "daemon/export/llama_arch.h"

#include <algorithm>
#include <map>
#include <string_view>
#include <vector>

#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/export/plan.h"

namespace ckptd::exports {
namespace {

absl::StatusOr<uint64_t> Count(const gguf::Metadata& md, std::string_view key) {
  const gguf::Value* v = md.Find(key);
  if (v == nullptr) {
    return absl::InvalidArgumentError(
        StrCat("llama.cpp needs metadata '", key, "' (a u32); add it to the run's metadata"));
  }
  if (v->type() != gguf::ValueType::kU32) {
    return absl::InvalidArgumentError(StrCat("metadata '", key, "' is a ",
                                             gguf::ValueTypeName(v->type()),
                                             "; llama.cpp requires a u32"));
  }
  return *v->get_if<uint32_t>();
}

// The GGUF type llama.cpp's loader reads each key as (llama-arch.cpp's key
// names; llama-model-loader.cpp and llama-vocab.cpp check the type and
// refuse any other, e.g. "invalid gguf type for tokenizer.ggml.token_type").
// `element` is the array element type, for arrays.
struct KeyType {
  std::string_view key;
  gguf::ValueType type;
  gguf::ValueType element = gguf::ValueType::kU8;
};
using VT = gguf::ValueType;
constexpr KeyType kLlamaKeyTypes[] = {
    {"general.architecture", VT::kString},
    {"general.name", VT::kString},
    {"general.alignment", VT::kU32},
    {"general.file_type", VT::kU32},
    {"general.quantization_version", VT::kU32},
    {"llama.vocab_size", VT::kU32},
    {"llama.context_length", VT::kU32},
    {"llama.embedding_length", VT::kU32},
    {"llama.block_count", VT::kU32},
    {"llama.feed_forward_length", VT::kU32},
    {"llama.expert_count", VT::kU32},
    {"llama.expert_used_count", VT::kU32},
    {"llama.attention.head_count", VT::kU32},
    {"llama.attention.head_count_kv", VT::kU32},
    {"llama.attention.key_length", VT::kU32},
    {"llama.attention.value_length", VT::kU32},
    {"llama.attention.layer_norm_rms_epsilon", VT::kF32},
    {"llama.rope.dimension_count", VT::kU32},
    {"llama.rope.freq_base", VT::kF32},
    {"llama.rope.scale_linear", VT::kF32},
    {"llama.rope.scaling.type", VT::kString},
    {"llama.rope.scaling.factor", VT::kF32},
    {"llama.rope.scaling.original_context_length", VT::kU32},
    {"llama.rope.scaling.finetuned", VT::kBool},
    {"tokenizer.ggml.model", VT::kString},
    {"tokenizer.ggml.pre", VT::kString},
    {"tokenizer.ggml.tokens", VT::kArray, VT::kString},
    {"tokenizer.ggml.token_type", VT::kArray, VT::kI32},
    {"tokenizer.ggml.scores", VT::kArray, VT::kF32},
    {"tokenizer.ggml.merges", VT::kArray, VT::kString},
    {"tokenizer.ggml.precompiled_charsmap", VT::kArray, VT::kU8},
    {"tokenizer.ggml.bos_token_id", VT::kU32},
    {"tokenizer.ggml.eos_token_id", VT::kU32},
    {"tokenizer.ggml.eot_token_id", VT::kU32},
    {"tokenizer.ggml.eom_token_id", VT::kU32},
    {"tokenizer.ggml.unknown_token_id", VT::kU32},
    {"tokenizer.ggml.seperator_token_id", VT::kU32},
    {"tokenizer.ggml.padding_token_id", VT::kU32},
    {"tokenizer.ggml.cls_token_id", VT::kU32},
    {"tokenizer.ggml.mask_token_id", VT::kU32},
    {"tokenizer.ggml.fim_pre_token_id", VT::kU32},
    {"tokenizer.ggml.fim_suf_token_id", VT::kU32},
    {"tokenizer.ggml.fim_mid_token_id", VT::kU32},
    {"tokenizer.ggml.fim_pad_token_id", VT::kU32},
    {"tokenizer.ggml.fim_rep_token_id", VT::kU32},
    {"tokenizer.ggml.fim_sep_token_id", VT::kU32},
    {"tokenizer.ggml.add_bos_token", VT::kBool},
    {"tokenizer.ggml.add_eos_token", VT::kBool},
    {"tokenizer.ggml.add_space_prefix", VT::kBool},
    {"tokenizer.ggml.remove_extra_whitespaces", VT::kBool},
    {"tokenizer.chat_template", VT::kString},
};

std::string TypeName(gguf::ValueType type, gguf::ValueType element) {
  if (type != gguf::ValueType::kArray) return std::string(gguf::ValueTypeName(type));
  return StrCat(gguf::ValueTypeName(element), "[]");
}

// Every key llama.cpp reads has the type it reads it as.
absl::Status CheckKeyTypes(const gguf::Metadata& md) {
  for (const KeyType& k : kLlamaKeyTypes) {
    const gguf::Value* v = md.Find(k.key);
    if (v == nullptr) continue;
    const gguf::Array* arr = v->get_if<gguf::Array>();
    gguf::ValueType element = arr != nullptr ? arr->element_type : gguf::ValueType::kU8;
    if (v->type() != k.type || (arr != nullptr && element != k.element)) {
      return absl::InvalidArgumentError(
          StrCat("metadata '", k.key, "' is a ", TypeName(v->type(), element),
                 "; llama.cpp reads it as a ", TypeName(k.type, k.element),
                 " and refuses the file otherwise (give the run's metadata that type, e.g. "
                 "ckptd.Typed in Python, or convert it in the profile's [[metadata]])"));
    }
  }
  return absl::OkStatus();
}

// The per-token arrays have one entry per token; tokens are unique
// (llama.cpp asserts it). After CheckKeyTypes.
absl::Status CheckTokenizer(const gguf::Metadata& md) {
  const gguf::Value* tokens = md.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr) return absl::OkStatus();
  const auto& items = tokens->get_if<gguf::Array>()->items;
  for (std::string_view key : {"tokenizer.ggml.token_type", "tokenizer.ggml.scores"}) {
    const gguf::Value* v = md.Find(key);
    if (v != nullptr && v->get_if<gguf::Array>()->items.size() != items.size()) {
      return absl::InvalidArgumentError(
          StrCat("metadata '", key, "' has ", v->get_if<gguf::Array>()->items.size(),
                 " entries for ", items.size(), " tokens; llama.cpp needs one per token"));
    }
  }
  // Sorted views, not a tree of nodes: this runs for every save's export
  // plan, over vocabularies of 100k+ tokens.
  std::vector<std::string_view> sorted;
  sorted.reserve(items.size());
  for (const gguf::Value& item : items) sorted.push_back(*item.get_if<std::string>());
  std::sort(sorted.begin(), sorted.end());
  auto twice = std::adjacent_find(sorted.begin(), sorted.end());
  if (twice == sorted.end()) return absl::OkStatus();
  size_t again = 0;  // the index it appears at the second time
  for (int seen = 0; seen < 2; ++again) seen += *items[again].get_if<std::string>() == *twice;
  return absl::InvalidArgumentError(StrCat("metadata 'tokenizer.ggml.tokens': token ", again - 1,
                                           " (\"", *twice,
                                           "\") appears twice; llama.cpp needs each token once"));
}

}  // namespace

absl::Status CheckLlama(std::span<const gguf::TensorSpec> tensors, const gguf::Metadata& md) {
  CKPTD_TRY(CheckKeyTypes(md));
  CKPTD_ASSIGN_OR_RETURN(uint64_t n_embd, Count(md, "llama.embedding_length"));
  CKPTD_ASSIGN_OR_RETURN(uint64_t n_layer, Count(md, "llama.block_count"));
  CKPTD_ASSIGN_OR_RETURN(uint64_t n_ff, Count(md, "llama.feed_forward_length"));
  CKPTD_ASSIGN_OR_RETURN(uint64_t n_head, Count(md, "llama.attention.head_count"));
  CKPTD_TRY(Count(md, "llama.context_length").status());
  uint64_t n_head_kv = n_head;
  if (md.Find("llama.attention.head_count_kv") != nullptr) {
    CKPTD_ASSIGN_OR_RETURN(n_head_kv, Count(md, "llama.attention.head_count_kv"));
  }
  if (n_head == 0 || n_head_kv == 0 || n_embd % n_head != 0 || n_head % n_head_kv != 0) {
    return absl::InvalidArgumentError(StrCat("head counts (", n_head, " heads, ", n_head_kv,
                                             " kv heads) do not divide the embedding (", n_embd,
                                             ")"));
  }
  const gguf::Value* eps = md.Find("llama.attention.layer_norm_rms_epsilon");
  if (eps == nullptr || eps->type() != gguf::ValueType::kF32) {
    return absl::InvalidArgumentError(
        "llama.cpp needs metadata 'llama.attention.layer_norm_rms_epsilon' (an f32)");
  }
  const gguf::Value* tok_model = md.Find("tokenizer.ggml.model");
  const gguf::Value* tokens = md.Find("tokenizer.ggml.tokens");
  if (tok_model == nullptr || tokens == nullptr || tokens->get_if<gguf::Array>() == nullptr) {
    return absl::InvalidArgumentError(
        "llama.cpp needs a tokenizer: metadata 'tokenizer.ggml.model' and "
        "'tokenizer.ggml.tokens' (add them to the run's model metadata)");
  }
  const uint64_t n_vocab = tokens->get_if<gguf::Array>()->items.size();
  const uint64_t head_dim = n_embd / n_head;
  if (const gguf::Value* rope = md.Find("llama.rope.dimension_count")) {
    auto v = ConvertValue(*rope, gguf::ValueType::kU64);
    if (!v.ok() || *v->get_if<uint64_t>() != head_dim) {
      return absl::InvalidArgumentError(
          StrCat("metadata 'llama.rope.dimension_count' must equal "
                 "the head dimension ",
                 head_dim));
    }
  }
  std::map<std::string, std::vector<uint64_t>, std::less<>> want{
      {"token_embd.weight", {n_embd, n_vocab}},
      {"output_norm.weight", {n_embd}},
      {"output.weight", {n_embd, n_vocab}},
  };
  for (uint64_t l = 0; l < n_layer; ++l) {
    auto blk = [&](std::string_view name) { return StrCat("blk.", l, ".", name, ".weight"); };
    want[blk("attn_norm")] = {n_embd};
    want[blk("attn_q")] = {n_embd, n_embd};
    want[blk("attn_k")] = {n_embd, head_dim * n_head_kv};
    want[blk("attn_v")] = {n_embd, head_dim * n_head_kv};
    want[blk("attn_output")] = {n_embd, n_embd};
    want[blk("ffn_norm")] = {n_embd};
    want[blk("ffn_gate")] = {n_embd, n_ff};
    want[blk("ffn_up")] = {n_embd, n_ff};
    want[blk("ffn_down")] = {n_ff, n_embd};
  }
  for (const gguf::TensorSpec& t : tensors) {
    auto it = want.find(t.name);
    if (it == want.end()) {
      return absl::InvalidArgumentError(
          StrCat("tensor '", t.name, "' is not part of llama.cpp's llama with ", n_layer,
                 " blocks (llama.cpp refuses extra tensors: drop or rename it)"));
    }
    if (t.ne != it->second) {
      return absl::InvalidArgumentError(
          StrCat("tensor '", t.name, "' has dims [", fmt::format("{}", fmt::join(t.ne, ", ")),
                 "]; llama.cpp expects [", fmt::format("{}", fmt::join(it->second, ", ")),
                 "] from the hyperparameters and vocabulary"));
    }
    want.erase(it);
  }
  want.erase("output.weight");  // optional: tied to token_embd when absent
  if (!want.empty()) {
    return absl::InvalidArgumentError(
        StrCat("llama.cpp needs tensor '", want.begin()->first, "', which no rule produces"));
  }
  return CheckTokenizer(md);
}

absl::Status CheckLoraAdapter(std::span<const gguf::TensorSpec> tensors, const gguf::Metadata& md) {
  constexpr std::string_view kA = ".lora_a", kB = ".lora_b";
  std::map<std::string, const gguf::TensorSpec*> a, b;
  for (const gguf::TensorSpec& t : tensors) {
    const bool is_a = t.name.ends_with(kA), is_b = t.name.ends_with(kB);
    if (!is_a && !is_b) {
      return absl::InvalidArgumentError(
          StrCat("tensor '", t.name,
                 "' is not a LoRA factor: llama.cpp refuses an adapter tensor "
                 "whose name does not end in .lora_a or .lora_b"));
    }
    if (t.ne.size() != 2) {
      return absl::InvalidArgumentError(
          StrCat("LoRA factor '", t.name, "' has ", t.ne.size(), " dims; llama.cpp takes 2"));
    }
    const std::string base = t.name.substr(0, t.name.size() - kA.size());
    if (base.ends_with("_norm.weight")) {
      return absl::InvalidArgumentError(
          StrCat("LoRA factor '", t.name, "': llama.cpp skips norms' factors; drop them"));
    }
    (is_a ? a : b)[base] = &t;
  }
  if (a.empty()) return absl::InvalidArgumentError("the adapter has no LoRA factors");
  for (const auto& [base, ta] : a) {
    auto it = b.find(base);
    if (it == b.end()) {
      return absl::InvalidArgumentError(StrCat("'", base, kA, "' has no '", base, kB, "'"));
    }
    if (ta->ne[1] != it->second->ne[0]) {
      return absl::InvalidArgumentError(
          StrCat("'", base, "': lora_a's rank (ne[1] = ", ta->ne[1],
                 ") differs from lora_b's (ne[0] = ", it->second->ne[0], ")"));
    }
  }
  for (const auto& [base, tb] : b) {
    if (!a.contains(base)) {
      return absl::InvalidArgumentError(StrCat("'", base, kB, "' has no '", base, kA, "'"));
    }
  }
  const gguf::Value* alpha = md.Find("adapter.lora.alpha");
  if (alpha == nullptr || alpha->get_if<float>() == nullptr) {
    return absl::InvalidArgumentError(
        "adapter.lora.alpha: a LoRA adapter needs its alpha as an f32 (the run's metadata "
        "adapter.lora.alpha or peft.lora_alpha); llama.cpp scales by alpha / rank");
  }
  return absl::OkStatus();
}

}  // namespace ckptd::exports
