"""A tiny Llama held the way trainers hold it, and an independent reference
forward pass, for checking exports in llama.cpp.

* ``hf_model()``: a torch module with Hugging Face ``LlamaForCausalLM``
  parameter names and its half-split rotary layout (what ``hf-llama`` reads).
* ``per_head_state()``: the same weights as a ggml trainer keeps them: one
  tensor per attention head, already in llama.cpp's adjacent-pair rotary
  layout (what ``per-head-llama`` reads).
* ``reference_logits()``: Hugging Face's forward pass in float64 numpy, from
  the HF-layout weights (so it shares no code or layout with llama.cpp).
* ``quantize_q8_0()``: ggml's reference quantizer (quantize_row_q8_0_ref in
  ggml-quants.c: d = amax/127, id = 1/d, q = roundf(x*id), scale stored as
  fp16) and its dequantization, to build the q8_0 reference.
* ``llama_cpp_logits()``: next-token logits from llama.cpp (node-llama-cpp's
  prebuilt CPU build) for a GGUF file.
"""

import json
import os
import subprocess

import numpy as np
import torch

from ckptd.values import Typed

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
E, N_HEAD, N_KV, FF, N_LAYER, CTX = 64, 4, 2, 128, 2, 128
HEAD = E // N_HEAD
EPS, THETA = 1e-5, 10000.0
TOKENS = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(256)] + ["\u2581w%d" % i for i in range(61)]
VOCAB = len(TOKENS)
PROMPT = [1, 300, 270, 301, 280, 290]


def metadata(hf_names=True) -> dict:
    """Model metadata a trainer sends in OpenRun: a tokenizer, and the
    hyperparameters (Hugging Face config keys, or llama.* for ggml trainers)."""
    md = {
        "general.name": "tiny-llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": Typed("array", TOKENS, element="string"),
        "tokenizer.ggml.scores": Typed("array", [0.0] * VOCAB, element="f32"),
        "tokenizer.ggml.token_type": Typed("array", [2, 3, 3] + [6] * 256 + [1] * 61, element="i32"),
        "tokenizer.ggml.bos_token_id": Typed("u32", 1),
        "tokenizer.ggml.eos_token_id": Typed("u32", 2),
        "tokenizer.ggml.unknown_token_id": Typed("u32", 0),
    }
    if hf_names:
        md.update({"hf.num_attention_heads": N_HEAD, "hf.num_key_value_heads": N_KV,
                   "hf.max_position_embeddings": CTX, "hf.rms_norm_eps": Typed("f32", EPS),
                   "hf.rope_theta": Typed("f32", THETA)})
    else:
        md.update({"llama.context_length": Typed("u32", CTX),
                   "llama.attention.layer_norm_rms_epsilon": Typed("f32", EPS)})
    return md


def hf_weights(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or 1 / np.sqrt(shape[-1]))).astype(np.float32)

    def norm():
        return (1 + 0.1 * rng.standard_normal(E)).astype(np.float32)

    out = {"model.embed_tokens.weight": w(VOCAB, E, scale=1.0)}
    for layer in range(N_LAYER):
        p = f"model.layers.{layer}."
        out[p + "self_attn.q_proj.weight"] = w(E, E, scale=2 / np.sqrt(E))
        out[p + "self_attn.k_proj.weight"] = w(N_KV * HEAD, E, scale=2 / np.sqrt(E))
        out[p + "self_attn.v_proj.weight"] = w(N_KV * HEAD, E)
        out[p + "self_attn.o_proj.weight"] = w(E, E)
        out[p + "mlp.gate_proj.weight"] = w(FF, E)
        out[p + "mlp.up_proj.weight"] = w(FF, E)
        out[p + "mlp.down_proj.weight"] = w(E, FF)
        out[p + "input_layernorm.weight"] = norm()
        out[p + "post_attention_layernorm.weight"] = norm()
    out["model.norm.weight"] = norm()
    out["lm_head.weight"] = w(VOCAB, E)
    return out


class _Norm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(E))


def hf_model(seed=0) -> torch.nn.Module:
    """A module whose state_dict() has LlamaForCausalLM's names (plus the
    rotary cache buffer some versions keep, which hf-llama drops)."""
    lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
    root = torch.nn.Module()
    root.model = torch.nn.Module()
    root.model.embed_tokens = torch.nn.Embedding(VOCAB, E)
    root.model.layers = torch.nn.ModuleList()
    for _ in range(N_LAYER):
        layer = torch.nn.Module()
        layer.self_attn = torch.nn.Module()
        layer.self_attn.q_proj, layer.self_attn.k_proj = lin(E, E), lin(E, N_KV * HEAD)
        layer.self_attn.v_proj, layer.self_attn.o_proj = lin(E, N_KV * HEAD), lin(E, E)
        layer.self_attn.rotary_emb = torch.nn.Module()
        layer.self_attn.rotary_emb.register_buffer(
            "inv_freq", torch.tensor(1.0 / THETA ** (np.arange(0, HEAD, 2) / HEAD), dtype=torch.float32))
        layer.mlp = torch.nn.Module()
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj = lin(E, FF), lin(E, FF), lin(FF, E)
        layer.input_layernorm, layer.post_attention_layernorm = _Norm(), _Norm()
        root.model.layers.append(layer)
    root.model.norm = _Norm()
    root.lm_head = lin(E, VOCAB)
    weights = hf_weights(seed)
    with torch.no_grad():
        for name, t in root.state_dict().items():
            if name in weights:
                t.copy_(torch.from_numpy(weights[name]))
    return root


