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
