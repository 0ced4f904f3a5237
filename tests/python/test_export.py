"""Exports through the real daemon, loaded and run by llama.cpp: a tiny Llama
saved with Hugging Face names (hf-llama) or per-head tensors
(per-head-llama), F32 and Q8_0, against an independent reference forward
pass; refusals; offline re-export; lineage."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import ckptd
import tiny_llama as tl
from ckptd import gguf as G
from ckptd.v1 import ckptd_pb2 as pb

CKPTCTL = os.environ.get("CKPTCTL_BINARY", os.path.join(tl.ROOT, "build", "client", "cli", "ckptctl"))


def weights_dir(daemon, run_id):
    return os.path.join(daemon.root, run_id, "weights")


def save_once(daemon, run_id, model, exports, metadata, step=1, **kw):
    with ckptd.connect(daemon.target) as c:
        run = c.open_run(run_id, metadata=metadata, exports=exports, model=model,
                         schedule={"every_steps": 1}, **kw)
        run.save(step, model=model)
        run.wait()
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


def _kv_type(data: bytes, key: str) -> tuple[int, int | None, int]:
    """(value type, array element type or None, offset of the value type)
    of a metadata key, read from the file's bytes (key: u64 length, bytes)."""
    k = key.encode()
    at = data.index(struct.pack("<Q", len(k)) + k) + 8 + len(k)
    vtype = struct.unpack_from("<I", data, at)[0]
    return vtype, struct.unpack_from("<I", data, at + 4)[0] if vtype == 9 else None, at


def test_a_tokenizer_given_as_plain_lists_gets_the_types_llama_cpp_reads(daemon, tmp_path):
    # The tokenizer as a trainer has it: lists of ints and floats, plain ints.
    md = {k: (list(v.value) if v.type == "array" else v.value) if isinstance(v, ckptd.Typed) else v
          for k, v in tl.metadata().items()}
    md["tokenizer.ggml.scores"] = [0] * tl.VOCAB  # ints: f32 all the same
    wd = save_once(daemon, "plain-tokenizer", tl.hf_model(), ["hf-llama"], md)
    path = os.path.join(wd, "step_1.hf-llama.gguf")
    data = open(path, "rb").read()
    I32, U32, F32, ARRAY = 5, 4, 6, 9
    assert _kv_type(data, "tokenizer.ggml.token_type")[:2] == (ARRAY, I32)
    assert _kv_type(data, "tokenizer.ggml.scores")[:2] == (ARRAY, F32)
    assert _kv_type(data, "tokenizer.ggml.bos_token_id")[:2] == (U32, None)
    got = tl.llama_cpp_logits(path)
    assert np.abs(got - tl.reference_logits(tl.hf_weights())).max() < 1e-3
    # llama.cpp itself refuses the other types: the same file with token_type
    # as u32[], or bos_token_id as an i32 (same widths: one byte patched).
    for key, patch, want in (("tokenizer.ggml.token_type", 4, "token_type"),
                             ("tokenizer.ggml.bos_token_id", 0, "bos_token_id")):
        bad = bytearray(data)
        vtype, _, at = _kv_type(data, key)
        struct.pack_into("<I", bad, at + patch, U32 if vtype == ARRAY else I32)
        (tmp_path / "bad.gguf").write_bytes(bad)
        with pytest.raises(AssertionError, match=want):
            tl.llama_cpp_logits(str(tmp_path / "bad.gguf"))
    # ... and so does ckptd, when the run opens, naming the key and both types.
    md["tokenizer.ggml.token_type"] = ckptd.Typed("array", md["tokenizer.ggml.token_type"], element="u32")
    msg = _open_error(daemon, "u32-token-types", tl.hf_weights(), ["hf-llama"], md)
    assert "metadata 'tokenizer.ggml.token_type' is a u32[]; llama.cpp reads it as a i32[]" in msg, msg
    md["tokenizer.ggml.token_type"] = [-1] + [1] * (tl.VOCAB - 1)
    md["tokenizer.ggml.bos_token_id"] = -1
    with pytest.raises(ValueError, match="'tokenizer.ggml.bos_token_id': -1 is not a u32"):
        _open_error(daemon, "negative-id", tl.hf_weights(), ["hf-llama"], md)


