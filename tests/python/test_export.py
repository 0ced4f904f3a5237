"""Exports through the real daemon, loaded and run by llama.cpp: a tiny Llama
saved with Hugging Face names (hf-llama) or per-head tensors
(per-head-llama), F32 and Q8_0, against an independent reference forward
pass; refusals; offline re-export; lineage."""

import json
import os
import subprocess

import numpy as np
import pytest

import ckptd
import tiny_llama as tl
from ckptd import gguf as G

CKPTCTL = os.environ.get("CKPTCTL_BINARY", os.path.join(tl.ROOT, "build", "client", "cli", "ckptctl"))


def weights_dir(daemon, run_id):
    return os.path.join(daemon.root, run_id, "weights")


def save_once(daemon, run_id, model, exports, metadata, step=1, **kw):
    with ckptd.connect(daemon.target) as c:
        run = c.open_run(run_id, metadata=metadata, exports=exports, model=model,
                         schedule={"every_steps": 1}, **kw)
        run.save(step, model=model)
        run.wait(step)
        run.close()
    return weights_dir(daemon, run_id)


def test_hf_llama_export_runs_in_llama_cpp_like_the_reference(daemon):
    model = tl.hf_model()
    wd = save_once(daemon, "hf", model, ["hf-llama", "hf-llama-q8_0"], tl.metadata())
    assert sorted(f for f in os.listdir(wd) if not f.startswith(".")) == [
        "latest", "latest.hf-llama", "latest.hf-llama-q8_0", "step_1.gguf", "step_1.hf-llama-q8_0.gguf",
        "step_1.hf-llama.gguf", "step_1.train.gguf"]
    # The training checkpoint is unchanged: Hugging Face names, F32.
    ck = G.read_header(os.path.join(wd, "step_1.gguf"))
    assert "model.layers.0.self_attn.q_proj.weight" in ck.by_name
    ref = tl.reference_logits(tl.hf_weights())
    got = tl.llama_cpp_logits(os.path.join(wd, "step_1.hf-llama.gguf"))
    err = np.abs(got - ref).max()
    assert err < 1e-3, f"F32 export: max |logit - reference| = {err}"
    # Q8_0: against the reference run on ggml-quantized weights (llama.cpp
    # also quantizes activations to Q8_0 for these matmuls, hence the wider
    # bound), and much closer to it than the F32 reference is.
    qref = tl.reference_logits(tl.hf_weights(), quantize=True)
    qgot = tl.llama_cpp_logits(os.path.join(wd, "step_1.hf-llama-q8_0.gguf"))
    assert np.abs(qgot - qref).max() < 1e-3
    assert np.abs(qgot - ref).max() > 1e-2  # the quantization is real
    exp = G.read_header(os.path.join(wd, "step_1.hf-llama.gguf"))
    assert exp.metadata["general.source.uuid"] == ck.metadata["general.uuid"]
    assert exp.metadata["ckpt.export.profile"] == "hf-llama"
    assert exp.metadata["ckpt.export.profile_digest"].startswith("xxh3-128:")
    assert exp.metadata["general.uuid"] != ck.metadata["general.uuid"]


def test_without_the_rotary_permutation_llama_cpp_visibly_differs(daemon, tmp_path):
    """The same test with a profile that skips rope_permute: it must fail, so
    the check above can fail."""
    spec = subprocess.run([CKPTCTL, "export", "--show-profile", "hf-llama"], capture_output=True,
                          text=True, check=True).stdout
    body = "\n\n".join(block for block in spec.split("\n\n") if not block.startswith("[[transform]]"))
    assert "rope_permute" not in body
    body = body.replace('name = "hf-llama"', 'name = "hf-llama-norope"')
    profile = tmp_path / "norope.toml"
    profile.write_text(body)
    model = tl.hf_model()
    wd = save_once(daemon, "norope", model, [str(profile)], tl.metadata())
    got = tl.llama_cpp_logits(os.path.join(wd, "step_1.hf-llama-norope.gguf"))
    ref = tl.reference_logits(tl.hf_weights())
    assert np.abs(got[0] - ref[0]).max() < 1e-3  # position 0: rotation is the identity
    assert np.abs(got[-1] - ref[-1]).max() > 0.1


def test_per_head_export_fuses_heads_and_runs_in_llama_cpp(daemon):
    state = tl.per_head_state()
    md = tl.metadata(hf_names=False)
    wd = save_once(daemon, "ph", state, ["per-head-llama", "per-head-llama-q8_0"], md)
    ref = tl.reference_logits(tl.hf_weights())
    got = tl.llama_cpp_logits(os.path.join(wd, "step_1.per-head-llama.gguf"))
    assert np.abs(got - ref).max() < 1e-3
    qref = tl.reference_logits(tl.hf_weights(), quantize=True)
    qgot = tl.llama_cpp_logits(os.path.join(wd, "step_1.per-head-llama-q8_0.gguf"))
    assert np.abs(qgot - qref).max() < 1e-3
    exp = G.read_header(os.path.join(wd, "step_1.per-head-llama.gguf"))
    assert exp.by_name["blk.0.attn_q.weight"].ne == [tl.E, tl.E]
    assert exp.by_name["blk.0.attn_k.weight"].ne == [tl.E, tl.N_KV * tl.HEAD]
    assert exp.metadata["llama.attention.head_count"] == tl.N_HEAD  # derived: heads counted
    assert exp.metadata["llama.attention.head_count_kv"] == tl.N_KV