def rope_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (half-split -> adjacent pairs)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def per_head_state(seed=0) -> dict[str, np.ndarray]:
    """The same model as a ggml trainer holds it: llama.cpp names, llama.cpp's
    rotary layout, q/k/v split per head by rows and the output projection by
    columns."""
    hf = hf_weights(seed)
    out = {"token_embd.weight": hf["model.embed_tokens.weight"]}
    for layer in range(N_LAYER):
        p, b = f"model.layers.{layer}.", f"blk.{layer}."
        q = rope_permute(hf[p + "self_attn.q_proj.weight"], N_HEAD)
        k = rope_permute(hf[p + "self_attn.k_proj.weight"], N_KV)
        v = hf[p + "self_attn.v_proj.weight"]
        o = hf[p + "self_attn.o_proj.weight"]
        out[b + "attn_norm.weight"] = hf[p + "input_layernorm.weight"]
        for h in range(N_HEAD):
            out[b + f"attn_q.head_{h}.weight"] = np.ascontiguousarray(q[h * HEAD:(h + 1) * HEAD])
            out[b + f"attn_output.head_{h}.weight"] = np.ascontiguousarray(o[:, h * HEAD:(h + 1) * HEAD])
        for h in range(N_KV):
            out[b + f"attn_k.head_{h}.weight"] = np.ascontiguousarray(k[h * HEAD:(h + 1) * HEAD])
            out[b + f"attn_v.head_{h}.weight"] = np.ascontiguousarray(v[h * HEAD:(h + 1) * HEAD])
        out[b + "ffn_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
        out[b + "ffn_gate.weight"] = hf[p + "mlp.gate_proj.weight"]
        out[b + "ffn_up.weight"] = hf[p + "mlp.up_proj.weight"]
        out[b + "ffn_down.weight"] = hf[p + "mlp.down_proj.weight"]
    out["output_norm.weight"] = hf["model.norm.weight"]
    out["output.weight"] = hf["lm_head.weight"]
    return out


def _fp16_bits_to_f32(bits):
    return bits.view(np.float16).astype(np.float32)


def quantize_q8_0(x: np.ndarray):
    """ggml's quantize_row_q8_0_ref over rows of 32: (fp16 scale bits, int8 quants)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (blocks * inv[:, None]).astype(np.float32)
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # C roundf
    return d.astype(np.float16).view(np.uint16), q


def dequantize_q8_0(x: np.ndarray) -> np.ndarray:
    scale, q = quantize_q8_0(x)
    return (q.astype(np.float32) * _fp16_bits_to_f32(scale)[:, None]).reshape(x.shape)


def quantize_activations_q8_0(x: np.ndarray) -> np.ndarray:
    """What ggml's CPU matmul does to the F32 input of a Q8_0 weight: Q8_0
    per 32 values as its x86 quantize_row_q8_0 does (id = 127/amax, round
    half to even), dequantized again."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.round(blocks * inv[:, None]).astype(np.float32)
    return (q * _fp16_bits_to_f32(d.astype(np.float16).view(np.uint16))[:, None]).reshape(x.shape)


def reference_logits(weights: dict[str, np.ndarray], tokens=PROMPT, quantize=False) -> np.ndarray:
    """LlamaForCausalLM's forward pass (HF rotary: rotate_half), float64.
    With `quantize`, every 2-D weight goes through ggml's Q8_0 first, and
    every matmul input the way ggml quantizes activations for it."""
    def g(name):
        w = weights[name]
        if quantize and w.ndim == 2:
            w = dequantize_q8_0(w)
        return w.astype(np.float64)

    def mm(x, name):
        if quantize:
            x = quantize_activations_q8_0(x).astype(np.float64)
        return x @ g(name).T

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w

    def rotate_half(x):
        h = x.shape[-1] // 2
        return np.concatenate([-x[..., h:], x[..., :h]], -1)

    t = len(tokens)
    h = g("model.embed_tokens.weight")[tokens]
    inv = 1.0 / THETA ** (np.arange(0, HEAD, 2) / HEAD)
    freqs = np.outer(np.arange(t), inv)
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    for layer in range(N_LAYER):
        p = f"model.layers.{layer}."
        x = rms(h, g(p + "input_layernorm.weight"))
        q = mm(x, p + "self_attn.q_proj.weight").reshape(t, N_HEAD, HEAD)
        k = mm(x, p + "self_attn.k_proj.weight").reshape(t, N_KV, HEAD)
        v = mm(x, p + "self_attn.v_proj.weight").reshape(t, N_KV, HEAD)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, N_HEAD // N_KV, 1), np.repeat(v, N_HEAD // N_KV, 1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(HEAD) + np.triu(np.full((t, t), -np.inf), 1)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        h = h + mm(np.einsum("hts,shd->thd", a, v).reshape(t, E), p + "self_attn.o_proj.weight")
        x = rms(h, g(p + "post_attention_layernorm.weight"))
        gate = mm(x, p + "mlp.gate_proj.weight")
        h = h + mm((gate / (1 + np.exp(-gate))) * mm(x, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
    return mm(rms(h, g("model.norm.weight")), "lm_head.weight")


def llama_cpp_logits(path: str, tokens=PROMPT, adapter: str | None = None) -> np.ndarray:
    """Logits after each prompt token, from llama.cpp (F32 KV cache, no flash
    attention, so an F32 model is compared at F32), with `adapter` (a LoRA
    adapter file) applied at scale 1 when given."""
    out = subprocess.run(["node", os.path.join(ROOT, "tests", "interop", "llama_logits.mjs"), path,
                          json.dumps(tokens), *([adapter] if adapter else [])],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise AssertionError(f"llama.cpp could not run {path}: {out.stderr[-3000:]}")
    return np.array(json.loads(out.stdout)["logits"])