def test_the_first_save_is_refused_when_no_manifest_was_given(daemon):
    state = dict(tl.hf_weights())
    state["stray"] = np.zeros(4, np.float32)
    with ckptd.connect(daemon.target) as c:
        run = c.open_run("late", metadata=tl.metadata(), exports=["hf-llama"], schedule={"every_steps": 1})
        with pytest.raises(ckptd.Error) as e:
            run.save(1, model=state)
            run.wait()
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
    # A damaged source is refused by its own digests; nothing is written.
    damaged = tmp_path / "damaged.gguf"
    data = bytearray(open(os.path.join(wd, "step_1.gguf"), "rb").read())
    src = G.read_header(os.path.join(wd, "step_1.gguf"))
    data[src.data_offset + src.by_name["lm_head.weight"].offset] ^= 0x40
    damaged.write_bytes(bytes(data))
    r = subprocess.run([CKPTCTL, "export", str(damaged), "--profile", "hf-llama-q8_0", "-o",
                        str(tmp_path / "from-damaged.gguf")], capture_output=True, text=True)
    assert r.returncode != 0 and "'lm_head.weight'" in r.stderr and "digest" in r.stderr
    assert not [f for f in os.listdir(tmp_path) if "from-damaged" in f]  # no temp left either


def test_lineage_of_a_fine_tune_with_exports(tmp_path):
    """A base model (known only by uuid) -> run "pre" -> a fine-tune "ft"
    started from pre's step 2 -> ft's exports: ckptctl lineage, the HTTP
    endpoint and GetLineage all show the whole tree."""
    import urllib.request

    from conftest import Daemon, logged_port

    d = Daemon(tmp_path, ["--http-listen", "127.0.0.1:0"]).start()
    try:
        port = logged_port(d.log)
        base = "0b5e0000-0000-8000-8000-00000000ba5e"
        state = tl.hf_weights()
        with ckptd.connect(d.target) as c:
            pre = c.open_run("pre", metadata=tl.metadata(), base_model=base, schedule={"every_steps": 1})
            for step in (1, 2):
                state["lm_head.weight"][0, 0] = step  # different content, different uuid
                pre.save(step, model=state)
                pre.wait()
            pre.close()
            info = c.lineage(run_id="pre")
            pre_uuids = {n.step: n.uuid for n in info.nodes if n.kind == n.KIND_CHECKPOINT}

            def fine_tune(run_id, exports):
                run = c.open_run(run_id, metadata=tl.metadata(), base_model=pre_uuids[2], exports=exports,
                                 model=state, schedule={"every_steps": 1})
                for step in (10, 20):
                    state["lm_head.weight"][0, 1] = step
                    run.save(step, model=state)
                    run.wait()
                run.close()

            fine_tune("ft", ["hf-llama", "hf-llama-q8_0"])
            whole = c.lineage(run_id="ft")
            # A run with ft's content step for step (the same seed): equal uuids.
            fine_tune("ft-twin", ["hf-llama"])
            lane = {n.id: n for n in c.lineage(run_id="ft-twin").nodes}
        kinds = [(n.kind, n.run_id, n.step, n.name) for n in whole.nodes]
        K = whole.nodes[0].__class__
        assert (K.KIND_BASE_MODEL, "", 0, "") in kinds
        assert [(k, r, s) for k, r, s, _ in kinds if k == K.KIND_CHECKPOINT] == [
            (K.KIND_CHECKPOINT, "ft", 10), (K.KIND_CHECKPOINT, "ft", 20),
            (K.KIND_CHECKPOINT, "pre", 1), (K.KIND_CHECKPOINT, "pre", 2)]
        assert sorted((s, n) for k, r, s, n in kinds if k == K.KIND_EXPORT) == [
            (10, "hf-llama"), (10, "hf-llama-q8_0"), (20, "hf-llama"), (20, "hf-llama-q8_0")]
        by_uuid = {n.uuid: n for n in whole.nodes if n.kind != K.KIND_EXPORT}
        ft10 = next(n for n in whole.nodes if n.run_id == "ft" and n.step == 10 and n.kind == K.KIND_CHECKPOINT)
        assert ft10.parent_uuid == pre_uuids[2]                      # the branch point
        assert by_uuid[pre_uuids[1]].parent_uuid == base              # the run's root
        for n in whole.nodes:
            if n.kind == K.KIND_EXPORT:                               # exports are leaves of their checkpoint
                src = by_uuid[n.parent_uuid]
                assert (src.run_id, src.step) == (n.run_id, n.step)
                assert G.read_header(n.file).metadata["general.source.uuid"] == n.parent_uuid

        # The twin is a lane of its own, linked to ft as the same content: not
        # a fork of ft, nothing listed twice, nothing of ft in its lane.
        ft_ids = {n.id: n for n in whole.nodes}
        assert sorted(i for i in lane if i.startswith("ft-twin/")) == [
            "ft-twin/step_10", "ft-twin/step_10.hf-llama", "ft-twin/step_20", "ft-twin/step_20.hf-llama"]
        assert not any(i.startswith("ft/") for i in lane), sorted(lane)
        assert lane["ft-twin/step_20"].parent_id == "ft-twin/step_10"
        assert lane["ft-twin/step_10"].parent_id == "pre/step_2"
        assert lane["ft-twin/step_20.hf-llama"].parent_id == "ft-twin/step_20"
        assert lane["ft-twin/step_20"].uuid == ft_ids["ft/step_20"].uuid
        assert list(lane["ft-twin/step_20"].same_content) == ["ft/step_20"]
        assert list(lane["ft-twin/step_10.hf-llama"].same_content) == ["ft/step_10.hf-llama"]

        tree = subprocess.run([CKPTCTL, "lineage", "ft", f"--socket={d.target}"], capture_output=True,
                              text=True, check=True).stdout
        lines = tree.splitlines()
        assert lines[0] == f"base model {base}"
        assert any(ln.startswith("└─ pre step 1 ") for ln in lines)
        assert any("ft step 20 " in ln and "[latest]" in ln for ln in lines)
        assert sum("export hf-llama-q8_0 (hf-llama-q8_0)" in ln for ln in lines) == 2
        assert any("[latest.hf-llama]" in ln for ln in lines)
        py = subprocess.run([sys.executable, "-m", "ckptd", "--socket", d.target, "lineage", "ft"],
                            capture_output=True, text=True, env=d.env()).stdout.splitlines()
        assert py[0] == f"base model {base}" and py[1].startswith("  pre step 1 ")
        assert py[2].startswith("  pre step 2 ") and py[3].startswith("    ft step 10 ")
        assert sum(ln.strip().startswith("export hf-llama ") for ln in py) == 2
        # Focused on one export: its checkpoint and every ancestor, nothing else.
        leaf = next(n for n in whole.nodes if n.kind == K.KIND_EXPORT and n.step == 10 and n.name == "hf-llama")
        one = json.loads(subprocess.run([CKPTCTL, "lineage", leaf.uuid, "--json", f"--socket={d.target}"],
                                        capture_output=True, text=True, check=True).stdout)
        assert {(n.get("run_id", ""), int(n.get("step", 0))) for n in one["nodes"]} == {
            ("", 0), ("pre", 1), ("pre", 2), ("ft", 10), ("ft-twin", 10)}  # both files with that content

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/lineage/{pre_uuids[2]}") as r:
            http = json.loads(r.read())
        runs = {(n.get("run_id"), int(n.get("step", 0)), n.get("kind")) for n in http["nodes"]}
        assert ("ft", 20, "KIND_CHECKPOINT") in runs and ("pre", 1, "KIND_CHECKPOINT") in runs
        assert sum(1 for n in http["nodes"] if n["kind"] == "KIND_EXPORT") == 4 + 2
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/lineage/00000000-0000-8000-8000-000000000000")
            raise AssertionError("an unknown uuid must be 404")
        except urllib.error.HTTPError as e:
            assert e.code == 404 and "no file with uuid" in e.read().decode()
    finally:
        d.stop()


