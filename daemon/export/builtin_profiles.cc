// The built-in profiles, as TOML: the same format a user's profile file uses
// (`ckptctl export --show-profile NAME` prints them).
#include <string_view>

namespace ckptd::exports::internal {

// Hugging Face LlamaForCausalLM (names, half-split rotary layout) to
// llama.cpp's `llama`, as convert_hf_to_gguf.py maps it.
extern const std::string_view kHfLlamaToml = R"toml(
name = "hf-llama"
description = "Hugging Face LlamaForCausalLM names and rotary layout to llama.cpp's llama"
architecture = "llama"
drop = ["model.layers.{L}.self_attn.rotary_emb.inv_freq"]

rename = [
  { from = "model.embed_tokens.weight", to = "token_embd.weight" },
  { from = "model.norm.weight", to = "output_norm.weight" },
  { from = "lm_head.weight", to = "output.weight" },
  { from = "model.layers.{L}.input_layernorm.weight", to = "blk.{L}.attn_norm.weight" },
  { from = "model.layers.{L}.self_attn.q_proj.weight", to = "blk.{L}.attn_q.weight" },
  { from = "model.layers.{L}.self_attn.k_proj.weight", to = "blk.{L}.attn_k.weight" },
  { from = "model.layers.{L}.self_attn.v_proj.weight", to = "blk.{L}.attn_v.weight" },
  { from = "model.layers.{L}.self_attn.o_proj.weight", to = "blk.{L}.attn_output.weight" },
  { from = "model.layers.{L}.post_attention_layernorm.weight", to = "blk.{L}.ffn_norm.weight" },
  { from = "model.layers.{L}.mlp.gate_proj.weight", to = "blk.{L}.ffn_gate.weight" },
  { from = "model.layers.{L}.mlp.up_proj.weight", to = "blk.{L}.ffn_up.weight" },
  { from = "model.layers.{L}.mlp.down_proj.weight", to = "blk.{L}.ffn_down.weight" },
]

# Half-split rotary (Hugging Face) to adjacent pairs (llama.cpp).
transform = [
  { match = "blk.{L}.attn_q.weight", rope_permute = "llama.attention.head_count" },
  { match = "blk.{L}.attn_k.weight", rope_permute = "llama.attention.head_count_kv" },
]

metadata = [
  { key = "llama.context_length", type = "u32", from = ["llama.context_length", "hf.max_position_embeddings"] },
  { key = "llama.embedding_length", type = "u32", derive = "dim:token_embd.weight:0" },
  { key = "llama.block_count", type = "u32", derive = "count:blk.{L}.attn_norm.weight" },
  { key = "llama.feed_forward_length", type = "u32", derive = "dim:blk.0.ffn_up.weight:1" },
  { key = "llama.attention.head_count", type = "u32", from = ["llama.attention.head_count", "hf.num_attention_heads"] },
  { key = "llama.attention.head_count_kv", type = "u32", from = ["llama.attention.head_count_kv", "hf.num_key_value_heads", "llama.attention.head_count"] },
  { key = "llama.attention.layer_norm_rms_epsilon", type = "f32", from = ["llama.attention.layer_norm_rms_epsilon", "hf.rms_norm_eps"] },
  { key = "llama.rope.freq_base", type = "f32", from = ["llama.rope.freq_base", "hf.rope_theta"], value = "10000" },
  { key = "llama.vocab_size", type = "u32", derive = "dim:token_embd.weight:1" },
]
)toml";

// ggml trainers that keep one tensor per attention head, already in
// llama.cpp's rotary layout: heads are fused per layer (q, k, v by rows,
// the output projection by columns); everything else keeps its name.
extern const std::string_view kPerHeadLlamaToml = R"toml(
name = "per-head-llama"
description = "per-head blk.N.attn_{q,k,v,output}.head_H.weight fused per layer for llama.cpp's llama"
architecture = "llama"

fuse = [
  { from = "blk.{L}.attn_q.head_{H}.weight", order = "H", axis = "rows", to = "blk.{L}.attn_q.weight" },
  { from = "blk.{L}.attn_k.head_{H}.weight", order = "H", axis = "rows", to = "blk.{L}.attn_k.weight" },
  { from = "blk.{L}.attn_v.head_{H}.weight", order = "H", axis = "rows", to = "blk.{L}.attn_v.weight" },
  { from = "blk.{L}.attn_output.head_{H}.weight", order = "H", axis = "cols", to = "blk.{L}.attn_output.weight" },
]

rename = [
  { from = "{T}.weight", to = "{T}.weight" },
  { from = "blk.{L}.{T}.weight", to = "blk.{L}.{T}.weight" },
]

