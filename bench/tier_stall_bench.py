#!/usr/bin/python3
"""What a memory step costs the trainer, in one run (medians of the rounds):

- stall: a Python trainer (shared-memory path) saves a --mib state, memory
  steps and disk steps interleaved (every_steps = 2, memory_every_steps =
  1: odd steps go to the memory tier on tmpfs, even ones to the disk), each
  save waited for before the next so neither meets backpressure; the
  trainer's stall per tier against a numpy copy of the same bytes (the one
  copy both cost).
- auto: a trainer loop whose step takes --step-ms of compute (a sleep),
  memory_auto with the default 1 % budget; after the daemon has measured
  and picked its interval, the time the loop spent in maybe_save (stall and
  the ShouldSave call every step) over the loop's time, against the budget.

  bench/tier_stall_bench.py --build build [--mib 256] [--rounds 5]
                            [--auto-mib 64] [--step-ms 200] [--auto-seconds 40]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.environ.get("CKPTD_PYTHON_LIB") or os.path.join(ROOT, "build", "python", "lib"))

import numpy as np  # noqa: E402

import ckptd  # noqa: E402
from ckptd.v1 import ckptd_pb2 as pb  # noqa: E402

MiB = 1 << 20


def make_state(mib):
    n = mib * MiB // 4 // 8
    return {f"layer{i}": np.random.default_rng(i).standard_normal(n, dtype=np.float32) for i in range(8)}


def start_daemon(build, base, memory):
    cfg = os.path.join(base, "ckptd.toml")
    with open(cfg, "w") as f:
        f.write(f'[memory]\nroot = "{memory}"\nkeep_last = 2\n[retention]\nkeep_last = 2\n')
    sock = os.path.join(base, "ckptd.sock")
    log = os.path.join(base, "daemon.log")
    proc = subprocess.Popen([os.path.join(build, "daemon", "ckptd"), "--config", cfg, "--root",
                             os.path.join(base, "runs"), "--listen", "unix:" + sock, "--http-listen", ""],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(open(log).read()[-2000:])
        time.sleep(0.05)
    return proc, ckptd.connect("unix:" + sock)


def copy_seconds(state, rounds):
    dst = {k: np.empty_like(v) for k, v in state.items()}
    out = []
    for _ in range(rounds + 1):
        t = time.perf_counter()
        for k, v in state.items():
            np.copyto(dst[k], v)
        out.append(time.perf_counter() - t)
    return statistics.median(out[1:])


def stall_rounds(client, state, rounds):
    run = client.open_run("stall", schedule={"every_steps": 2, "memory_every_steps": 1})
    stalls = {"memory": [], "disk": []}
    for step in range(1, 2 * rounds + 3):
        for v in state.values():
            v[:16] += 1
        r = run.maybe_save(step, model=state)
        run.wait()
        if step > 2:  # the first of each tier maps the arena
            stalls["memory" if step % 2 else "disk"].append(r.stall_s)
    tiers = {c.step: c.location for c in client.stub.ListCheckpoints(
        pb.ListCheckpointsRequest(run_id="stall")).checkpoints}
    assert tiers.get(2 * rounds + 1) == "memory" and tiers.get(2 * rounds + 2) == "local", tiers
    run.close()
    return {k: statistics.median(v) for k, v in stalls.items()}


def auto_loop(client, state, step_s, seconds):
    run = client.open_run("auto", schedule={"every_steps": 1000000, "memory_auto": True})
    step, spent, saves, t_start = 0, 0.0, 0, None
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        step += 1
        time.sleep(step_s)  # the step's compute
        info = client.stub.GetRun(pb.GetRunRequest(run_id="auto"))
        steady = info.measured_step_seconds > 0 and info.measured_stall_seconds > 0
        if steady and t_start is None:
            t_start, spent, saves = time.perf_counter(), 0.0, 0  # measured from here on
        t = time.perf_counter()
        r = run.maybe_save(step, model=state)
        spent += time.perf_counter() - t
        saves += r.state != "skipped"
    total = time.perf_counter() - t_start
    info = client.stub.GetRun(pb.GetRunRequest(run_id="auto"))
    run.close()
    return {"interval": info.schedule.memory_every_steps, "overhead": spent / total, "saves": saves,
            "step_s": info.measured_step_seconds, "stall_s": info.measured_stall_seconds,
            "seconds": total}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--auto-mib", type=int, default=64)
    ap.add_argument("--step-ms", type=float, default=200)
    ap.add_argument("--auto-seconds", type=float, default=40)
    args = ap.parse_args()
    if not os.path.isdir("/dev/shm"):
        print("tier_stall_bench: needs /dev/shm (tmpfs) for the memory tier; skipped")
        return
    build = os.path.abspath(args.build)
    out = os.path.join(ROOT, "bench", "out")
    base = tempfile.mkdtemp(prefix="ckptd-tier-stall-", dir=out if os.path.isdir(out) else None)
    memory = tempfile.mkdtemp(prefix="ckptd-tier-stall-", dir="/dev/shm")
    proc, client = start_daemon(build, base, memory)
    try:
        state = make_state(args.mib)
        copy_s = copy_seconds(state, args.rounds)
        stalls = stall_rounds(client, state, args.rounds)
        del state
        auto = auto_loop(client, make_state(args.auto_mib), args.step_ms / 1000, args.auto_seconds)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(memory, ignore_errors=True)
    mem, disk = stalls["memory"], stalls["disk"]
    print(f"\nMemory-tier stall, {args.mib} MiB state, {args.rounds} rounds of each tier, interleaved (medians)")
    print(f"{'':<40}{'measured':>12}{'vs':>14}{'ratio':>8}{'goal':>8}")
    print(f"{'memory step stall (ms), vs disk step':<40}{mem * 1e3:>12.1f}{disk * 1e3:>14.1f}"
          f"{mem / disk:>8.2f}{'<= 1.1':>8}{'' if mem / disk <= 1.1 else '  short'}")
    print(f"{'memory step stall (ms), vs numpy copy':<40}{mem * 1e3:>12.1f}{copy_s * 1e3:>14.1f}"
          f"{mem / copy_s:>8.2f}")
    print(f"{'disk step stall (ms), vs numpy copy':<40}{disk * 1e3:>12.1f}{copy_s * 1e3:>14.1f}"
          f"{disk / copy_s:>8.2f}")
    print(f"\nauto memory interval, {args.auto_mib} MiB state, {args.step_ms:g} ms steps, 1 % budget, "
          f"{auto['seconds']:.0f} s after the daemon's measurements")
    print(f"  measured: {auto['step_s'] * 1e3:.0f} ms per step, {auto['stall_s'] * 1e3:.1f} ms stall; "
          f"interval chosen: every {auto['interval']} steps ({auto['saves']} memory steps)")
    ok = auto["overhead"] <= 0.01
    print(f"  {'trainer time in maybe_save, vs budget':<38}{auto['overhead'] * 100:>11.2f} %{1.0:>13.2f} %"
          f"{'' if ok else '  over'}")


if __name__ == "__main__":
    main()
