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

}  // namespace ckptd::exports::internal
