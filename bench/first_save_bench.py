#!/usr/bin/python3
"""The Python client's first save, with and without the arena set up when
the run opens (open_run(model=...) or Run.reserve()), against its peers in
the same run: the same client's next saves, a numpy copy of the model's
bytes into pre-faulted memory (the floor of any save that copies) and
torch.save + fsync. Rounds interleaved, medians; one fresh run each.

    /usr/bin/python3 bench/first_save_bench.py [--build build] [--mib 256,1024,2048] [--rounds 3]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.environ.get("CKPTD_PYTHON_LIB") or os.path.join(HERE, "..", "build", "python", "lib"))

import run_bench as rb  # noqa: E402  (the shared helpers: daemon, fsync, medians)

MiB = 1 << 20


def model_of(size):
    import torch

    n = 64 * MiB
    return {f"blk.{i}.weight": torch.full((min(n, size - i * n) // 4,), float(i))
            for i in range((size + n - 1) // n)}


def first_saves(sock, model, tag, reserve):
    """(open_run s, first save's stall s, second save's stall s) of a fresh run."""
    import ckptd

    client = ckptd.connect(sock)
    t0 = time.perf_counter()
    run = client.open_run(f"first-{tag}", transport="shm", schedule={"every_steps": 0},
                          retention={"keep_last": 1}, model=model if reserve else None)
    opened = time.perf_counter() - t0
    first = run.save(1, model=model).stall_s
    run.wait()
    second = run.save(2, model=model).stall_s
    run.wait()
    run.close()
    client.close()
    return opened, first, second


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--mib", default="256,1024,2048")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    work = tempfile.mkdtemp(dir=args.build, prefix="first-save-")
    try:
        for mib in (int(m) for m in args.mib.split(",")):
            size = mib * MiB
            model = model_of(size)
            root = os.path.join(work, f"root-{mib}")
            os.makedirs(root)

            def measure(sock, pid, model=model):
                plain, reserved, torch_s = [], [], []
                for r in range(args.rounds):  # interleaved: the disk drifts
                    plain.append(first_saves(sock, model, f"{mib}-{r}-plain", False))
                    reserved.append(first_saves(sock, model, f"{mib}-{r}-reserved", True))
                    torch_s.append(rb.timed(lambda: rb.fsync_file(
                        os.path.join(work, "torch.pt"), lambda f: __import__("torch").save(model, f))))
                return plain, reserved, torch_s

            plain, reserved, torch_s, _ = rb.with_daemon(args.build, root, measure)
            med = lambda xs, i: rb.median([x[i] for x in xs])  # noqa: E731
            copy_s = rb.numpy_copy_s(model, np.ones(size, dtype=np.uint8), 3)
            rows.append((mib, copy_s, med(plain, 1), med(plain, 2), med(reserved, 0),
                         med(reserved, 1), rb.median(torch_s)))
            shutil.rmtree(root)
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("Python client, first save over shared memory: seconds (medians of "
          f"{args.rounds} interleaved rounds, one fresh run each)")
    print(f"{'size':>7} {'np copy':>8} | {'1st, plain':>10} {'2nd':>7} | {'open_run(model=)':>16} "
          f"{'1st, reserved':>13} {'/2nd':>5} | {'torch.save+fsync':>16}")
    for mib, copy, p1, p2, ro, r1, t in rows:
        print(f"{mib:>5}Mi {copy:>7.3f}s | {p1:>9.3f}s {p2:>6.3f}s | {ro:>15.3f}s {r1:>12.3f}s "
              f"{r1 / p2:>4.2f}x | {t:>15.3f}s")
    print("\nnp copy = the model's bytes copied into pre-faulted memory (the floor); 1st, plain ="
          "\nthe first save's stall when the arena is created by that save; 2nd = the next save's;"
          "\nopen_run(model=) = opening the run with the model (arena created, registered and"
          "\npopulated); 1st, reserved = the first save's stall after that, /2nd against the plain"
          "\nrun's second save.")


if __name__ == "__main__":
    sys.exit(main())