def _open_error(daemon, run_id, model, exports, metadata):
    with ckptd.connect(daemon.target) as c:
        with pytest.raises(ckptd.Error) as e:
            c.open_run(run_id, metadata=metadata, exports=exports, model=model)
    return str(e.value)


def test_profiles_that_do_not_fit_are_refused_when_the_run_opens(daemon, tmp_path):
    # An extra tensor no rule consumes.
    state = dict(tl.hf_weights())
    state["model.layers.0.self_attn.extra_bias"] = np.zeros(4, np.float32)
    msg = _open_error(daemon, "extra", state, ["hf-llama"], tl.metadata())
    assert "model.layers.0.self_attn.extra_bias" in msg and "not consumed" in msg
    # Fused members of different shapes.
    heads = tl.per_head_state()
    heads["blk.1.attn_q.head_2.weight"] = np.zeros((tl.HEAD // 2, tl.E), np.float32)
    msg = _open_error(daemon, "fuse", heads, ["per-head-llama"], tl.metadata(hf_names=False))
    assert "blk.1.attn_q.head_2.weight" in msg and "blk.1.attn_q.weight" in msg
    # A head count the run's metadata lacks.
    md = tl.metadata()
    del md["hf.num_attention_heads"]
    msg = _open_error(daemon, "nohead", tl.hf_weights(), ["hf-llama"], md)
    assert "llama.attention.head_count" in msg
    # A shape llama.cpp would refuse (the vocabulary disagrees with the tokenizer).
    md = tl.metadata()
    md["tokenizer.ggml.tokens"] = ckptd.Typed("array", tl.TOKENS[:-1], element="string")
    msg = _open_error(daemon, "vocab", tl.hf_weights(), ["hf-llama"], md)
    assert "token_embd.weight" in msg
    # Unknown profile names list the built-ins.
    msg = _open_error(daemon, "unknown", tl.hf_weights(), ["no-such-profile"], tl.metadata())
    assert "hf-llama-q8_0" in msg
    # Nothing was created for the refused runs' checkpoints.
    for run_id in ("extra", "fuse", "nohead", "vocab", "unknown"):
        assert not os.path.exists(weights_dir(daemon, run_id)) or not os.listdir(weights_dir(daemon, run_id))


def test_the_first_save_is_refused_when_no_manifest_was_given(daemon):
    state = dict(tl.hf_weights())
    state["stray"] = np.zeros(4, np.float32)
    with ckptd.connect(daemon.target) as c:
        run = c.open_run("late", metadata=tl.metadata(), exports=["hf-llama"], schedule={"every_steps": 1})
        with pytest.raises(ckptd.Error) as e:
            run.save(1, model=state)
            run.wait(1)
        assert "stray" in str(e.value)
        run.close()
    wd = weights_dir(daemon, "late")
    assert [f for f in os.listdir(wd) if f.startswith("step_")] == []


def test_offline_export_equals_the_one_written_at_save_time(daemon, tmp_path):
    model = tl.hf_model()
    wd = save_once(daemon, "offline", model, ["hf-llama-q8_0"], tl.metadata())
    out = tmp_path / "again.gguf"
    r = subprocess.run([CKPTCTL, "export", os.path.join(wd, "step_1.gguf"), "--profile", "hf-llama-q8_0",
                        "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    live = G.read_header(os.path.join(wd, "step_1.hf-llama-q8_0.gguf"))
    again = G.read_header(str(out))
    assert again.metadata["general.uuid"] == live.metadata["general.uuid"]
    assert again.metadata["ckpt.content_digest"] == live.metadata["ckpt.content_digest"]
    assert again.metadata["ckpt.export.profile_digest"] == live.metadata["ckpt.export.profile_digest"]
    assert again.metadata["general.source.uuid"] == live.metadata["general.source.uuid"]
    with open(os.path.join(wd, "step_1.hf-llama-q8_0.gguf"), "rb") as a, open(out, "rb") as b:
        la, lb = a.read(), b.read()
    assert la[live.data_offset:] == lb[again.data_offset:]
    # ckptctl verify checks the export's digests; the same refusal offline.
    assert subprocess.run([CKPTCTL, "verify", str(out)], capture_output=True).returncode == 0
    bad = subprocess.run([CKPTCTL, "export", os.path.join(wd, "step_1.gguf"), "--profile", "per-head-llama",
                          "-o", str(tmp_path / "bad.gguf")], capture_output=True, text=True)
    assert bad.returncode != 0 and "model.embed_tokens.weight" in bad.stderr
    assert not (tmp_path / "bad.gguf").exists()
