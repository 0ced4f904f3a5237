"""The shared-memory arenas a run saves through: set up before the first
save when asked (reserve), one arena reused while saves are spaced (a
second only while the previous save is still being written), and a save
that failed while a later one waited for its arena reported by wait(), not
dropped."""

import time

import pytest
import torch

import ckptd
from ckptd.v1 import ckptd_pb2 as pb


def _until_committed(run, step, timeout=60.0):
    deadline = time.monotonic() + timeout
    while (run.latest() or (None,))[0] != step:
        assert time.monotonic() < deadline, f"step {step} not committed"
        time.sleep(0.02)


def test_reserved_arena_serves_every_spaced_save(daemon):
    run = ckptd.connect(daemon.target).open_run("arenas-spaced", transport="shm")
    model = {"w": torch.randn(1 << 20), "b": torch.randn(7)}
    assert run.reserve(model=model) >= 4 << 20
    assert len(run._pool.arenas) == 1
    for step in (1, 2, 3):
        r = run.save(step, model=model)
        _until_committed(run, step)  # the trainer trains on meanwhile; no wait()
    # Each save found the previous one done: its arena, not a second one.
    assert len(run._pool.arenas) == 1
    assert r.state == "pending"  # not waited for: wait() reports it
    assert [x.state for x in run.wait()] == ["committed"]
    run.close()


def test_a_save_that_failed_while_another_waited_for_its_arena_is_reported(daemon, monkeypatch):
    run = ckptd.connect(daemon.target).open_run("arenas-failed", transport="shm")
    model = {"w": torch.randn(1 << 18)}
    run.reserve(model=model)
    call = run._call
    failing = set()

    def answer(name, make, *rest):
        if name == "WaitSaved" and make().save_id in failing:  # as if its write had failed
            return pb.WaitSavedResponse(state=pb.WaitSavedResponse.STATE_FAILED, error="injected: EIO")
        return call(name, make, *rest)

    monkeypatch.setattr(run, "_call", answer)
    r5 = run.save(5, model=model)
    failing.add(r5.save_id)
    run.save(6, model=model)  # its arena: step 5's, once that one is known to be over
    run.save(7, model=model)
    with pytest.raises(ckptd.Error) as e:
        run.wait()
    assert "step 5: injected: EIO" in str(e.value)
    assert r5.state == "failed"
    run.wait()  # reported once
    monkeypatch.undo()
    run.close()
