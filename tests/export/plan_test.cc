// Export planning: consumption, fuse/split checks, metadata resolution and
// types, the llama tensor set, and the write order.
#include "daemon/export/plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/base/strings.h"

namespace ckptd::exports {
namespace {

using gguf::TensorSpec;
using gguf::TensorType;
using gguf::Value;
using ::testing::HasSubstr;

constexpr uint64_t kE = 64, kFf = 128, kVocab = 40, kHeads = 4, kKv = 2, kHead = kE / kHeads;

gguf::Metadata HfMetadata() {
  gguf::Metadata md;
  md.Set("hf.num_attention_heads", Value(uint32_t{kHeads}));
  md.Set("hf.num_key_value_heads", Value(uint32_t{kKv}));
  md.Set("hf.max_position_embeddings", Value(uint32_t{256}));
  md.Set("hf.rms_norm_eps", Value(1e-5f));
  md.Set("tokenizer.ggml.model", Value("llama"));
  std::vector<Value> tokens;
  for (uint64_t i = 0; i < kVocab; ++i) tokens.push_back(Value::String(StrCat("t", i)));
  md.Set("tokenizer.ggml.tokens", Value::MakeArray(gguf::ValueType::kString, tokens));
  return md;
}

std::vector<TensorSpec> HfTensors(int layers = 1) {
  std::vector<TensorSpec> t{{"model.embed_tokens.weight", TensorType::kF32, {kE, kVocab}}};
  for (int l = 0; l < layers; ++l) {
    std::string p = StrCat("model.layers.", l, ".");
    t.push_back({p + "input_layernorm.weight", TensorType::kF32, {kE}});
    t.push_back({p + "self_attn.q_proj.weight", TensorType::kF32, {kE, kE}});
    t.push_back({p + "self_attn.k_proj.weight", TensorType::kF32, {kE, kKv * kHead}});
    t.push_back({p + "self_attn.v_proj.weight", TensorType::kF32, {kE, kKv * kHead}});
    t.push_back({p + "self_attn.o_proj.weight", TensorType::kF32, {kE, kE}});
    t.push_back({p + "self_attn.rotary_emb.inv_freq", TensorType::kF32, {kHead / 2}});
    t.push_back({p + "post_attention_layernorm.weight", TensorType::kF32, {kE}});
    t.push_back({p + "mlp.gate_proj.weight", TensorType::kBF16, {kE, kFf}});
    t.push_back({p + "mlp.up_proj.weight", TensorType::kBF16, {kE, kFf}});
    t.push_back({p + "mlp.down_proj.weight", TensorType::kBF16, {kFf, kE}});
  }
  t.push_back({"model.norm.weight", TensorType::kF32, {kE}});
  t.push_back({"lm_head.weight", TensorType::kF32, {kE, kVocab}});
  return t;
}

Profile Builtin(std::string_view name) { return *CompileProfile(*BuiltinProfile(name)); }

const OutputRecipe* Find(const ExportPlan& p, std::string_view name) {
  for (const auto& r : p.outputs) {
    if (r.out.name == name) return &r;
  }
  return nullptr;
}

TEST(PlanTest, HfLlamaMapsNamesPermutesQkAndDerivesHyperparameters) {
  auto plan = PlanExport(Builtin("hf-llama-q8_0"), "", HfTensors(2), HfMetadata(), "1.2.3");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->name, "hf-llama-q8_0");
  EXPECT_EQ(plan->outputs.size(), 2 + 2 * 9 + 1u);  // inv_freq dropped
  const OutputRecipe* q = Find(*plan, "blk.1.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->rope_heads, kHeads);
  EXPECT_EQ(q->out.type, TensorType::kQ8_0);
  EXPECT_EQ(Find(*plan, "blk.0.attn_k.weight")->rope_heads, kKv);
  EXPECT_EQ(Find(*plan, "blk.0.attn_v.weight")->rope_heads, 0u);
  EXPECT_EQ(Find(*plan, "blk.0.attn_norm.weight")->out.type, TensorType::kF32);  // 1-D stays F32
  EXPECT_EQ(Find(*plan, "blk.0.ffn_up.weight")->element_type, TensorType::kBF16);
  const gguf::Metadata& md = plan->metadata;
  EXPECT_EQ(*md.Find("general.architecture"), Value("llama"));
  EXPECT_EQ(*md.Find("llama.block_count"), Value(uint32_t{2}));
  EXPECT_EQ(*md.Find("llama.embedding_length"), Value(uint32_t{kE}));
  EXPECT_EQ(*md.Find("llama.feed_forward_length"), Value(uint32_t{kFf}));
  EXPECT_EQ(*md.Find("llama.attention.head_count_kv"), Value(uint32_t{kKv}));
  EXPECT_EQ(*md.Find("llama.attention.layer_norm_rms_epsilon"), Value(1e-5f));
  EXPECT_EQ(*md.Find("llama.rope.freq_base"), Value(10000.0f));  // the default
  EXPECT_EQ(*md.Find("general.file_type"), Value(uint32_t{7}));  // MOSTLY_Q8_0
  EXPECT_EQ(*md.Find("general.quantization_version"), Value(uint32_t{2}));
  EXPECT_EQ(*md.Find(kKeyExportDaemonVersion), Value("1.2.3"));
  EXPECT_NE(md.Find(kKeySourceUuid), nullptr);
  // Written in arrival order: an output goes out when its last source lands.
  for (size_t i = 1; i < plan->outputs.size(); ++i) {
    EXPECT_LE(plan->outputs[i - 1].ready_after, plan->outputs[i].ready_after);
  }
  EXPECT_FALSE(plan->source_used[6]);  // the rotary cache
}

// One tensor split into 20,000 outputs would turn an 86 KB checkpoint into an
// 83 MB export (a header entry and padding each): refused, naming the bound.
TEST(PlanTest, AnExportIsBoundedByItsSources) {
  ProfileSpec spec{.name = "many"};
  for (int part = 0; part < 40; ++part) {
    ProfileSpec::Split s{.from = StrCat("w", part), .axis = "rows"};
    for (int i = 0; i < 50; ++i) s.to.push_back(StrCat("w", part, ".", i));
    spec.split.push_back(std::move(s));
  }
  auto profile = CompileProfile(spec);
  ASSERT_TRUE(profile.ok()) << profile.status();
  std::vector<TensorSpec> sources;
  for (int part = 0; part < 40; ++part)
    sources.push_back({StrCat("w", part), TensorType::kF32, {4, 50}});
  auto plan = PlanExport(*profile, "", sources, {}, "test");
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(),
              HasSubstr("2000 output tensors from 40 source tensors; an export may have at most 4 "
                        "per source tensor + 64 (224)"));
  spec.split.resize(3);  // 150 outputs, the other 37 sources dropped: under 224
  for (int part = 3; part < 40; ++part) spec.drop.push_back(StrCat("w", part));
  auto fewer = PlanExport(*CompileProfile(spec), "", sources, {}, "test");
  EXPECT_TRUE(fewer.ok()) << fewer.status();
}

TEST(PlanTest, EverySourceIsConsumedExactlyOnce) {
  auto tensors = HfTensors();
  tensors.push_back({"model.layers.0.extra", TensorType::kF32, {4}});
  auto plan = PlanExport(Builtin("hf-llama"), "", tensors, HfMetadata(), "v");
  EXPECT_THAT(plan.status().message(),
              HasSubstr("source tensor 'model.layers.0.extra' is not consumed"));

  auto spec = *BuiltinProfile("hf-llama");
  spec.drop.push_back("model.norm.weight");
  plan = PlanExport(*CompileProfile(spec), "", HfTensors(), HfMetadata(), "v");
  EXPECT_THAT(plan.status().message(), HasSubstr("'model.norm.weight' is consumed twice"));
}

// A LoRA fine-tune's checkpoint: the base (q's weight as PEFT's
// base_layer) and rank-4 factors on q.
std::vector<TensorSpec> LoraTensors() {
  auto t = HfTensors();
  for (TensorSpec& s : t) {
    if (s.name == "model.layers.0.self_attn.q_proj.weight")
      s.name = "model.layers.0.self_attn.q_proj.base_layer.weight";
  }
  t.push_back({"model.layers.0.self_attn.q_proj.lora_A.weight", TensorType::kF32, {kE, 4}});
  t.push_back({"model.layers.0.self_attn.q_proj.lora_B.weight", TensorType::kF32, {4, kE}});
  return t;
}

TEST(PlanTest, ALoraAdapterHasOnlyPairedFactorsItsAlphaAndTheAdapterKeys) {
  gguf::Metadata md = HfMetadata();
  md.Set("peft.lora_alpha", Value(8.0f));
  auto plan = PlanExport(Builtin("hf-llama-lora"), "", LoraTensors(), md, "v");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->outputs.size(), 2u);
  EXPECT_NE(Find(*plan, "blk.0.attn_q.weight.lora_a"), nullptr);
  const OutputRecipe* b = Find(*plan, "blk.0.attn_q.weight.lora_b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->rope_heads, kHeads) << "B of q gets the rotary permutation of q";
  EXPECT_EQ(*plan->metadata.Find("general.type")->get_if<std::string>(), "adapter");
  EXPECT_EQ(*plan->metadata.Find("adapter.type")->get_if<std::string>(), "lora");
  EXPECT_EQ(*plan->metadata.Find("adapter.lora.alpha")->get_if<float>(), 8.0f);
  EXPECT_EQ(plan->metadata.Find("tokenizer.ggml.tokens"), nullptr);

  // No alpha: llama.cpp would scale by 0.
  EXPECT_THAT(
      PlanExport(Builtin("hf-llama-lora"), "", LoraTensors(), HfMetadata(), "v").status().message(),
      HasSubstr("adapter.lora.alpha"));
  // A factor without its partner, or ranks that disagree.
  auto lone = LoraTensors();
  lone.pop_back();
  EXPECT_THAT(PlanExport(Builtin("hf-llama-lora"), "", lone, md, "v").status().message(),
              HasSubstr("'blk.0.attn_q.weight.lora_a' has no 'blk.0.attn_q.weight.lora_b'"));
  auto ranks = LoraTensors();
  ranks.back().ne = {8, kE};
  EXPECT_THAT(PlanExport(Builtin("hf-llama-lora"), "", ranks, md, "v").status().message(),
              HasSubstr("rank"));
}

TEST(PlanTest, AMergedExportFoldsEachFactorPairIntoItsBaseWeight) {
  gguf::Metadata md = HfMetadata();
  md.Set("peft.lora_alpha", Value(8.0f));
  auto t = LoraTensors();
  auto plan = PlanExport(Builtin("hf-llama-lora-merged-f16"), "", t, md, "v");
  ASSERT_TRUE(plan.ok()) << plan.status();
  const OutputRecipe* q = Find(*plan, "blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_TRUE(q->merge_lora);
  ASSERT_EQ(q->sources.size(), 3u);
  EXPECT_EQ(t[q->sources[0]].name, "model.layers.0.self_attn.q_proj.base_layer.weight");
  EXPECT_EQ(t[q->sources[1]].name, "model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(t[q->sources[2]].name, "model.layers.0.self_attn.q_proj.lora_B.weight");
  EXPECT_EQ(q->lora_scale, 2.0f) << "alpha 8 / rank 4";
  EXPECT_EQ(q->element_type, TensorType::kF32);
  EXPECT_EQ(q->out.type, TensorType::kF16);
  EXPECT_EQ(q->rope_heads, kHeads);
  EXPECT_EQ(q->ready_after, t.size() - 1) << "written once B has arrived";
  EXPECT_FALSE(Find(*plan, "blk.0.attn_k.weight")->merge_lora);
  EXPECT_EQ(*plan->metadata.Find("ckpt.export.lora_merged")->get_if<uint32_t>(), 1u);
  EXPECT_EQ(plan->outputs.size(),
            PlanExport(Builtin("hf-llama"), "", HfTensors(), md, "v")->outputs.size())
      << "the same tensors as the model without LoRA";

  // The base export leaves the factors out and reads base_layer as the weight.
  auto base = PlanExport(Builtin("hf-llama-lora-base"), "", t, md, "v");
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_FALSE(Find(*base, "blk.0.attn_q.weight")->merge_lora);
  EXPECT_EQ(Find(*base, "blk.0.attn_q.weight")->sources.size(), 1u);

  // No alpha, a lone factor, no base weight, two base weights, wrong shapes.
  EXPECT_THAT(
      PlanExport(Builtin("hf-llama-lora-merged"), "", t, HfMetadata(), "v").status().message(),
      HasSubstr("peft.lora_alpha"));
  auto lone = t;
  lone.pop_back();
  EXPECT_THAT(PlanExport(Builtin("hf-llama-lora-merged"), "", lone, md, "v").status().message(),
              HasSubstr("has no partner 'model.layers.0.self_attn.q_proj.lora_B.weight'"));
  auto orphan = t;
  orphan[2].name = "model.layers.0.self_attn.q_proj.elsewhere.weight";
  EXPECT_THAT(PlanExport(Builtin("hf-llama-lora-merged"), "", orphan, md, "v").status().message(),
              HasSubstr("have no base weight"));
  auto both = t;
  both.push_back({"model.layers.0.self_attn.q_proj.weight", TensorType::kF32, {kE, kE}});
  EXPECT_THAT(PlanExport(Builtin("hf-llama-lora-merged"), "", both, md, "v").status().message(),
              HasSubstr("two base weights"));
  auto shapes = t;
  shapes.back().ne = {4, kE / 2};
  EXPECT_THAT(PlanExport(Builtin("hf-llama-lora-merged"), "", shapes, md, "v").status().message(),
              HasSubstr("cannot merge LoRA into"));
  // Without a lora mode, a factor is a tensor no rule consumes: the error says what to use.
  EXPECT_THAT(PlanExport(Builtin("hf-llama"), "", t, md, "v").status().message(),
              HasSubstr("'model.layers.0.self_attn.q_proj.base_layer.weight' is not consumed"));
  EXPECT_THAT(PlanExport(Builtin("hf-llama"), "", t, md, "v").status().message(),
              HasSubstr("hf-llama-lora-merged"));
}

TEST(PlanTest, AnAdapterLinksToTheBaseExportOfItsPass) {
  gguf::Metadata md = HfMetadata();
  md.Set("peft.lora_alpha", Value(8.0f));
  md.Set("general.base_model.count", Value(uint32_t{1}));
  md.Set("general.base_model.0.uuid", Value::String("run-base"));
  auto t = LoraTensors();
  std::vector<ExportPlan> plans;
  for (std::string_view p : {"hf-llama-lora", "hf-llama-lora-merged", "hf-llama-lora-base-f16"}) {
    auto plan = PlanExport(Builtin(p), "", t, md, "v");
    ASSERT_TRUE(plan.ok()) << plan.status();
    plans.push_back(std::move(*plan));
  }
  LinkAdapters(&plans);
  ASSERT_EQ(plans.size(), 3u);
  EXPECT_EQ(plans[0].name, "hf-llama-lora-merged");
  EXPECT_EQ(plans[1].name, "hf-llama-lora-base-f16");
  EXPECT_EQ(plans[2].name, "hf-llama-lora") << "adapters after their bases";
  EXPECT_EQ(plans[2].base_export, "hf-llama-lora-base-f16") << "not the merged model";
  EXPECT_EQ(*plans[2].metadata.Find("ckpt.export.base")->get_if<std::string>(),
            "hf-llama-lora-base-f16");
  EXPECT_NE(*plans[2].metadata.Find("general.base_model.0.uuid")->get_if<std::string>(), "run-base")
      << "a slot for the base export's uuid";
  EXPECT_TRUE(plans[0].base_export.empty());

  // Without a base in the pass, the adapter keeps the run's base model.
  std::vector<ExportPlan> alone;
  alone.push_back(*PlanExport(Builtin("hf-llama-lora"), "", t, md, "v"));
  LinkAdapters(&alone);
  EXPECT_TRUE(alone[0].base_export.empty());
  EXPECT_EQ(*alone[0].metadata.Find("general.base_model.0.uuid")->get_if<std::string>(),
            "run-base");
}

TEST(PlanTest, LlamaTensorSetIsChecked) {
  // No lm_head: output.weight is optional (tied embeddings).
  auto tensors = HfTensors();
  tensors.pop_back();
  EXPECT_TRUE(PlanExport(Builtin("hf-llama"), "", tensors, HfMetadata(), "v").ok());
  // A missing norm is named.
  tensors = HfTensors();
  tensors.erase(tensors.begin() + 7);  // post_attention_layernorm
  EXPECT_THAT(PlanExport(Builtin("hf-llama"), "", tensors, HfMetadata(), "v").status().message(),
              HasSubstr("needs tensor 'blk.0.ffn_norm.weight'"));
  // A k projection sized for all heads while the metadata says 2 kv heads.
  tensors = HfTensors();
  tensors[3].ne = {kE, kE};
  EXPECT_THAT(
      PlanExport(Builtin("hf-llama"), "", tensors, HfMetadata(), "v").status().message(),
      HasSubstr("tensor 'blk.0.attn_k.weight' has dims [64, 64]; llama.cpp expects [64, 32]"));
  // No tokenizer.
  gguf::Metadata md = HfMetadata();
  md.Remove("tokenizer.ggml.tokens");
  EXPECT_THAT(PlanExport(Builtin("hf-llama"), "", HfTensors(), md, "v").status().message(),
              HasSubstr("tokenizer"));
  // A head count the metadata lacks, and one of the wrong type.
  md = HfMetadata();
  md.Remove("hf.num_attention_heads");
  EXPECT_THAT(PlanExport(Builtin("hf-llama"), "", HfTensors(), md, "v").status().message(),
              HasSubstr("'llama.attention.head_count' needs one of"));
  md = HfMetadata();
  md.Set("hf.num_attention_heads", Value(-4));
  EXPECT_THAT(PlanExport(Builtin("hf-llama"), "", HfTensors(), md, "v").status().message(),
              HasSubstr("does not fit a u32"));
}

// Keys llama.cpp reads with one GGUF type: any other is refused at planning,
// naming the key, its type and llama.cpp's.
TEST(PlanTest, LlamaKeysMustHaveTheTypesLlamaCppReads) {
  auto refused = [](gguf::Metadata md) {
    return std::string(
        PlanExport(Builtin("hf-llama"), "", HfTensors(), md, "v").status().message());
  };
  std::vector<Value> types(kVocab, Value(int32_t{1}));
  std::vector<Value> scores(kVocab, Value(0.5f));
  gguf::Metadata md = HfMetadata();
  md.Set("tokenizer.ggml.token_type", Value::MakeArray(gguf::ValueType::kI32, types));
  md.Set("tokenizer.ggml.scores", Value::MakeArray(gguf::ValueType::kF32, scores));
  md.Set("tokenizer.ggml.bos_token_id", Value(uint32_t{1}));
  md.Set("tokenizer.ggml.add_bos_token", Value(true));
  md.Set("llama.rope.freq_base", Value(10000.0f));
  EXPECT_TRUE(PlanExport(Builtin("hf-llama"), "", HfTensors(), md, "v").ok());

  gguf::Metadata bad = md;  // token types as u32: "invalid gguf type" in llama.cpp
  std::vector<Value> u32_types(kVocab, Value(uint32_t{1}));
  bad.Set("tokenizer.ggml.token_type", Value::MakeArray(gguf::ValueType::kU32, u32_types));
  EXPECT_THAT(refused(bad), HasSubstr("metadata 'tokenizer.ggml.token_type' is a u32[]; llama.cpp "
                                      "reads it as a i32[]"));
  bad = md;
  bad.Set("tokenizer.ggml.scores", Value::MakeArray(gguf::ValueType::kF64, {Value(0.5)}));
  EXPECT_THAT(refused(bad), HasSubstr("'tokenizer.ggml.scores' is a f64[]"));
  bad = md;
  bad.Set("tokenizer.ggml.bos_token_id", Value(int32_t{1}));
  EXPECT_THAT(refused(bad), HasSubstr("'tokenizer.ggml.bos_token_id' is a i32; llama.cpp reads it "
                                      "as a u32"));
  bad = md;
  bad.Set("tokenizer.ggml.add_bos_token", Value(uint8_t{1}));
  EXPECT_THAT(refused(bad), HasSubstr("'tokenizer.ggml.add_bos_token' is a u8"));
  bad = md;
  bad.Set("llama.rope.scaling.factor", Value(2.0));  // a key the profile passes through
  EXPECT_THAT(refused(bad),
              HasSubstr("'llama.rope.scaling.factor' is a f64; llama.cpp reads it as a f32"));
  bad = md;
  bad.Set("tokenizer.ggml.model", Value(uint32_t{1}));
  EXPECT_THAT(refused(bad), HasSubstr("'tokenizer.ggml.model' is a u32"));
  // One entry per token, and each token once.
  bad = md;
  bad.Set("tokenizer.ggml.scores", Value::MakeArray(gguf::ValueType::kF32, {Value(0.5f)}));
  EXPECT_THAT(refused(bad), HasSubstr("'tokenizer.ggml.scores' has 1 entries for 40 tokens"));
  bad = md;
  std::vector<Value> tokens;
  for (uint64_t i = 0; i < kVocab; ++i) tokens.push_back(Value::String(StrCat("t", i % 39)));
  bad.Set("tokenizer.ggml.tokens", Value::MakeArray(gguf::ValueType::kString, tokens));
  EXPECT_THAT(refused(bad), HasSubstr("token 39 (\"t0\") appears twice"));
}

std::vector<TensorSpec> PerHead(uint64_t odd_head_rows = kHead) {
  std::vector<TensorSpec> t{{"token_embd.weight", TensorType::kF16, {kE, kVocab}}};
  t.push_back({"blk.0.attn_norm.weight", TensorType::kF32, {kE}});
  for (uint64_t h = 0; h < kHeads; ++h) {
    t.push_back({StrCat("blk.0.attn_q.head_", h, ".weight"),
                 TensorType::kF16,
                 {kE, h == 2 ? odd_head_rows : kHead}});
    t.push_back({StrCat("blk.0.attn_output.head_", h, ".weight"), TensorType::kF16, {kHead, kE}});
  }
  for (uint64_t h = 0; h < kKv; ++h) {
    t.push_back({StrCat("blk.0.attn_k.head_", h, ".weight"), TensorType::kF16, {kE, kHead}});
    t.push_back({StrCat("blk.0.attn_v.head_", h, ".weight"), TensorType::kF16, {kE, kHead}});
  }
  for (const char* n : {"ffn_gate", "ffn_up"}) {
    t.push_back({StrCat("blk.0.", n, ".weight"), TensorType::kF16, {kE, kFf}});
  }
  t.push_back({"blk.0.ffn_down.weight", TensorType::kF16, {kFf, kE}});
  t.push_back({"blk.0.ffn_norm.weight", TensorType::kF32, {kE}});
  t.push_back({"output_norm.weight", TensorType::kF32, {kE}});
  return t;
}

gguf::Metadata LlamaMetadata() {
  gguf::Metadata md = HfMetadata();
  md.Set("llama.context_length", Value(uint32_t{256}));
  md.Set("llama.attention.layer_norm_rms_epsilon", Value(1e-5f));
  return md;
}

TEST(PlanTest, PerHeadFusesFamiliesInHeadOrder) {
  auto tensors = PerHead();
  std::swap(tensors[2], tensors[4]);  // heads arrive out of order
  auto plan = PlanExport(Builtin("per-head-llama-f16"), "ph", tensors, LlamaMetadata(), "v");
  ASSERT_TRUE(plan.ok()) << plan.status();
  const OutputRecipe* q = Find(*plan, "blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->kind, OutputRecipe::Kind::kFuse);
  EXPECT_EQ(q->axis, 1);
  EXPECT_EQ(q->out.ne, (std::vector<uint64_t>{kE, kE}));
  EXPECT_EQ(q->sources, (std::vector<size_t>{4, 2, 6, 8}));  // heads 0..3 wherever they arrive
  EXPECT_EQ(q->ready_after, 8u);
  EXPECT_EQ(Find(*plan, "blk.0.attn_output.weight")->axis, 0);
  EXPECT_EQ(*plan->metadata.Find("llama.attention.head_count"), Value(uint32_t{kHeads}));
  EXPECT_EQ(*plan->metadata.Find("general.file_type"), Value(uint32_t{1}));  // MOSTLY_F16
  // Peak buffering is the families, not the checkpoint.
  uint64_t all = 0;
  for (const auto& t : tensors) all += *gguf::TensorBytes(t.type, t.ne);
  EXPECT_LT(plan->peak_buffer_bytes, all / 2);
}

TEST(PlanTest, FuseRefusesMismatchedOrMissingMembers) {
  auto plan = PlanExport(Builtin("per-head-llama"), "", PerHead(kHead / 2), LlamaMetadata(), "v");
  EXPECT_THAT(plan.status().message(),
              HasSubstr("fused tensor 'blk.0.attn_q.weight': member 'blk.0.attn_q.head_2.weight'"));
  auto tensors = PerHead();
  tensors.erase(tensors.begin() + 4);  // head 1 of q
  plan = PlanExport(Builtin("per-head-llama"), "", tensors, LlamaMetadata(), "v");
  EXPECT_THAT(plan.status().message(), HasSubstr("member 1 is missing"));
}

TEST(PlanTest, SplitPermuteAndCastChecks) {
  auto spec = ParseProfileToml(R"(
name = "custom"
split = [{ from = "qkv", axis = "rows", to = ["q", "k", "v"] }]
rename = [{ from = "w", to = "w" }, { from = "odd", to = "odd" }]
transform = [{ match = "w", transpose = true }]
cast = [{ match = "odd", type = "q8_0" }]
)",
                               "t");
  ASSERT_TRUE(spec.ok()) << spec.status();
  Profile p = *CompileProfile(*spec);
  std::vector<TensorSpec> t{{"qkv", TensorType::kF32, {8, 12}},
                            {"w", TensorType::kF16, {3, 5}},
                            {"odd", TensorType::kF32, {64, 2}}};
  auto plan = PlanExport(p, "", t, {}, "v");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Find(*plan, "k")->out.ne, (std::vector<uint64_t>{8, 4}));
  EXPECT_EQ(Find(*plan, "k")->part, 1u);
  EXPECT_EQ(Find(*plan, "w")->out.ne, (std::vector<uint64_t>{5, 3}));
  t[0].ne = {8, 10};
  EXPECT_THAT(PlanExport(p, "", t, {}, "v").status().message(), HasSubstr("3 equal parts"));
  t[0].ne = {8, 12};
  t[2].ne = {48, 2};
  EXPECT_THAT(PlanExport(p, "", t, {}, "v").status().message(),
              HasSubstr("'odd' [48, 2] cannot be q8_0"));
  t[2] = {"odd", TensorType::kI32, {64, 2}};
  EXPECT_THAT(PlanExport(p, "", t, {}, "v").status().message(),
              HasSubstr("is i32 and cannot be cast"));
}

TEST(PlanTest, ConvertValueLosesNothing) {
  EXPECT_EQ(*ConvertValue(Value(uint64_t{7}), gguf::ValueType::kU32), Value(uint32_t{7}));
  EXPECT_FALSE(ConvertValue(Value(uint64_t{1} << 33), gguf::ValueType::kU32).ok());
  EXPECT_FALSE(ConvertValue(Value(2.5), gguf::ValueType::kU32).ok());
  EXPECT_EQ(*ConvertValue(Value(4.0), gguf::ValueType::kU32), Value(uint32_t{4}));
  EXPECT_EQ(*ConvertValue(Value(1e-6), gguf::ValueType::kF32), Value(1e-6f));
  EXPECT_FALSE(ConvertValue(Value("4"), gguf::ValueType::kU32).ok());
}

}  // namespace
}  // namespace ckptd::exports
