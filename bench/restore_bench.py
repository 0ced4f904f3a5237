#!/usr/bin/python3
"""Cold restore against the disk's read limit: a checkpoint of SIZE bytes
read back into a trainer's existing tensors, page cache dropped, by

- the Python client: ``Run.restore(model=..., hot=False)``, digests checked;
- the C++ client: ``ckptctl restore-check --no-memory`` (``Run::Restore``);

and the limit: fio's sequential O_DIRECT read of the same file in 4 MiB
blocks, the better of queue depth 1 (psync) and 8 (libaio), page cache
dropped before each, as the write side's limit is taken. (Depth 4 alone,
the limit this bench's predecessor used, read 0.5-0.8 of depth 1 on this
machine's virtual disk, which flattered every ratio.)

The disk's speed drifts between minutes, so each round runs all three back
to back on the one file, in an order that rotates from round to round; a
case's ratio is the median of its per-round ratios, and the table also
gives the worst round. Needs root (drop_caches) and fio.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_bench as rb  # noqa: E402

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fio_read_s(path, size):
    """The better of fio's QD1 (psync) and QD8 (libaio) cold reads of `path`, seconds."""
    best = None
    for engine, depth in (("psync", 1), ("libaio", 8)):
        rb.drop_caches()
        out = rb.run_json(["fio", "--name=r", f"--filename={path}", "--readonly", "--rw=read",
                           "--bs=4M", f"--size={size}", "--direct=1", f"--ioengine={engine}",
                           f"--iodepth={depth}", "--output-format=json"])
        job = out["jobs"][0]["read"]
        took = job["io_bytes"] / job["bw_bytes"]
        best = took if best is None else min(best, took)
    return best


def one_size(build, scratch, size, rounds):
    sys.path.insert(0, os.path.join(build, "python", "lib"))
    import ckptd
    import torch

    root = os.path.join(scratch, "root")
    os.makedirs(root)

    def bench(sock, pid):
        n = 64 * MiB
        model = {f"blk.{i}.weight": torch.full((min(n, size - i * n) // 4,), float(i))
                 for i in range((size + n - 1) // n)}
        run = ckptd.connect(sock).open_run("restore", transport="shm", schedule={"every_steps": 0},
                                           retention={"keep_last": 1})
        run.save(1, model=model)
        run.wait()
        path = run.latest()[1]  # the committed step_1.gguf
        file_bytes = os.path.getsize(path)
        ckptctl = os.path.join(build, "client/cli/ckptctl")

        def python():
            rb.drop_caches()
            t0 = time.perf_counter()
            info = run.restore(model=model, hot=False)
            took = time.perf_counter() - t0
            assert info.step == 1 and info.source != "memory", info
            return took

        def cpp():
            rb.drop_caches()
            out = rb.run_json([ckptctl, "restore-check", "restore", "--no-memory", "--json",
                               "--socket", sock])
            assert out["source"] != "memory", out
            return out["seconds"]

        cases = {"fio": lambda: fio_read_s(path, file_bytes), "python": python, "c++": cpp}
        names = list(cases)
        got = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:
                got[name].append(cases[name]())
        run.close()
        return got, file_bytes

    got, file_bytes, _ = rb.with_daemon(build, root, bench)
    return {"bytes": size, "file_bytes": file_bytes, "seconds": got}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--mib", default="256,1024,4096", help="sizes, MiB, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where files are written (default: under --build)")
    args = ap.parse_args()
    if not shutil.which("fio"):
        sys.exit("restore_bench: needs fio (scripts/install-deps.sh --bench)")
    work = tempfile.mkdtemp(dir=args.dir or args.build, prefix="restore-bench-")
    results = []
    try:
        for mib in (int(m) for m in args.mib.split(",")):
            scratch = os.path.join(work, f"size-{mib}")
            results.append(one_size(args.build, scratch, mib * MiB, args.rounds))
            shutil.rmtree(scratch)
            os.sync()
            time.sleep(3)  # the deletion's discards drain before the next size
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"cold restore into existing tensors vs fio's sequential O_DIRECT read of the same file,"
          f"\nthe better of QD1 and QD8"
          f"\n(page cache dropped before each; {args.rounds} rounds, order rotating; MB/s medians,"
          f" ratio = median of per-round ratios, worst round in brackets)")
    print(f"{'size':>7} {'fio read':>9} | {'Python':>7} {'/fio':>5} {'(worst)':>8} | "
          f"{'C++':>7} {'/fio':>5} {'(worst)':>8}")
    for r in results:
        s = r["seconds"]
        mbps = {k: [r["file_bytes"] / t / 1e6 for t in v] for k, v in s.items()}
        row = f"{r['bytes'] // MiB:>5}Mi {rb.median(mbps['fio']):>9.0f} |"
        for case in ("python", "c++"):
            per_round = [a / b for a, b in zip(mbps[case], mbps["fio"])]
            r[f"{case}_vs_fio"] = rb.median(per_round)
            r[f"{case}_vs_fio_worst"] = min(per_round)
            row += (f" {rb.median(mbps[case]):>7.0f} {rb.median(per_round):>5.2f} "
                    f"({min(per_round):>5.2f}) |")
        print(row.rstrip(" |"))
    short = [f"{r['bytes'] // MiB}Mi {c}" for r in results for c in ("python", "c++")
             if r[f"{c}_vs_fio"] < 0.9]
    print(f"\ngoal: every ratio >= 0.90: {'met' if not short else 'short: ' + ', '.join(short)}")
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "restore.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
