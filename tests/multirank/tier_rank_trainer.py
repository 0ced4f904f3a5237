"""One rank of a multi-rank PyTorch run with memory steps, for the tier
test: a small model per rank (its tensors named after the rank), batches
seeded by rank and step, so replay(rank, N) rebuilds exactly the state
after step N. Opens the run through its node's daemon, restores with the
restart's attempt id, prints one JSON line (the step restored, the tier
that served it, the work lost and a digest of the restored state), then
trains to --until, printing "step N" after each step's maybe_save, and
waits to be killed."""

import argparse
import hashlib
import json
import sys

import torch

import ckptd


def make(rank: int):
    torch.manual_seed(1000 + rank)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def train_step(model, opt, rank: int, step: int) -> float:
    g = torch.Generator().manual_seed(rank * 1_000_003 + step)
    x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def replay(rank: int, to_step: int):
    model, opt = make(rank)
    for step in range(1, to_step + 1):
        train_step(model, opt, rank, step)
    return model, opt


def digest(model, opt) -> str:
    """Every parameter's and optimizer moment's bytes, in a fixed order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    state = opt.state_dict()["state"]
    for k in sorted(state):
        for field in sorted(state[k]):
            h.update(f"{k}.{field}".encode())
            h.update(torch.as_tensor(state[k][field]).contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--schedule", required=True, help="JSON")
    ap.add_argument("--until", type=int, required=True)
    ap.add_argument("--attempt", default=None)
    args = ap.parse_args()
    model, opt = make(args.rank)
    client = ckptd.Client("unix:" + args.socket, reconnect_timeout=10)
    run = client.open_run(args.run, transport="stream", schedule=json.loads(args.schedule),
                          name_map=lambda k: f"rank{args.rank}.{k}",
                          multi_rank={"world_size": args.world, "rank": args.rank,
                                      "part_timeout_seconds": 30})
    info = run.restore(model=model, optimizer=opt, attempt=args.attempt, agree_timeout=120)
    print(json.dumps({"restored": info.step if info else None, "tier": info.tier if info else None,
                      "steps_lost": info.steps_lost if info else None,
                      "digest": digest(model, opt)}), flush=True)
    for step in range((info.step if info else 0) + 1, args.until + 1):
        loss = train_step(model, opt, args.rank, step)
        run.maybe_save(step, model=model, optimizer=opt, metrics={"loss": loss})
        print(f"step {step}", flush=True)
    print("done", flush=True)
    sys.stdin.read()  # until the test kills it
    return 0


if __name__ == "__main__":
    sys.exit(main())
