"""The memory tier through the real daemon and a real PyTorch trainer:
memory steps between disk steps, restored after the trainer is SIGKILLed
(lost work bounded by the memory interval) and after the daemon is too,
kept within keep_last and max_bytes, a damaged memory step refused, and a
daemon without the tier refusing runs that ask for it. Each recovery test
states the tier that served it and the work lost."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import Daemon, logged_port  # noqa: E402
import tier_trainer  # noqa: E402

import ckptd  # noqa: E402
import ckptd.gguf  # noqa: E402
from ckptd.v1 import ckptd_pb2 as pb  # noqa: E402

PY = "/usr/bin/python3"
MEMORY_EVERY = 5
DISK_EVERY = 50
SCHEDULE = {"every_steps": DISK_EVERY, "memory_every_steps": MEMORY_EVERY}

if not os.path.isdir("/dev/shm"):
    pytest.skip("no /dev/shm (tmpfs) for the memory tier", allow_module_level=True)


@pytest.fixture
def memory_root():
    d = tempfile.mkdtemp(prefix="ckptd-tier-test-", dir="/dev/shm")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tier_daemon(tmp_path, memory_root, keep_last=3, max_bytes=0, http=None):
    cfg = tmp_path / "tiers.toml"
    cfg.write_text(f'[memory]\nroot = "{memory_root}"\nkeep_last = {keep_last}\nmax_bytes = {max_bytes}\n')
    return Daemon(tmp_path, ["--config", str(cfg)] + (["--http-listen", http] if http else []))


def gauges(http, name):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    return {line.split("{")[1].split("}")[0]: float(line.split()[-1])
            for line in text.splitlines() if line.startswith(name + "{")}


def start_trainer(d, run_id):
    p = subprocess.Popen([PY, os.path.join(HERE, "tier_trainer.py"), run_id, json.dumps(SCHEDULE)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env())
    restored = json.loads(p.stdout.readline() or "null")
    if restored is None:
        p.kill()
        raise RuntimeError(f"trainer did not start: {p.stderr.read()[-3000:]}")
    return p, restored


def train_until(p, step):
    for line in p.stdout:
        if line.strip() == f"step {step}":
            return
    raise RuntimeError(f"trainer exited before step {step}: {p.stderr.read()[-3000:]}")


def kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    p.stderr.close()


def listing(run):
    return list(run.client.stub.ListCheckpoints(pb.ListCheckpointsRequest(run_id=run.id)).checkpoints)


def assert_exactly(model, opt, step):
    """`model` and `opt` hold exactly the state after `step` steps."""
    ref_model, ref_opt = tier_trainer.replay(step)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs from the state after step {step}"
    mine, ref = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert mine.keys() == ref.keys()
    for k in ref:
        for field in ref[k]:
            assert torch.equal(torch.as_tensor(mine[k][field]), torch.as_tensor(ref[k][field])), \
                f"optimizer state {k}.{field} differs from the state after step {step}"


def test_a_killed_trainer_resumes_from_the_memory_tier(tmp_path, memory_root):
    d = tier_daemon(tmp_path, memory_root, http="127.0.0.1:0").start()
    try:
        http = f"127.0.0.1:{logged_port(d.log)}"
        p, restored = start_trainer(d, "mem")
        assert restored["restored"] is None
        train_until(p, 73)
        kill(p)  # SIGKILL somewhere after step 73: its last disk step is 50
        run = ckptd.connect(d.target).open_run("mem", schedule=SCHEDULE)
        model, opt = tier_trainer.make()
        info = run.restore(model=model, optimizer=opt)
        seen = run.client.stub.GetRun(pb.GetRunRequest(run_id="mem")).last_seen_step
        print(f"trainer killed at step {seen}: restored step {info.step} from {info.tier}, "
              f"{info.steps_lost} steps lost (memory every {MEMORY_EVERY}, disk every {DISK_EVERY})")
        assert info.tier == "memory", info
        assert info.step % MEMORY_EVERY == 0 and info.step > DISK_EVERY
        assert info.steps_lost == seen - info.step
        assert 0 <= info.steps_lost <= MEMORY_EVERY, info
        assert_exactly(model, opt, info.step)
        # What a failure now would lose, per tier, from the step reached.
        assert gauges(http, "ckptd_recovery_point_steps") == {
            'run="mem",tier="memory"': seen - info.step, 'run="mem",tier="disk"': seen - DISK_EVERY}
        assert gauges(http, "ckptd_memory_tier_bytes")['run="mem"'] > 0
        cps = listing(run)
        assert [(c.step, c.location) for c in cps if c.location != "memory"] == [(50, "local")]
        memory = [c.step for c in cps if c.location == "memory"]
        assert len(memory) <= 3 and info.step in memory and min(memory) > DISK_EVERY, memory
        assert all(c.file.startswith(memory_root) for c in cps if c.location == "memory")
        # The trainer carries on from the restored step; a later memory
        # step supersedes what the killed trainer saved past it.
        p, restored = start_trainer(d, "mem")
        assert restored["restored"] == max(memory) and restored["tier"] == "memory"
        train_until(p, max(memory) + 2 * MEMORY_EVERY)
        kill(p)
        after = listing(ckptd.connect(d.target).open_run("mem", schedule=SCHEDULE))
        assert [c.step for c in after if c.location == "memory"][-1] >= max(memory) + 2 * MEMORY_EVERY
    finally:
        d.stop()


def test_memory_steps_outlive_the_daemon_but_not_a_damaged_byte(tmp_path, memory_root):
    d = tier_daemon(tmp_path, memory_root).start()
    try:
        p, _ = start_trainer(d, "both")
        train_until(p, 38)
        kill(p)
        cps = listing(ckptd.connect(d.target).open_run("both", schedule=SCHEDULE))
        newest = max(c.step for c in cps)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.start()
        run = ckptd.connect(d.target).open_run("both", schedule=SCHEDULE)
        assert run.client.stub.GetRun(pb.GetRunRequest(run_id="both")).memory_step == newest
        model, opt = tier_trainer.make()
        info = run.restore(model=model, optimizer=opt)
        print(f"trainer and daemon killed: restored step {info.step} from {info.tier} "
              f"(steps lost unknown to a restarted daemon: {info.steps_lost})")
        assert (info.step, info.tier, info.steps_lost) == (newest, "memory", None)
        assert_exactly(model, opt, info.step)
        # A flipped byte in the newest memory step: refused by its digest,
        # and the memory step before it restores instead, saying why.
        newest_file = [c.file for c in listing(run) if c.step == newest][0]
        header = ckptd.gguf.read_header(newest_file)
        at = header.data_offset + header.tensors[-1].offset + 3
        with open(newest_file, "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x10]))
        model, opt = tier_trainer.make()
        info = run.restore(model=model, optimizer=opt)
        print(f"newest memory step damaged: restored step {info.step} from {info.tier}; "
              f"skipped {info.skipped}")
        assert (info.step, info.tier) == (newest - MEMORY_EVERY, "memory")
        assert len(info.skipped) == 1 and f"step {newest}" in info.skipped[0]
        assert "digest" in info.skipped[0]
        assert_exactly(model, opt, info.step)
    finally:
        d.stop()


def test_the_memory_tier_keeps_its_last_steps_within_its_budget(tmp_path, memory_root):
    d = tier_daemon(tmp_path, memory_root, keep_last=2).start()
    try:
        p, _ = start_trainer(d, "kept")
        train_until(p, 44)
        kill(p)
        run = ckptd.connect(d.target).open_run("kept", schedule=SCHEDULE)
        memory = [c for c in listing(run) if c.location == "memory"]
        assert len(memory) == 2, [c.step for c in memory]
        held = sorted(os.listdir(os.path.join(memory_root, "kept", "weights")))
        assert held == sorted([f"step_{c.step}.gguf" for c in memory] +
                              [f"step_{c.step}.train.gguf" for c in memory] + ["latest"]), held
        one_step = memory[-1].size_bytes + memory[-1].train_size_bytes
    finally:
        d.stop()
    # A byte budget below two steps: one is kept, the oldest evicted first.
    d = tier_daemon(tmp_path, memory_root, keep_last=2, max_bytes=one_step + one_step // 2).start()
    try:
        p, _ = start_trainer(d, "kept")
        train_until(p, 62)
        kill(p)
        run = ckptd.connect(d.target).open_run("kept", schedule=SCHEDULE)
        memory = [c.step for c in listing(run) if c.location == "memory"]
        assert len(memory) == 1 and memory[0] >= 60, memory
        assert "under [memory] max_bytes" in open(d.log).read()
    finally:
        d.stop()


def test_a_daemon_without_the_memory_tier_refuses_memory_steps(tmp_path):
    d = Daemon(tmp_path).start()
    try:
        with pytest.raises(ckptd.Error) as e:
            ckptd.connect(d.target).open_run("nomem", schedule=SCHEDULE)
        assert e.value.code == "FAILED_PRECONDITION"
        assert "[memory] root" in str(e.value)
    finally:
        d.stop()


def test_auto_picks_the_most_frequent_memory_interval_within_the_stall_budget(tmp_path, memory_root):
    d = tier_daemon(tmp_path, memory_root, keep_last=2).start()
    try:
        budget = 0.005
        schedule = {"every_steps": 1000, "memory_auto": True, "memory_every_steps": 2,
                    "memory_overhead_budget": budget}
        run = ckptd.connect(d.target).open_run("auto", schedule=schedule)
        model, opt = tier_trainer.make()
        memory_steps = []
        for step in range(1, 161):
            tier_trainer.train_step(model, opt, step)
            time.sleep(0.01)  # a step of ~10 ms
            r = run.maybe_save(step, model=model, optimizer=opt)
            if r is not None and r.state != "skipped":
                memory_steps.append(step)
        run.wait()
        info = run.client.stub.GetRun(pb.GetRunRequest(run_id="auto"))
        chosen = info.schedule.memory_every_steps
        stall, per_step = info.measured_stall_seconds, info.measured_step_seconds
        print(f"auto: stall {stall * 1e3:.2f} ms, step {per_step * 1e3:.2f} ms, budget {budget:.1%}: "
              f"memory every {chosen} steps (overhead {stall / chosen / per_step:.2%}); "
              f"memory steps {memory_steps[:4]}...{memory_steps[-3:]}")
        assert stall > 0 and per_step > 0
        # The most frequent interval within the budget, reported as in force.
        assert chosen == max(1, math.ceil(stall / (budget * per_step) - 1e-9)), (chosen, stall, per_step)
        assert stall / chosen <= budget * per_step * (1 + 1e-9)
        assert chosen == 1 or stall / (chosen - 1) > budget * per_step
        assert info.schedule.memory_auto
        assert "memory tier: auto interval run=auto" in open(d.log).read()
        assert memory_steps[0] == 2  # the starting interval, before a stall was measured
    finally:
        d.stop()