metadata = [
  { key = "llama.context_length", type = "u32", from = ["llama.context_length"] },
  { key = "llama.embedding_length", type = "u32", derive = "dim:token_embd.weight:0" },
  { key = "llama.block_count", type = "u32", derive = "count:blk.{L}.attn_norm.weight" },
  { key = "llama.feed_forward_length", type = "u32", derive = "dim:blk.0.ffn_up.weight:1" },
  { key = "llama.attention.head_count", type = "u32", from = ["llama.attention.head_count"], derive = "count:blk.0.attn_q.head_{H}.weight" },
  { key = "llama.attention.head_count_kv", type = "u32", from = ["llama.attention.head_count_kv"], derive = "count:blk.0.attn_k.head_{H}.weight" },
  { key = "llama.attention.layer_norm_rms_epsilon", type = "f32", from = ["llama.attention.layer_norm_rms_epsilon"] },
  { key = "llama.rope.freq_base", type = "f32", from = ["llama.rope.freq_base"], value = "10000" },
  { key = "llama.vocab_size", type = "u32", derive = "dim:token_embd.weight:1" },
]
)toml";

// PEFT's LoRA factors on a Hugging Face LlamaForCausalLM to a llama.cpp
// LoRA adapter: PEFT's names without their "base_model.model." prefix (a
// GGUF name has at most 63 bytes; the client's name_map drops it), base
// weights as "...q_proj.base_layer.weight" or plain, factors as
// "...q_proj.lora_A.weight". As convert_lora_to_gguf.py
// writes one: A and B as PEFT holds them, B of q and k in llama.cpp's
// rotary layout; the base weights are left to the base model's export.
extern const std::string_view kHfLlamaLoraToml = R"toml(
name = "hf-llama-lora"
description = "PEFT LoRA factors of a Hugging Face Llama to a llama.cpp LoRA adapter (base weights left out)"
architecture = "llama"
adapter = "lora"
remove_metadata = ["tokenizer.*"]
drop = [
  "model.embed_tokens.weight",
  "model.norm.weight",
  "lm_head.weight",
  "model.layers.{L}.{A}.weight",
  "model.layers.{L}.{A}.{B}.weight",
  "model.layers.{L}.{A}.{B}.base_layer.weight",
  "model.layers.{L}.self_attn.rotary_emb.inv_freq",
]

rename = [
  { from = "model.layers.{L}.self_attn.q_proj.lora_A.weight", to = "blk.{L}.attn_q.weight.lora_a" },
  { from = "model.layers.{L}.self_attn.q_proj.lora_B.weight", to = "blk.{L}.attn_q.weight.lora_b" },
  { from = "model.layers.{L}.self_attn.k_proj.lora_A.weight", to = "blk.{L}.attn_k.weight.lora_a" },
  { from = "model.layers.{L}.self_attn.k_proj.lora_B.weight", to = "blk.{L}.attn_k.weight.lora_b" },
  { from = "model.layers.{L}.self_attn.v_proj.lora_A.weight", to = "blk.{L}.attn_v.weight.lora_a" },
  { from = "model.layers.{L}.self_attn.v_proj.lora_B.weight", to = "blk.{L}.attn_v.weight.lora_b" },
  { from = "model.layers.{L}.self_attn.o_proj.lora_A.weight", to = "blk.{L}.attn_output.weight.lora_a" },
  { from = "model.layers.{L}.self_attn.o_proj.lora_B.weight", to = "blk.{L}.attn_output.weight.lora_b" },
  { from = "model.layers.{L}.mlp.gate_proj.lora_A.weight", to = "blk.{L}.ffn_gate.weight.lora_a" },
  { from = "model.layers.{L}.mlp.gate_proj.lora_B.weight", to = "blk.{L}.ffn_gate.weight.lora_b" },
  { from = "model.layers.{L}.mlp.up_proj.lora_A.weight", to = "blk.{L}.ffn_up.weight.lora_a" },
  { from = "model.layers.{L}.mlp.up_proj.lora_B.weight", to = "blk.{L}.ffn_up.weight.lora_b" },
  { from = "model.layers.{L}.mlp.down_proj.lora_A.weight", to = "blk.{L}.ffn_down.weight.lora_a" },
  { from = "model.layers.{L}.mlp.down_proj.lora_B.weight", to = "blk.{L}.ffn_down.weight.lora_b" },
]

# B's rows are q's and k's output rows: the same permutation as their weights.
transform = [
  { match = "blk.{L}.attn_q.weight.lora_b", rope_permute = "llama.attention.head_count" },
  { match = "blk.{L}.attn_k.weight.lora_b", rope_permute = "llama.attention.head_count_kv" },
]

metadata = [
  { key = "llama.attention.head_count", type = "u32", from = ["llama.attention.head_count", "hf.num_attention_heads"] },
  { key = "llama.attention.head_count_kv", type = "u32", from = ["llama.attention.head_count_kv", "hf.num_key_value_heads", "llama.attention.head_count"] },
  { key = "adapter.lora.alpha", type = "f32", from = ["adapter.lora.alpha", "peft.lora_alpha"] },
]
)toml";

}  // namespace ckptd::exports::internal
