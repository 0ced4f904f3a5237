"""The Python client against a real daemon: dtypes and shapes round-trip bit
for bit on both transports, restore into existing tensors (model, optimizer
moments by name, RNG, extra), load/load_metadata, bad inputs named, a
trainer SIGKILLed right after a save still gets it committed, SIGTERM saves
once more, and python -m ckptd."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import ckptd
from conftest import ROOT, Daemon, wait_for

TRANSPORTS = ["shm", "stream"]


def odd_tensors():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 5, generator=g)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, 1, 3, generator=g).double(),
        "i8": torch.randint(-128, 127, (9,), dtype=torch.int8, generator=g),
        "u8": torch.randint(0, 255, (4, 4), dtype=torch.uint8, generator=g),
        "i16": torch.randint(-30000, 30000, (5,), dtype=torch.int16, generator=g),
        "i32": torch.randint(-(2**31), 2**31 - 1, (3, 3), dtype=torch.int32, generator=g),
        "i64": torch.randint(-(2**62), 2**62, (4,), dtype=torch.int64, generator=g),
        "bool": torch.rand(11, generator=g) > 0.5,
        "zero_d": torch.tensor(3.25),
        "zero_d_i64": torch.tensor(-17, dtype=torch.int64),
        "one": torch.tensor([1.5]),
        "noncontig": base.t(),  # a transposed view: not contiguous
        "nan_inf": torch.tensor([float("nan"), float("inf"), -0.0, float("-inf")]),
    }


def same(a, b):
    """Bit-for-bit equality, dtype and shape included."""
    assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), (a.dtype, b.dtype, a.shape, b.shape)
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_dtype_and_odd_shape_round_trips(daemon, transport):
    run = ckptd.connect(daemon.target).open_run("dtypes-" + transport, transport=transport)
    assert run.transport == transport
    src = odd_tensors()
    r = run.save(5, model=src)
    run.wait()
    # Restore into fresh tensors of the same dtypes and shapes (non-contiguous included).
    dst = {k: torch.zeros_like(v) if k != "noncontig" else torch.zeros(6, 5).t() for k, v in src.items()}
    info = run.restore(model=dst)
    assert info.step == 5 and info.source == "disk"
    for k in src:
        assert same(src[k], dst[k]), k
    # load(): torch and numpy, dtypes and 0-d shapes as saved.
    loaded = ckptd.load(info.file, as_="torch")
    for k in src:
        assert same(src[k].contiguous(), loaded[k]), k
    arrays = ckptd.load(info.file)
    assert arrays["bool"].dtype == np.bool_ and arrays["u8"].dtype == np.uint8
    assert arrays["zero_d"].shape == () and arrays["f64"].shape == (2, 2, 1, 3)
    assert arrays["bf16"].dtype == np.uint16  # numpy has no bfloat16: the bits
    md = ckptd.load_metadata(info.file)
    assert md["ckpt.transport"] == ("shm" if transport == "shm" else "grpc-stream")
    assert r.state in ("pending", "committed")
    run.close()


def test_restore_returns_none_on_a_fresh_run(daemon):
    run = ckptd.connect(daemon.target).open_run("fresh")
    assert run.restore(model={"w": torch.zeros(3)}) is None


def _model_and_opt(seed):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.8, 0.95))
    return m, opt


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_optimizer_rng_and_extra_come_back(daemon, transport):
    run = ckptd.connect(daemon.target).open_run("state-" + transport, transport=transport,
                                                schedule={"every_steps": 10})
    m, opt = _model_and_opt(1)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    extra = {"loader": {"epoch": 2, "index": 1234}, "name": "x", "pi": 3.14159, "none": None,
             "ok": True, "hist": np.arange(6, dtype=np.int32), "t": torch.ones(2, 2)}
    assert run.maybe_save(9, model=m, optimizer=opt, extra=extra).state == "skipped"
    run.maybe_save(10, model=m, optimizer=opt, extra=extra, metrics={"loss": 0.5})
    run.wait()
    expect = (torch.rand(3), np.random.rand(3), random.random())

    m2, opt2 = _model_and_opt(2)
    opt2.param_groups[0]["lr"] = 9.0
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    info = run.restore(model=m2, optimizer=opt2)
    assert info.step == 10 and info.metrics == {"loss": 0.5}
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for slot in s1["state"][i]:
            assert torch.equal(s1["state"][i][slot], s2["state"][i][slot]), (i, slot)
    assert s2["param_groups"][0]["lr"] == 1e-3 and s2["param_groups"][0]["betas"] == (0.8, 0.95)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]
    assert info.extra["loader"] == {"epoch": 2, "index": 1234} and info.extra["none"] is None
    assert info.extra["pi"] == 3.14159 and info.extra["ok"] is True
    assert torch.equal(info.extra["hist"], torch.arange(6, dtype=torch.int32))
    run.close()


def test_moments_follow_parameter_names_not_positions(daemon):
    run = ckptd.connect(daemon.target).open_run("names")
    m, opt = _model_and_opt(1)
    opt.zero_grad()
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    run.save(1, model=m, optimizer=opt)
    run.wait()
    # The same parameters handed to the optimizer in reverse order.
    m2, _ = _model_and_opt(1)
    opt2 = torch.optim.AdamW(list(reversed(list(m2.parameters()))), lr=1e-3)
    run.restore(model=m2, optimizer=opt2)
    by_name = dict(m2.named_parameters())
    names = [n for n, _ in m.named_parameters()]
    for i, name in enumerate(names):
        p2 = by_name[name]
        assert torch.equal(opt.state_dict()["state"][i]["exp_avg"], opt2.state[p2]["exp_avg"]), name


def test_bad_inputs_are_named(daemon):
    run = ckptd.connect(daemon.target).open_run("bad", transport="stream")
    long = "x" * 64
    with pytest.raises(ValueError, match="64 bytes; GGUF allows 63.*name_map"):
        run.save(1, model={long: torch.zeros(2)})
    with pytest.raises(ValueError, match="uint16"):
        run.save(1, model={"w": np.zeros(2, dtype=np.uint16)})
    with pytest.raises(ValueError, match="5 dims"):
        run.save(1, model={"w": torch.zeros(1, 1, 1, 1, 2)})
    with pytest.raises(ValueError, match="empty"):
        run.save(1, model={"w": torch.zeros(0)})
    with pytest.raises(ValueError, match="not saved"):
        run.save(1, model={"w": torch.zeros(1)}, extra={"f": object()})
    with pytest.raises(ValueError, match="finite"):
        run.save(1, model={"w": torch.zeros(1)}, metrics={"loss": float("nan")})
    run.save(1, model={"w": torch.zeros(1)})
    with pytest.raises(ckptd.Error) as e:  # the daemon's refusal, with its code and words
        run.save(1, model={"w": torch.zeros(1)})
    assert e.value.code != "UNKNOWN" and "overwrite" in e.value.message
    # name_map shortens long names, and restore maps them the same way.
    run2 = ckptd.connect(daemon.target).open_run("mapped", transport="stream",
                                                 name_map=lambda n: n.replace("very_long_prefix.", "p."))
    src = {"very_long_prefix." + "y" * 60: torch.arange(4.0)}
    run2.save(1, model=src)
    dst = {k: torch.zeros(4) for k in src}
    run2.restore(model=dst)
    assert torch.equal(next(iter(dst.values())), torch.arange(4.0))


def test_a_flipped_byte_is_caught_and_named(daemon):
    run = ckptd.connect(daemon.target).open_run("flip", transport="stream")
    run.save(1, model={"a": torch.ones(1000), "b": torch.ones(1000)})
    path = run.latest()[1]
    hdr = ckptd.gguf.read_header(path)
    t = hdr.by_name["b"]
    with open(path, "r+b") as f:
        f.seek(hdr.data_offset + t.offset + 10)
        f.write(b"\x99")
    with pytest.raises(ckptd.DigestMismatch, match="tensor 'b'"):
        run.restore(model={"a": torch.zeros(1000), "b": torch.zeros(1000)})
    out = subprocess.run([sys.executable, "-m", "ckptd", "verify", path], capture_output=True, text=True,
                         env=daemon.env(), timeout=60)
    assert out.returncode == 1 and "tensor 'b'" in out.stderr


def _trainer(daemon, body, timeout=120):
    code = "import ckptd, torch, os, signal, sys, time\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=daemon.env(),
                          timeout=timeout)


def test_sigkill_right_after_a_shm_save_still_commits(daemon):
    out = _trainer(daemon, """
        run = ckptd.connect().open_run("killed", transport="shm")
        r = run.save(42, model={"w": torch.arange(1 << 20, dtype=torch.float32)})
        assert r.state == "pending", r
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert out.returncode == -signal.SIGKILL, out.stderr
    run = ckptd.connect(daemon.target).open_run("killed")
    wait_for(lambda: run.latest(), 60, "the killed trainer's save to commit")
    dst = {"w": torch.zeros(1 << 20)}
    assert run.restore(model=dst).step == 42
    assert torch.equal(dst["w"], torch.arange(1 << 20, dtype=torch.float32))


