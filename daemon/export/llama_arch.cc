// The llama architecture's expected tensors (llama.cpp's LLM_ARCH_LLAMA
// loader: token_embd, output_norm, optional output, and per block the
// attention and SwiGLU feed-forward weights).
#include "daemon/export/llama_arch.h"

#include <map>

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

}  // namespace

absl::Status CheckLlama(std::span<const gguf::TensorSpec> tensors, const gguf::Metadata& md) {
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
  return absl::OkStatus();
}

}  // namespace ckptd::exports
