#!/usr/bin/python3
"""What a fine-tune's checkpoint costs when most of the model is frozen, in
one run: a Python trainer (shared-memory path) saves a --mib state every
step, of which 0 %, 90 % or 99 % stays unchanged, on XFS with reflink (an
image on a loop device, made here) and on the host's ext4, each once with
[storage] share_unchanged on and once off (the plain full write, the
peer). Per step after the first (medians of --steps): time from the save
call to durable (its commit) and the bytes the file system allocated
(statvfs, after a sync). Goal: a 99 %-frozen step costs <= 0.1x a full
step in time and <= 0.05x in bytes, the hash pass included.

  bench/finetune_bench.py --build build [--mib 256] [--steps 6]   (root)
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
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

import numpy as np  # noqa: E402

import ckptd  # noqa: E402

MiB = 1 << 20
TENSORS = 100


def used(path):
    s = os.statvfs(path)
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def one(binary, base, mib, frozen, share, steps):
    """Medians over steps 2..N: (seconds to durable, bytes allocated)."""
    d = tempfile.mkdtemp(dir=base)
    cfg = os.path.join(d, "c.toml")
    with open(cfg, "w") as f:
        f.write(f"[storage]\nshare_unchanged = {'true' if share else 'false'}\n")
    sock = os.path.join(d, "s")
    proc = subprocess.Popen([binary, "--root", os.path.join(d, "runs"), "--listen", "unix:" + sock,
                             "--http-listen", "", "--config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("ckptd did not start")
            time.sleep(0.02)
        n = mib * MiB // 4 // TENSORS
        state = {f"t{i:03d}": np.random.default_rng(i).standard_normal(n, dtype=np.float32)
                 for i in range(TENSORS)}
        changing = list(state)[int(round(TENSORS * frozen)):]
        run = ckptd.connect("unix:" + sock).open_run("ft", schedule={"every_steps": 1})
        times, sizes = [], []
        for step in range(1, steps + 1):
            for k in changing:
                state[k] += 1.0
            os.sync()
            before = used(d)
            t0 = time.perf_counter()
            run.save(step, model=state)
            run.wait()
            seconds = time.perf_counter() - t0
            os.sync()
            if step > 1:
                times.append(seconds)
                sizes.append(used(d) - before)
        run.close()
        return statistics.median(times), statistics.median(sizes)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    binary = os.path.join(ROOT, args.build, "daemon", "ckptd")
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        print("finetune_bench: needs root and xfsprogs (a loop-mounted XFS); skipped")
        return 0
    work = tempfile.mkdtemp(prefix="ckft-")
    image, mnt = os.path.join(work, "xfs.img"), os.path.join(work, "xfs")
    os.makedirs(mnt)
    with open(image, "wb") as f:  # allocated up front: no holes for the loop device to fill
        os.posix_fallocate(f.fileno(), 0, (args.mib * 4 + 1024) * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", image], check=True, timeout=60)
    subprocess.run(["mount", "-o", "loop", image, mnt], check=True, timeout=60)
    ext4 = os.path.join(work, "ext4")
    os.makedirs(ext4)
    rows = []
    try:
        for fs, base in (("xfs-reflink", mnt), ("ext4", ext4)):
            one(binary, base, args.mib, 0.0, False, 2)  # warm-up: the file system's first files
            for frozen in (0.0, 0.9, 0.99):
                # Interleaved: the plain write, then sharing, on the same file system.
                plain = one(binary, base, args.mib, frozen, False, args.steps)
                shared = one(binary, base, args.mib, frozen, True, args.steps)
                rows.append((fs, frozen, plain, shared))
    finally:
        subprocess.run(["umount", mnt], timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfine-tune checkpoints: {args.mib} MiB state in {TENSORS} tensors, shm path, "
          f"medians of steps 2..{args.steps}")
    print(f"{'file system':<12} {'frozen':>6} | {'plain s':>8} {'plain MB':>9} | {'shared s':>8} "
          f"{'shared MB':>9} | {'time x':>7} {'bytes x':>7}")
    for fs, frozen, (pt, pb), (st, sb) in rows:
        print(f"{fs:<12} {frozen:>6.0%} | {pt:>8.3f} {pb / 1e6:>9.1f} | {st:>8.3f} {sb / 1e6:>9.1f} | "
              f"{st / pt:>7.3f} {sb / pb if pb else 0:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
