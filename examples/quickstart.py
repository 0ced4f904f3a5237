# A small PyTorch model that checkpoints through ckptd every 500 steps and,
# started again, resumes where it stopped (weights, optimizer, step).
import torch

import ckptd

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
steps = 3000

run = ckptd.connect().open_run("quickstart", schedule={"every_steps": 500})
info = run.restore(model=model, optimizer=opt)  # None on the first start
start = info.extra["next_step"] if info else 0
print(f"resuming at step {start}" if info else "fresh run")
for step in range(start, steps):
    x = torch.randn(64, 32)
    loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    state = dict(model=model, optimizer=opt, extra={"next_step": step + 1},
                 metrics={"loss": loss.item()})
    if step + 1 < steps:
        run.maybe_save(step, **state)  # a cheap call; saves when the schedule says so
    if step % 500 == 0:
        print(f"step {step}: loss {loss.item():.4f}")
if start < steps:
    run.close(dict(step=steps - 1, **state))  # the last step, saved once
else:
    run.close()  # already trained to the end
print("latest checkpoint (step, file):", run.latest())
