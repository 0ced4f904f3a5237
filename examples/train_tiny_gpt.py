#!/usr/bin/python3
"""A tiny causal language model trained with ckptd checkpoints.

Trains a ~220k-parameter GPT (token + position embeddings, four pre-norm
transformer blocks with dropout, tied output head) on synthetic sequences
with AdamW and a warmup + cosine learning-rate schedule, on the CPU with
Debian's torch. Every --every steps it checkpoints through ckptd (model to
step_N.gguf; optimizer moments, scheduler, data position and RNG states to
step_N.train.gguf). Started again with the same --run, it resumes from the
run's latest checkpoint, and ends with the same weights, bit for bit, as a
run that was never interrupted.

    make run      # in another shell
    PYTHONPATH=build/python/lib /usr/bin/python3 examples/train_tiny_gpt.py --run tiny --steps 300

(or without PYTHONPATH once the package is installed: the wheel, python3-ckptd)

The ckptd part is the three lines marked "ckptd:".
"""

import argparse
import math
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import ckptd

VOCAB, CTX, DIM, HEADS, LAYERS, BATCH = 256, 32, 64, 4, 4, 8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, HEADS, dropout=0.1, batch_first=True)
        self.ln2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM), nn.Dropout(0.1))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(CTX, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(DIM)
        self.register_buffer("mask", torch.triu(torch.ones(CTX, CTX, dtype=torch.bool), 1))

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x, self.mask[: idx.shape[1], : idx.shape[1]])
        return self.ln(x) @ self.tok.weight.T  # tied head


def batch(seed: int, step: int):
    """Synthetic data at position `step` of the stream: a noisy counting task."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    start = torch.randint(0, VOCAB, (BATCH, 1), generator=g)
    seq = (start + torch.arange(CTX + 1) * torch.randint(1, 4, (BATCH, 1), generator=g)) % VOCAB
    return seq[:, :-1], seq[:, 1:]


def lr_at(step, warmup=20, total=1000):
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="tiny-gpt")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--socket", default=None, help="daemon address (default $CKPTD_SOCKET)")
    p.add_argument("--transport", default="auto", choices=["auto", "shm", "stream"])
    p.add_argument("--sleep", type=float, default=0.0, help="pause per step (tests)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds after SIGTERM for the step in progress to end and be saved")
    args = p.parse_args()

    torch.set_num_threads(1)  # bit-for-bit reproducible on any machine
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    # ckptd: open the run (resumes an existing one) ...
    run = ckptd.connect(args.socket).open_run(
        args.run, schedule={"every_steps": args.every}, retention={"keep_last": 3}, seed=args.seed,
        metadata={"general.architecture": "tinygpt", "general.name": "tiny-gpt", "tinygpt.context_length": CTX},
        transport=args.transport)
    # ckptd: ... and take back the latest checkpoint, if any.
    info = run.restore(model=model, optimizer=opt)
    first = 0
    if info is not None:
        sched.load_state_dict(info.extra["scheduler"])
        first = info.extra["next_step"]
        print(f"resumed from step {info.step} ({info.source}, {info.bytes} bytes in {info.seconds:.3f}s)", flush=True)

    def state(step):
        return dict(step=step, model=model, optimizer=opt, metrics={"loss": last_loss},
                    extra={"scheduler": sched.state_dict(), "next_step": step + 1, "seed": args.seed})

    last_loss = float("nan")
    print(f"training from step {first}", flush=True)
    # ckptd: on SIGTERM the step in progress ends, maybe_save saves it and
    # the trainer exits (within --grace seconds).
    with run.preemptible(grace=args.grace):
        for step in range(first, args.steps):
            model.train()
            x, y = batch(args.seed, step)
            loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last_loss = loss.item()
            if args.sleep:
                time.sleep(args.sleep)
            # ckptd: a checkpoint when the schedule says so (one cheap RPC otherwise).
            r = run.maybe_save(step, **{k: v for k, v in state(step).items() if k != "step"})
            if r.state != "skipped":
                print(f"step {step} loss {last_loss:.4f} checkpoint {r.state} "
                      f"({r.transport}, stall {r.stall_s * 1e3:.1f} ms)", flush=True)
        final = state(args.steps - 1)
        run.close(final)
    print(f"done: step {args.steps - 1} loss {last_loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
