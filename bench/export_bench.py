#!/usr/bin/python3
"""Exports' cost: time from Run.save() to the durable commit of a
Llama-shaped checkpoint (Hugging Face names) alone, with an hf-llama (F32)
export and with an hf-llama-q8_0 export, interleaved round by round on one
daemon, medians. Peers from the same run: fio's O_DIRECT write of the bytes
each configuration writes (the disk's limit), and the checkpoint followed by
an offline `ckptctl export` (the separate conversion pass exports replace).

  /usr/bin/python3 bench/export_bench.py [--mib 512] [--rounds 5] [--build build]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("CKPTD_PYTHON_LIB") or os.path.join(HERE, "..", "build", "python", "lib"))
sys.path.insert(0, HERE)
MiB = 1 << 20


def llama_state(target_bytes):
    """HF-named F32 weights of a Llama with n_embd 1024, ff 2816, vocab 32000,
    as many blocks as fit `target_bytes`."""
    e, ff, vocab = 1024, 2816, 32000
    per_block = (4 * e * e + 3 * e * ff + 2 * e) * 4
    fixed = (2 * vocab * e + e) * 4
    layers = max(1, (target_bytes - fixed) // per_block)
    rng = np.random.default_rng(0)
    w = lambda *s: (rng.standard_normal(s, dtype=np.float32) * 0.02)  # noqa: E731
    st = {"model.embed_tokens.weight": w(vocab, e)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            st[p + f"self_attn.{n}.weight"] = w(e, e)
        st[p + "mlp.gate_proj.weight"] = w(ff, e)
        st[p + "mlp.up_proj.weight"] = w(ff, e)
        st[p + "mlp.down_proj.weight"] = w(e, ff)
        st[p + "input_layernorm.weight"] = np.ones(e, np.float32)
        st[p + "post_attention_layernorm.weight"] = np.ones(e, np.float32)
    st["model.norm.weight"] = np.ones(e, np.float32)
    st["lm_head.weight"] = w(vocab, e)
    md = {"hf.num_attention_heads": 16, "hf.num_key_value_heads": 16, "hf.max_position_embeddings": 2048,
          "hf.rms_norm_eps": 1e-5, "tokenizer.ggml.model": "llama"}
    from ckptd.values import Typed

    md["tokenizer.ggml.tokens"] = Typed("array", [f"t{i}" for i in range(vocab)], element="string")
    return st, md


def median(v):
    return sorted(v)[len(v) // 2]


def fio_write(directory, size, name):
    if not shutil.which("fio"):
        return None
    path = os.path.join(directory, name)
    out = subprocess.run(["fio", "--name=w", f"--filename={path}", "--rw=write", "--bs=8m", f"--size={size}",
                          "--direct=1", "--ioengine=libaio", "--iodepth=4", "--end_fsync=1",
                          "--output-format=json"], capture_output=True, text=True, check=True)
    job = json.loads(out.stdout)["jobs"][0]["write"]
    os.remove(path)
    return job["bw_bytes"] / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--build", default="build")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--only", default="", help="comma-separated: none,f32,q8_0 (profiling)")
    args = ap.parse_args()
    import ckptd
    from run_bench import start_daemon

    work = tempfile.mkdtemp(dir=args.dir or args.build, prefix="bench-exports-")
    root = os.path.join(work, "root")
    os.makedirs(root)
    state, md = llama_state(args.mib * MiB)
    size = sum(a.nbytes for a in state.values())
    proc, sock = start_daemon(args.build, root)
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain its log
    results = {"none": [], "f32": [], "q8_0": [], "offline": []}
    fio = {"ckpt": [], "ckpt+f32": [], "ckpt+q8_0": []}
    try:
        c = ckptd.connect(sock)
        runs = {
            "none": c.open_run("none", metadata=md, schedule={"every_steps": 1}, transport="shm"),
            "f32": c.open_run("f32", metadata=md, schedule={"every_steps": 1}, transport="shm",
                              exports=["hf-llama"], model=state),
            "q8_0": c.open_run("q8_0", metadata=md, schedule={"every_steps": 1}, transport="shm",
                               exports=["hf-llama-q8_0"], model=state),
        }
        if args.only:
            runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
        for r in runs.values():  # arenas created once, as a trainer's first save
            r.save(0, model=state)
            r.wait()
        q8_bytes = size * 34 // 128
        ckptctl = os.path.join(args.build, "client/cli/ckptctl")
        for step in range(1, args.rounds + 1):
            for name, r in runs.items():
                t0 = time.perf_counter()
                r.save(step, model=state)
                r.wait()
                results[name].append(time.perf_counter() - t0)
            if args.only:
                continue
            # The peer: a separate conversion after the checkpoint is durable.
            src = os.path.join(root, "none", "weights", f"step_{step}.gguf")
            out = os.path.join(work, "offline.gguf")
            t0 = time.perf_counter()
            subprocess.run([ckptctl, "export", src, "--profile", "hf-llama", "-o", out], check=True,
                           capture_output=True)
            results["offline"].append(results["none"][-1] + time.perf_counter() - t0)
            os.remove(out)
            fio["ckpt"].append(fio_write(work, size, "fio.tmp"))
            fio["ckpt+f32"].append(fio_write(work, 2 * size, "fio.tmp"))
            fio["ckpt+q8_0"].append(fio_write(work, size + q8_bytes, "fio.tmp"))
        for r in runs.values():
            r.close()
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    if args.only:
        print({k: median(v) for k, v in results.items() if v})
        return 0
    med = {k: median(v) for k, v in results.items()}
    fmed = {k: (median(v) if None not in v else None) for k, v in fio.items()}
    base = med["none"]
    print(f"exports: {size / MiB:.0f} MiB Llama-shaped checkpoint, save -> durable, median of {args.rounds}\n")
    print(f"{'configuration':<34} {'seconds':>8} {'x ckpt':>7} {'bytes written':>14} {'fio s':>7} {'x fio':>6}")
    rows = [("checkpoint alone", "none", size, "ckpt"),
            ("checkpoint + hf-llama (F32)", "f32", 2 * size, "ckpt+f32"),
            ("checkpoint + hf-llama-q8_0", "q8_0", size + q8_bytes, "ckpt+q8_0"),
            ("checkpoint, then ckptctl export", "offline", 2 * size, "ckpt+f32")]
    for label, key, nbytes, fkey in rows:
        fs = fmed[fkey] and nbytes / fmed[fkey] / 1e6
        print(f"{label:<34} {med[key]:>7.3f}s {med[key] / base:>6.2f}x {nbytes / MiB:>10.0f} MiB "
              f"{'-' if fs is None else f'{fs:.3f}':>7} {'-' if fs is None else f'{med[key] / fs:.2f}':>6}")
    print("\nx ckpt = against the checkpoint alone (goals: F32 export <= 1.6x, q8_0 <= 1.4x);"
          "\nfio s = fio's O_DIRECT sequential write of the same bytes with a final fsync (the disk);"
          "\nthe offline row is the separate pass exports replace (a second read of the checkpoint).")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/exports.json", "w") as f:
        json.dump({"bytes": size, "seconds": results, "fio_MBps": fio}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
