// Next-token logits from llama.cpp for a GGUF model, through node-llama-cpp's
// prebuilt CPU build (nothing is compiled or downloaded).
//   node llama_logits.mjs MODEL.gguf '[1, 300, 270]' [ADAPTER.gguf]
// (with a LoRA adapter applied at scale 1) prints {"logits": [[...vocab floats after token 0...], ...]}. F32 KV cache
// and no flash attention, so an F32 model is evaluated in F32 throughout.
import {getLlama} from "node-llama-cpp";

const [modelPath, tokensJson, adapterPath] = process.argv.slice(2);
const tokens = JSON.parse(tokensJson);
const llama = await getLlama({gpu: false, build: "never", usePrebuiltBinaries: true,
                              skipDownload: true, logLevel: "error"});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const context = await model.createContext({contextSize: 64, batchSize: 64, threads: 1,
                                           flashAttention: false,
                                           experimentalKvCacheKeyType: "F32",
                                           experimentalKvCacheValueType: "F32",
                                           ...(adapterPath ? {lora: {adapters: [{filePath: adapterPath, scale: 1}]}} : {})});
const sequence = context.getSequence();
const results = await sequence.controlledEvaluate(
    tokens.map((t) => [t, {generateNext: {logits: true}}]));
const logits = results.map((r) => {
  const row = [];
  for (const [token, logit] of r.next.logits) row[token] = logit;
  return row;
});
process.stdout.write(JSON.stringify({logits}));
await context.dispose();
await model.dispose();
await llama.dispose();