def test_named_profiles_from_the_daemons_profiles_dir(tmp_path):
    """[export] profiles_dir: a run names a profile the operator installed."""
    from conftest import Daemon

    pdir = tmp_path / "profiles"
    pdir.mkdir()
    (pdir / "f16-all.toml").write_text('name = "f16-all"\nrename = [{ from = "{all*}", to = "{all*}" }]\n'
                                       'cast = [{ match = "*", type = "f16" }]\n')
    cfg = tmp_path / "ckptd.toml"
    cfg.write_text(f'[export]\nprofiles_dir = "{pdir}"\n')
    d = Daemon(tmp_path, ["--config", str(cfg)]).start()
    try:
        state = {"a.b": np.arange(8, dtype=np.float32)}
        wd = save_once(d, "named", state, ["f16-all"], {})
        h = G.read_header(os.path.join(wd, "step_1.f16-all.gguf"))
        assert h.by_name["a.b"].type == G.F16
        assert h.metadata["ckpt.export.profile"] == "f16-all"
        msg = _open_error(d, "missing", state, ["not-there"], {})
        assert "not-there" in msg and str(pdir) in msg
    finally:
        d.stop()


def test_a_lora_fine_tune_exports_its_base_adapter_and_merged_model_for_llama_cpp(daemon):
    """A LoRA fine-tune (rank 4 on q and v, PEFT's names, the base frozen)
    exports with every checkpoint its frozen base (hf-llama-lora-base), a
    llama.cpp adapter (hf-llama-lora) that names that base export's uuid as
    its base model, and the merged model (hf-llama-lora-merged). llama.cpp
    running the base export with the adapter, and the merged export alone,
    both give the logits of an independent forward pass of the merged
    weights W + alpha/r * B A; the base alone visibly does not."""
    base = tl.hf_weights()
    rank, alpha = 4, 8.0
    frozen = {}
    for k, v in base.items():
        name = k  # PEFT's names without "base_model.model." (GGUF names are <= 63 bytes)
        if ".q_proj." in k or ".v_proj." in k:
            name = name.replace(".weight", ".base_layer.weight")
        frozen[name] = v
    rng = np.random.default_rng(3)
    factors = {}
    for layer in range(tl.N_LAYER):
        for proj, out in (("q_proj", tl.E), ("v_proj", tl.N_KV * tl.HEAD)):
            p = f"model.layers.{layer}.self_attn.{proj}."
            factors[p + "lora_A.weight"] = (rng.standard_normal((rank, tl.E)) * 0.3).astype(np.float32)
            factors[p + "lora_B.weight"] = np.zeros((out, rank), np.float32)
    md = {**tl.metadata(), "peft.lora_alpha": alpha}
    with ckptd.connect(daemon.target) as c:
        run = c.open_run("lora-ft", metadata=md,
                         exports=["hf-llama-lora", "hf-llama-lora-merged", "hf-llama-lora-base"],
                         model={**frozen, **factors}, schedule={"every_steps": 1})
        for step in (1, 2, 3):  # "training": B moves away from zero, A too
            for k in factors:
                factors[k] = factors[k] + (rng.standard_normal(factors[k].shape) * 0.1).astype(np.float32)
            run.save(step, model={**frozen, **factors})
        run.wait()
        run.close()
        lineage = {n.id: n for n in c.lineage(run_id="lora-ft").nodes}
    wd = weights_dir(daemon, "lora-ft")
    adapter = os.path.join(wd, "step_3.hf-llama-lora.gguf")
    base_file = os.path.join(wd, "step_3.hf-llama-lora-base.gguf")
    merged_file = os.path.join(wd, "step_3.hf-llama-lora-merged.gguf")
    h = G.read_header(adapter)
    assert h.metadata["general.type"] == "adapter" and h.metadata["adapter.type"] == "lora"
    assert h.metadata["general.architecture"] == "llama"
    assert h.metadata["adapter.lora.alpha"] == alpha
    assert sorted(t.name for t in h.tensors) == sorted(
        f"blk.{i}.attn_{p}.weight.lora_{ab}" for i in range(tl.N_LAYER) for p in "qv" for ab in "ab")
    # Lineage: the adapter names the base export of its own step as its base model.
    bh = G.read_header(base_file)
    assert h.metadata["general.base_model.count"] == 1
    assert h.metadata["general.base_model.0.uuid"] == bh.metadata["general.uuid"]
    assert h.metadata["ckpt.export.base"] == "hf-llama-lora-base"
    node = next(n for n in lineage.values() if n.name == "hf-llama-lora" and n.step == 3)
    parent = lineage[node.parent_id]
    assert (parent.name, parent.step, parent.uuid) == ("hf-llama-lora-base", 3, bh.metadata["general.uuid"])
    assert lineage[parent.parent_id].kind == pb.LineageNode.KIND_CHECKPOINT
    # The base export is the frozen base, factors left out; the merged one has none either.
    assert "blk.0.attn_q.weight.lora_a" not in bh.by_name and "blk.0.attn_q.weight" in bh.by_name
    mh = G.read_header(merged_file)
    assert mh.metadata["ckpt.export.lora_merged"] == 2 * tl.N_LAYER
    assert sorted(t.name for t in mh.tensors) == sorted(t.name for t in bh.tensors)

    merged = dict(base)
    for layer in range(tl.N_LAYER):
        for proj in ("q_proj", "v_proj"):
            k = f"model.layers.{layer}.self_attn.{proj}."
            a, b = factors[k + "lora_A.weight"], factors[k + "lora_B.weight"]
            delta = alpha / rank * (b.astype(np.float64) @ a)
            merged[k + "weight"] = (base[k + "weight"].astype(np.float64) + delta).astype(np.float32)
    ref = tl.reference_logits(merged)
    got = tl.llama_cpp_logits(base_file, adapter=adapter)
    err = np.abs(got - ref).max()
    assert err < 1e-3, f"base + adapter: max |logit - merged reference| = {err}"
    got = tl.llama_cpp_logits(merged_file)
    err = np.abs(got - ref).max()
    assert err < 1e-3, f"merged export: max |logit - merged reference| = {err}"
    plain = tl.llama_cpp_logits(base_file)
    assert np.abs(plain - ref).max() > 1e-2, "the adapter changed nothing"
