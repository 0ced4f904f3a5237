"""A small CNN with BatchNorm and dropout, trained with SGD (Nesterov
momentum) and a one-cycle schedule through ckptd: the preemption tests'
second trainer. BatchNorm's running statistics and dropout's RNG advance
inside a step, so a save in the middle of one is visibly not a step
boundary. Resumes from the run's latest checkpoint."""

import argparse
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import ckptd


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(x.flatten(1)))


def batch(seed, step):
    g = torch.Generator().manual_seed(seed * 100003 + step)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--grace", type=float, default=30.0)
    p.add_argument("--transport", default="auto")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    run = ckptd.connect().open_run(a.run, schedule={"every_steps": a.every}, transport=a.transport)
    info = run.restore(model=model, optimizer=opt)
    first = 0
    if info is not None:
        sched.load_state_dict(info.extra["scheduler"])
        first = info.extra["next_step"]
        print(f"resumed from step {info.step}", flush=True)
    print(f"training from step {first}", flush=True)

    def state(step):
        return dict(model=model, optimizer=opt, extra={"scheduler": sched.state_dict(), "next_step": step + 1})

    with run.preemptible(grace=a.grace):
        for step in range(first, a.steps):
            model.train()
            x, y = batch(a.seed, step)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if a.sleep:
                time.sleep(a.sleep)
            run.maybe_save(step, **state(step))
        run.close(dict(step=a.steps - 1, **state(a.steps - 1)))
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
