"""One rank of a multi-rank "training" run, for the multi-node tests: opens
the run as rank R of W on its node's ckptd and saves its part of each step
(whole tensors of its own, deterministic in rank and step), printing
"saving N" before and "saved N STATE" after each save, so that the test can
kill it mid-save."""

import argparse
import sys

import numpy as np

import ckptd


def tensors(rank: int, step: int, mib: float) -> dict:
    n = max(1, int(mib * (1 << 20) / 4 / 2))
    rng = np.random.default_rng(rank * 1_000_003 + step)
    return {f"blk.{rank}.{k}": rng.standard_normal(n).astype(np.float32) for k in ("a", "b")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--steps", required=True, help="comma-separated")
    ap.add_argument("--mib", type=float, default=1.0)
    ap.add_argument("--part-timeout", type=float, default=10.0)
    args = ap.parse_args()
    client = ckptd.Client("unix:" + args.socket, reconnect_timeout=5)
    run = client.open_run(args.run, transport="stream", schedule={"every_steps": 0},
                          multi_rank={"world_size": args.world, "rank": args.rank,
                                      "part_timeout_seconds": args.part_timeout})
    for step in (int(s) for s in args.steps.split(",") if s):
        print(f"saving {step}", flush=True)
        try:
            r = run.save(step, model=tensors(args.rank, step, args.mib), metrics={"loss": 1.0 / step})
        except ckptd.Error as e:
            print(f"failed {step} {e.code}: {e.message}", flush=True)
            continue
        # A part is durable here, not yet a checkpoint: "pending", staged.
        print(f"saved {step} {r.state}{' staged' if r.staged else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
