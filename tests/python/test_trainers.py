"""What real PyTorch trainers hand the client, and get back: provenance of
the trainer's own repository, the stream when shared memory is refused,
every scheduler and GradScaler, nested state dicts, refusals named by key
path, and the arena set up when the run opens."""

import subprocess
import sys
import textwrap

import pytest

import ckptd
from conftest import PYLIB, ROOT


def _provenance_of(daemon, tmp_path, script_dir, cwd):
    """Opens and saves a run from a script in `script_dir`, run from `cwd`;
    returns the checkpoint's git provenance."""
    script = script_dir / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {PYLIB!r})
        import torch, ckptd
        run = ckptd.connect({daemon.target!r}).open_run("prov-{script_dir.name}", transport="stream")
        run.save(1, model={{"w": torch.zeros(2)}})
        run.close()
    """))
    out = subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    run = ckptd.connect(daemon.target).open_run(f"prov-{script_dir.name}")
    md = ckptd.load_metadata(run.open_checkpoint(1, True, False, False).model.path)
    return md.get("ckpt.trainer.git_commit", ""), md.get("ckpt.trainer.extra.git_commit_source", "")


def test_git_provenance_is_the_entry_scripts_repository_not_the_working_directorys(daemon, tmp_path):
    # A trainer in no repository, started from inside ckptd's own checkout
    # (as the README's quickstart is): no commit, and it says why.
    alone = tmp_path / "alone"
    alone.mkdir()
    commit, source = _provenance_of(daemon, tmp_path, alone, cwd=ROOT)
    assert commit == "", commit
    assert "is in no git repository" in source and "alone/train.py" in source, source
    # A trainer in its own repository: that repository's commit, from anywhere.
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    (repo / "README").write_text("x")
    subprocess.run(git + ["add", "README"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    head = subprocess.run(git[:3] + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    commit, source = _provenance_of(daemon, tmp_path, repo, cwd=ROOT)
    assert commit == head, (commit, head)
    assert source.endswith("repo/train.py"), source


NOBODY = 65534


def test_a_trainer_the_daemon_refuses_shared_memory_saves_over_the_stream_and_says_so(tmp_path):
    """The README's service setup: the daemon under its own user, a trainer
    of another uid not in shm.allowed_uids. The first due save must not
    fail: one warning, then the stream."""
    import os
    import shutil
    import tempfile
    from conftest import Daemon
    open_dir = tempfile.mkdtemp(prefix="ckptd-nobody-")
    try:
        os.chmod(open_dir, 0o755)
        pkg = os.path.join(open_dir, "pkg")
        shutil.copytree(os.path.join(PYLIB, "ckptd"), os.path.join(pkg, "ckptd"))
        cfg = os.path.join(open_dir, "ckptd.toml")
        with open(cfg, "w") as f:
            f.write('[server]\nsocket_mode = "0666"\n')
        d = Daemon(tmp_path, ["--config", cfg])
        d.sock = os.path.join(open_dir, "ckptd.sock")
        d.target = "unix:" + d.sock
        d.start()
        try:
            script = os.path.join(open_dir, "train.py")
            with open(script, "w") as f:
                f.write(textwrap.dedent(f"""
                    import logging, sys
                    logging.basicConfig(level=logging.WARNING)
                    sys.path.insert(0, {pkg!r})
                    import torch, ckptd
                    run = ckptd.connect({d.target!r}).open_run("svc", schedule={{"every_steps": 2}})
                    w = torch.arange(6.0)
                    for step in range(1, 7):
                        r = run.maybe_save(step, model={{"w": w + step}})
                        print("saved", step, r.state, r.transport, flush=True)
                    run.close()
                """))
            for p in (script,):
                os.chmod(p, 0o644)
            out = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                                  "--clear-groups", sys.executable, script],
                                 capture_output=True, text=True, timeout=180,
                                 env={**os.environ, "HOME": open_dir})
            assert out.returncode == 0, out.stdout + out.stderr
            saved = [line.split() for line in out.stdout.splitlines() if line.startswith("saved")]
            assert [s[1:] for s in saved if s[2] != "skipped"] == [
                ["2", "committed", "stream"], ["4", "committed", "stream"], ["6", "committed", "stream"]], out.stdout
            warnings = [line for line in out.stderr.splitlines() if "refuses this process shared memory" in line]
            assert len(warnings) == 1 and "PERMISSION_DENIED" in warnings[0], out.stderr
            run = ckptd.connect(d.target).open_run("svc")
            assert run.latest()[0] == 6
        finally:
            d.stop()
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


def _schedulers():
    """Every scheduler class of torch.optim.lr_scheduler, built on its own SGD."""
    import torch
    from torch.optim import lr_scheduler as L

    def sgd():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)

    return {
        "LambdaLR": lambda o: L.LambdaLR(o, lambda e: 0.9 ** e),
        "MultiplicativeLR": lambda o: L.MultiplicativeLR(o, lambda e: 0.95),
        "StepLR": lambda o: L.StepLR(o, 3),
        "MultiStepLR": lambda o: L.MultiStepLR(o, [2, 5]),
        "ConstantLR": lambda o: L.ConstantLR(o),
        "LinearLR": lambda o: L.LinearLR(o),
        "ExponentialLR": lambda o: L.ExponentialLR(o, 0.9),
        "PolynomialLR": lambda o: L.PolynomialLR(o),
        "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, 10),
        "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, 3),
        "CyclicLR": lambda o: L.CyclicLR(o, 0.01, 0.1),
        "OneCycleLR": lambda o: L.OneCycleLR(o, 0.1, total_steps=40),
        "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=1),
        "SequentialLR": lambda o: L.SequentialLR(o, [L.ConstantLR(o), L.ExponentialLR(o, 0.9)], [3]),
        "ChainedScheduler": lambda o: L.ChainedScheduler([L.ConstantLR(o), L.ExponentialLR(o, 0.9)]),
    }, sgd


def test_every_lr_scheduler_and_the_grad_scaler_come_back_faithfully(daemon):
    import torch
    from torch.optim import lr_scheduler as L

    makers, sgd = _schedulers()
    assert {n for n in dir(L) if isinstance(getattr(L, n), type) and issubclass(
        getattr(L, n), (L._LRScheduler, L.ReduceLROnPlateau)) and n[0] != "_"} <= set(makers)
    run = ckptd.connect(daemon.target).open_run("schedulers", transport="stream")

    def drive(s, o, n):
        lrs = []
        for i in range(n):
            o.step()
            s.step(1.0 / (i + 1)) if isinstance(s, L.ReduceLROnPlateau) else s.step()
            lrs.append(o.param_groups[0]["lr"])
        return lrs

    before = {}
    objects = {}
    for name, make in makers.items():
        o = sgd()
        s = make(o)
        drive(s, o, 7)
        objects[name] = s
        before[name] = (o, s)
    scaler = torch.cuda.amp.GradScaler(enabled=False)
    objects["scaler"] = scaler
    run.save(7, model={"w": torch.zeros(2)}, state=objects)
    for name, make in makers.items():
        o, s = before[name]
        o2 = sgd()
        s2 = make(o2)  # built as the trainer builds it, then both states loaded
        o2.load_state_dict(o.state_dict())
        run.restore(model={"w": torch.zeros(2)}, state={name: s2})
        assert drive(s2, o2, 12) == drive(s, o, 12), name
    run.restore(model={"w": torch.zeros(2)}, state={"scaler": torch.cuda.amp.GradScaler(enabled=False)})
    # Restoring a scheduler's state into another kind is refused, named.
    o = sgd()
    with pytest.raises(ValueError, match="saved from a StepLR"):
        run.restore(model={"w": torch.zeros(2)}, state={"StepLR": L.ExponentialLR(o, 0.5)})


def test_nested_state_dicts_tuples_and_refusals_named_by_key_path(daemon):
    import torch
    run = ckptd.connect(daemon.target).open_run("nested", transport="stream", schedule={"every_steps": 100})
    m, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    run.save(1, model={"model": m.state_dict(), "ema": ema.state_dict()},
             extra={"pair": (1, 2.5), "nested": {"t": (torch.ones(2), "x")}})
    m2, ema2 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    info = run.restore(model={"model": m2.state_dict(), "ema": ema2.state_dict()})
    assert torch.equal(m2.weight, m.weight) and torch.equal(ema2.bias, ema.bias)
    assert info.extra["pair"] == (1, 2.5)
    assert isinstance(info.extra["nested"]["t"], tuple) and torch.equal(info.extra["nested"]["t"][0], torch.ones(2))
    # What cannot come back is refused at the first maybe_save, due or not,
    # naming where it is.
    from torch.optim import lr_scheduler as L
    o = torch.optim.SGD(m.parameters(), lr=0.1)
    sched = L.OneCycleLR(o, 0.1, total_steps=10)
    with pytest.raises(ValueError, match=r"extra\.scheduler\.anneal_func: method is not saved.*state=\{"):
        run.maybe_save(3, model=m, extra={"scheduler": sched.state_dict()})  # step 3: not due
    with pytest.raises(ValueError, match=r"extra\.f: function is not saved"):
        run.maybe_save(3, model=m, extra={"f": lambda: 1})
    with pytest.raises(ValueError, match="tensor 'meta' is a meta tensor"):
        run.maybe_save(3, model={"meta": torch.empty(3, device="meta")})
    with pytest.raises(ValueError, match="tensor 's' is torch.sparse_coo"):
        run.maybe_save(3, model={"s": torch.eye(3).to_sparse()})
    # close() with a state dict instead of keywords says how to call it.
    with pytest.raises(TypeError, match="close\\(step=..., model=model.state_dict"):
        run.close(m.state_dict())


def test_an_arena_is_set_up_at_open_so_the_first_save_pays_no_more_than_the_next(daemon):
    import torch
    m = torch.nn.Linear(512, 512)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(2, 512)).sum().backward()
    opt.step()
    run = ckptd.connect(daemon.target).open_run("reserved", transport="shm", model=m, optimizer=opt,
                                                schedule={"every_steps": 1})
    pool = run._pool
    assert len(pool.arenas) == 1 and pool.arenas[0].id > 0  # registered before any save
    arena, size = pool.arenas[0], pool.arenas[0].size
    assert size >= 3 * 512 * 512 * 4  # the weights and both moments
    for step in (1, 2, 3):
        run.maybe_save(step, model=m, optimizer=opt)
        run.wait()
    assert pool.arenas[0] is arena and len(pool.arenas) <= 2  # the first save used it
    assert run.reserve(model=m, optimizer=opt) == size  # a free one that fits: kept
    # Over the stream nothing needs setting up.
    stream = ckptd.connect(daemon.target).open_run("reserved-s", transport="stream", model=m)
    assert stream.reserve(model=m) == 0