def test_sigterm_saves_once_more_and_exits(daemon):
    # The save happens at the next step boundary (maybe_save), never mid-step.
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import ckptd, torch, time, sys
        run = ckptd.connect().open_run("preempted", schedule={"every_steps": 1000})
        w = torch.zeros(100)
        step = 0
        ckptd.on_preemption(run)
        print("ready", flush=True)
        while True:
            step += 1
            w += 1
            time.sleep(0.001)
            run.maybe_save(step, model={"w": w}, extra={"step": step})
    """)], stdout=subprocess.PIPE, text=True, env=daemon.env())
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 143
    run = ckptd.connect(daemon.target).open_run("preempted")
    dst = {"w": torch.zeros(100)}
    info = run.restore(model=dst)
    assert info is not None and info.extra["step"] == info.step
    assert torch.all(dst["w"] == float(info.step))


def test_python_m_ckptd(daemon):
    run = ckptd.connect(daemon.target).open_run("cli", transport="stream")
    run.save(3, model={"w": torch.ones(4)}, metrics={"loss": 1.5})
    path = run.latest()[1]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ckptd", "--socket", daemon.target, *args],
                              capture_output=True, text=True, env=daemon.env(), timeout=60)

    ls = cli("ls")
    assert ls.returncode == 0 and "cli" in ls.stdout
    ls = cli("ls", "cli")
    assert ls.returncode == 0 and ls.stdout.startswith("3\t") and "loss=1.5" in ls.stdout
    latest = cli("latest", "cli")
    assert latest.stdout.strip() == path
    show = cli("show", "cli")
    assert "step 3" in show.stdout and "metric loss 1.5" in show.stdout
    insp = cli("inspect", path)
    assert "ckpt.step = 3" in insp.stdout and "w\tF32\t[4]" in insp.stdout
    ver = cli("verify", path)
    assert ver.returncode == 0 and ver.stdout.startswith("OK")
    missing = cli("latest", "nope")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def _final(daemon, run_id):
    """Every tensor of a run's final checkpoint (model and training state)."""
    run = ckptd.connect(daemon.target).open_run(run_id)
    with run.open_checkpoint() as c:
        return c.step, c.read_all("numpy")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_example_killed_mid_run_resumes_bit_identical(daemon, transport):
    example = os.path.join(ROOT, "examples", "train_tiny_gpt.py")
    args = ["--steps", "50", "--every", "10", "--transport", transport]
    clean = subprocess.run([sys.executable, example, "--run", "clean", *args], capture_output=True,
                           text=True, env=daemon.env(), timeout=300)
    assert clean.returncode == 0, clean.stderr
    # The same run, SIGKILLed once a checkpoint past step 20 is committed.
    p = subprocess.Popen([sys.executable, example, "--run", "killed", *args, "--sleep", "0.05"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=daemon.env())
    run = ckptd.connect(daemon.target).open_run("killed")
    wait_for(lambda: (run.latest() or (0,))[0] >= 20, 120, "a checkpoint at step 20")
    p.kill()
    p.wait(30)
    assert (run.latest() or (0,))[0] < 49, "the run ended before it was killed"
    again = subprocess.run([sys.executable, example, "--run", "killed", *args], capture_output=True,
                           text=True, env=daemon.env(), timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resumed from step" in again.stdout
    step_a, a = _final(daemon, "clean")
    step_b, b = _final(daemon, "killed")
    assert step_a == step_b == 49
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_hot_restore_gives_the_same_bytes_as_disk(hot_daemon):
    out = _trainer(hot_daemon, """
        run = ckptd.connect().open_run("hot", transport="shm")
        g = torch.Generator().manual_seed(3)
        model = {"w": torch.randn(512, 256, generator=g), "b": torch.randn(256, generator=g).bfloat16()}
        run.save(5, model=model, extra={"at": 5})
        run.wait()
        os.kill(os.getpid(), signal.SIGKILL)  # the trainer dies; the daemon keeps its arena
    """)
    assert out.returncode == -signal.SIGKILL, out.stderr
    run = ckptd.connect(hot_daemon.target).open_run("hot", transport="stream")
    assert run.opened.run.in_memory.step == 5
    hot = {"w": torch.zeros(512, 256), "b": torch.zeros(256, dtype=torch.bfloat16)}
    info = run.restore(model=hot)
    assert info.source == "memory" and info.extra == {"at": 5}
    cold = {"w": torch.zeros(512, 256), "b": torch.zeros(256, dtype=torch.bfloat16)}
    assert run.restore(model=cold, hot=False).source == "disk"
    assert run.restore(model=cold, verify=False).source == "disk"  # memory only with digests checked
    for k in hot:
        assert same(hot[k], cold[k]), k
    g = torch.Generator().manual_seed(3)
    assert torch.equal(hot["w"], torch.randn(512, 256, generator=g))
    # ckptctl restore-check reads it the same way and says from where.
    ckptctl = os.environ.get("CKPTCTL_BINARY", os.path.join(ROOT, "build", "client", "cli", "ckptctl"))
    for flags, source, shape in (([], "memory", (4, 8 << 20)), (["--no-memory"], "disk", (4, 8 << 20)),
                                 (["--no-memory", "--reads-in-flight", "1", "--chunk-mib", "1"], "disk",
                                  (1, 1 << 20))):
        out = subprocess.run([ckptctl, "restore-check", "hot", "--json", "--socket", hot_daemon.target, *flags],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["source"] == source and report["step"] == 5 and report["verified"]
        assert (report["reads_in_flight"], report["chunk_bytes"]) == shape, report
        assert report["bytes"] == 512 * 256 * 4 + 256 * 2 + sum(
            t.nbytes for t in ckptd.Checkpoint(info.file).train.tensors)
    out = subprocess.run([ckptctl, "restore-check", "hot", "--reads-in-flight", "0", "--socket", hot_daemon.target],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--reads-in-flight" in out.stderr, out.stderr


def test_hot_restore_reads_a_changed_tensor_from_disk(hot_daemon):
    # The trainer lives on and stages its next save over the kept arena.
    run = ckptd.connect(hot_daemon.target).open_run("reused", transport="shm")
    model = {"a": torch.arange(4096, dtype=torch.float32), "b": torch.ones(4096)}
    run.save(1, model=model)
    run.wait()
    arena = run._pool.arenas[0]
    arena.view[4096 * 4 + 100] ^= 0xFF  # inside tensor "b" (64-byte aligned after "a")
    dst = {"a": torch.zeros(4096), "b": torch.zeros(4096)}
    info = run.restore(model=dst)
    assert info.source == "memory" and info.memory_fallbacks == 1
    assert torch.equal(dst["a"], model["a"]) and torch.equal(dst["b"], model["b"])


def test_optimizer_state_dict_without_a_module_matches_by_position(daemon):
    run = ckptd.connect(daemon.target).open_run("positional", transport="stream")
    m, opt = _model_and_opt(1)
    opt.zero_grad()
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    run.save(1, model=m.state_dict(), optimizer=opt.state_dict())
    m2, opt2 = _model_and_opt(2)
    run.restore(model=m2.state_dict(), optimizer=opt2)
    for i, st in opt.state_dict()["state"].items():
        assert torch.equal(st["exp_avg"], opt2.state_dict()["state"][i]["exp_avg"]), i
    # A module whose names match nothing saved is refused, not silently ignored.
    run2 = ckptd.connect(daemon.target).open_run("renamed", transport="stream")
    run2.save(1, model=m, optimizer=opt)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(ValueError, match="no parameter of the optimizer matches"):
        run2.restore(model={k: v.clone() for k, v in m.state_dict().items()},
                     optimizer=torch.optim.AdamW(other.parameters()))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_training_survives_daemon_restarts_with_no_code_of_its_own(daemon, transport, caplog):
    """SIGTERM and later SIGKILL of the daemon under a live trainer: every
    save the trainer was told about is on disk with its own step's bytes, and
    the final snapshot lands (shm saves queued in the killed daemon are sent
    again from their arenas)."""
    import threading
    import time

    caplog.set_level("INFO", logger="ckptd")
    client = ckptd.connect(daemon.target, reconnect_timeout=30)
    run = client.open_run("survivor", schedule={"every_steps": 2}, transport=transport)
    model = {"w": torch.zeros(1 << 18), "b": torch.zeros(300)}
    progress = [0]
    restarted = []

    def restarter():
        for sig, at in ((signal.SIGTERM, 20), (signal.SIGKILL, 32)):
            wait_for(lambda: progress[0] >= at, 60, f"step {at}")
            daemon.proc.send_signal(sig)
            daemon.proc.wait(30)
            time.sleep(0.2)  # the trainer meets a dead socket
            # Slow writes before the SIGKILL, so that it catches queued saves.
            daemon.start({"CKPTD_TEST_FAULTS": "delay=write:8"} if sig == signal.SIGTERM else None)
            restarted.append(sig)

    t = threading.Thread(target=restarter)
    t.start()
    told = []
    for step in range(1, 70):
        for v in model.values():
            v.fill_(float(step))
        r = run.maybe_save(step, model=model)
        if r.state != "skipped":
            told.append(step)
        progress[0] = step
        time.sleep(0.01)
    t.join()
    for v in model.values():
        v.fill_(70.0)
    run.close(step=70, model=model)
    assert restarted == [signal.SIGTERM, signal.SIGKILL]
    assert run.reconnects >= 2
    if transport == "shm":  # saves queued in the killed daemon were sent again from their arenas
        assert "sent again from its arena" in caplog.text
    told.append(70)
    weights = os.path.join(daemon.root, "survivor", "weights")
    steps = sorted(int(m.group(1)) for m in map(re.compile(r"step_(\d+)\.gguf$").match, os.listdir(weights)) if m)
    assert steps == told
    reader = ckptd.connect(daemon.target).open_run("survivor")
    for step in told:
        dst = {"w": torch.zeros(1 << 18), "b": torch.zeros(300)}
        assert reader.restore(model=dst, step=step).step == step
        assert torch.all(dst["w"] == float(step)) and torch.all(dst["b"] == float(step)), step
    assert reader.latest()[0] == 70


def test_open_run_waits_for_a_daemon_that_is_restarting_and_fails_at_once_without_one(tmp_path):
    """A trainer started while its daemon restarts (its socket still there)
    waits for it, as a run's calls do; with no socket at all there is no
    daemon to wait for."""
    import threading
    import time

    d = Daemon(tmp_path).start()
    d.proc.kill()  # SIGKILL: the socket file stays behind
    d.proc.wait()
    assert os.path.exists(d.sock)
    restart = threading.Timer(1.0, d.start)
    restart.start()
    t0 = time.monotonic()
    try:
        run = ckptd.connect(d.target).open_run("waited")
        assert run.id == "waited"
        assert time.monotonic() - t0 >= 0.9
    finally:
        restart.join()  # the daemon it starts is stopped here, whatever happened
        d.stop()
    t0 = time.monotonic()
    with pytest.raises(ckptd.Error) as e:
        ckptd.connect("unix:" + str(tmp_path / "nobody-here.sock")).open_run("x")
    assert e.value.code == "UNAVAILABLE"
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("alignment", [32, 4096])
def test_reads_past_the_page_cache_give_every_byte_and_buffered_reads_do_too(tmp_path, monkeypatch, alignment):
    """Checkpoint.read_into reads with O_DIRECT through bounce buffers, and
    buffered where the filesystem refuses O_DIRECT (its open fails, as on
    older tmpfs or some FUSE filesystems); either way every tensor comes back
    byte for byte: tensors at 32-byte offsets (unaligned for O_DIRECT),
    across the 8 MiB piece edges, and the file's last, unaligned byte."""
    cfg = tmp_path / "align.toml"
    cfg.write_text(f"[storage]\nalignment = {alignment}\n")
    d = Daemon(tmp_path, ["--config", str(cfg)]).start()
    try:
        run = ckptd.connect(d.target).open_run("direct", transport="stream")
        g = torch.Generator().manual_seed(7)
        piece = ckptd.reader.PIECE // 4
        model = {"one": torch.randn(1, generator=g), "odd": torch.randn(1023, generator=g),
                 "edge": torch.randn(piece + 5, generator=g), "two": torch.randn(2 * piece - 3, generator=g),
                 "last": torch.randn(77, generator=g)}
        run.save(1, model=model)
        path = run.latest()[1]
    finally:
        d.stop()
    assert os.path.getsize(path) % 4096 != 0 or alignment == 4096

    def refuse_direct(p, flags, *args, real_open=os.open):
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(p, flags, *args)

    for direct in (True, False):
        if not direct:
            monkeypatch.setattr(ckptd.reader.os, "open", refuse_direct)
        with ckptd.reader.Checkpoint(path, train_path="") as c, ThreadPoolExecutor(4) as pool:
            for name, want in model.items():
                got = np.empty(want.numel() * 4, dtype=np.uint8)
                c.read_into(name, got, pool)
                assert got.tobytes() == want.numpy().tobytes(), (direct, name)
            assert (c._direct_fds[path] is not None) == direct
