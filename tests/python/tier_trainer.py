"""A small deterministic PyTorch trainer for the tier tests. Step N's
batch comes from a generator seeded with N, so replay(N) rebuilds exactly
the state a trainer had after step N, and a test can compare a restore
with it bit for bit.

Run as a program: tier_trainer.py RUN_ID SCHEDULE_JSON [KEEP_LAST]. It
opens the run through $CKPTD_SOCKET, restores whatever the daemon has,
prints one JSON line about the restore, then trains forever, printing
"step N" after each step's maybe_save."""

import json
import sys
import time

import torch

import ckptd


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt


def train_step(model, opt, step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 32, generator=g)
    y = torch.randn(16, 8, generator=g)
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def replay(to_step):
    """The state after steps 1..to_step."""
    model, opt = make()
    for step in range(1, to_step + 1):
        train_step(model, opt, step)
    return model, opt


def main():
    run_id, schedule = sys.argv[1], json.loads(sys.argv[2])
    model, opt = make()
    run = ckptd.connect().open_run(run_id, schedule=schedule)
    info = run.restore(model=model, optimizer=opt)
    print(json.dumps({"restored": info.step if info else None,
                      "tier": info.tier if info else None,
                      "steps_lost": info.steps_lost if info else None}), flush=True)
    step = info.step + 1 if info else 1
    while True:
        loss = train_step(model, opt, step)
        run.maybe_save(step, model=model, optimizer=opt, metrics={"loss": loss})
        print(f"step {step}", flush=True)
        step += 1
        time.sleep(0.002)


if __name__ == "__main__":
    main()
