#!/usr/bin/python3
"""What a fine-tune's checkpoint costs when most of the model is frozen, in
one run: a PyTorch module (shared-memory path) saves a --mib state every
step, of which 0 %, 90 % or 99 % is frozen (requires_grad=False, unchanged),
on XFS with reflink (an image on a loop device made here, with direct I/O
to its backing file so writes reach the disk rather than the host's page
cache) and on the host's ext4. Each case runs three ways, interleaved: the
plain full write ([storage] share_unchanged off, the peer), sharing on,
and sharing on with open_run(seal_frozen=True). Per step after the first
(medians of --steps): time from the save call to durable (its commit) and
the bytes the file system allocated (statvfs, after a sync). Goal: a
99 %-frozen step costs <= 0.1x a full step in time and <= 0.05x in bytes,
the hash pass included.

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
sys.path.insert(0, os.environ.get("CKPTD_PYTHON_LIB") or os.path.join(ROOT, "build", "python", "lib"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ckptd  # noqa: E402

MiB = 1 << 20
TENSORS = 100


def used(path):
    s = os.statvfs(path)
    return (s.f_blocks - s.f_bfree) * s.f_frsize


class State(torch.nn.Module):
    """TENSORS flat parameters, the first `frozen` of them frozen."""

    def __init__(self, n, frozen):
        super().__init__()
        for i in range(TENSORS):
            data = torch.from_numpy(np.random.default_rng(i).standard_normal(n, dtype=np.float32))
            self.register_parameter(f"t{i:03d}", torch.nn.Parameter(data, requires_grad=i >= frozen))


def one(binary, base, mib, frozen, share, steps, seal=False):
    """Per step 2..N: (seconds to durable, bytes allocated)."""
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
        state = State(n, int(round(TENSORS * frozen)))
        changing = [p for p in state.parameters() if p.requires_grad]
        run = ckptd.connect("unix:" + sock).open_run("ft", schedule={"every_steps": 1}, transport="shm",
                                                     seal_frozen=seal)
        times, sizes = [], []
        for step in range(1, steps + 1):
            with torch.no_grad():
                for p in changing:
                    p.add_(1.0)
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
        return times, sizes
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
    loop = subprocess.run(["losetup", "--direct-io=on", "--find", "--show", image], check=True,
                          timeout=60, capture_output=True, text=True).stdout.strip()
    subprocess.run(["mount", loop, mnt], check=True, timeout=60)
    ext4 = os.path.join(work, "ext4")
    os.makedirs(ext4)
    rows = []
    try:
        for fs, base in (("xfs-reflink", mnt), ("ext4", ext4)):
            one(binary, base, args.mib, 0.0, False, 2)  # warm-up: the file system's first files
            for frozen in (0.0, 0.9, 0.99):
                # Interleaved on the same file system, two rounds in opposite
                # orders (the disk drifts): the plain write, sharing, sealed.
                ways = [(False, False), (True, False), (True, True)]
                got = {w: ([], []) for w in ways}
                for order in (ways, ways[::-1]):
                    for share, seal in order:
                        t, b = one(binary, base, args.mib, frozen, share, args.steps, seal=seal)
                        got[(share, seal)][0].extend(t)
                        got[(share, seal)][1].extend(b)
                rows.append((fs, frozen, *((statistics.median(got[w][0]), statistics.median(got[w][1]))
                                           for w in ways)))
    finally:
        subprocess.run(["umount", mnt], timeout=60)
        subprocess.run(["losetup", "-d", loop], timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfine-tune checkpoints: {args.mib} MiB state in {TENSORS} tensors, shm path, "
          f"medians of steps 2..{args.steps} of two rounds")
    print(f"{'file system':<12} {'frozen':>6} | {'plain s':>8} {'plain MB':>9} | {'shared s':>8} "
          f"{'shared MB':>9} | {'sealed s':>8} {'sealed MB':>9} | {'shared x':>8} {'sealed x':>8} "
          f"{'bytes x':>7}")
    for fs, frozen, (pt, pb), (st, sb), (xt, xb) in rows:
        print(f"{fs:<12} {frozen:>6.0%} | {pt:>8.3f} {pb / 1e6:>9.1f} | {st:>8.3f} {sb / 1e6:>9.1f} | "
              f"{xt:>8.3f} {xb / 1e6:>9.1f} | {st / pt:>8.3f} {xt / pt:>8.3f} {xb / pb if pb else 0:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
