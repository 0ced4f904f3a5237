"""Exact or loud, through the real daemon and the real clients: a
training-state file is tied to its model file by step and save (not only by
the model's content, which frozen weights repeat), every header byte is
under a digest, a file's name and its ckpt.step agree, and recovery moves
what it cannot trust to quarantine/ instead of deleting it."""

import os
import shutil
import subprocess

import pytest
import torch

import ckptd
from ckptd.v1 import ckptd_pb2 as pb
from conftest import BINARY

CKPTCTL = os.environ.get("CKPTCTL_BINARY",
                         os.path.join(os.path.dirname(BINARY), "..", "client", "cli", "ckptctl"))


def frozen_run(daemon, name):
    """Steps 1 and 2 with equal model tensors (a frozen backbone) and
    different optimizer state: step 2's Adam has taken one more step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    run = ckptd.connect(daemon.target).open_run(name, transport="stream")
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    for step in (1, 2):
        model(torch.randn(3, 8)).sum().backward()
        opt.step()
        model.load_state_dict(frozen)  # the weights do not move
        run.save(step, model=model, optimizer=opt)
    run.wait()
    return run, model, opt


def weights(daemon, name):
    return os.path.join(daemon.root, name, "weights")


def flip(path, needle, offset=0, bit=0x01):
    data = bytearray(open(path, "rb").read())
    at = data.index(needle)
    data[at + offset] ^= bit
    open(path, "wb").write(bytes(data))


def quarantined(daemon, name):
    c = ckptd.connect(daemon.target)
    return list(c.stub.ListCheckpoints(pb.ListCheckpointsRequest(run_id=name)).quarantined)


def test_a_train_file_of_another_step_with_equal_model_tensors_is_refused(daemon):
    run, model, opt = frozen_run(daemon, "frozen")
    w = weights(daemon, "frozen")
    a = open(os.path.join(w, "step_1.gguf"), "rb").read()
    # The two model files hold the same tensors, so the same content digest.
    assert ckptd.gguf.read_header(os.path.join(w, "step_1.gguf")).metadata["ckpt.content_digest"] == \
        ckptd.gguf.read_header(os.path.join(w, "step_2.gguf")).metadata["ckpt.content_digest"]
    assert len(a) > 0
    shutil.copy(os.path.join(w, "step_2.train.gguf"), os.path.join(w, "step_1.train.gguf"))
    with pytest.raises(ckptd.gguf.GgufError, match="it is step 2's training state, the model file is step 1"):
        run.restore(model=model, optimizer=opt, step=1)
    with pytest.raises(ckptd.gguf.GgufError, match="is not saved with it"):
        ckptd.load(os.path.join(w, "step_1.gguf"))
    # Recovery at the next start: the foreign train file goes to quarantine/,
    # and step 1 no longer claims training state it does not have.
    daemon.stop()
    daemon.start()
    q = quarantined(daemon, "frozen")
    assert [os.path.basename(f.file) for f in q] == ["step_1.train.gguf"], q
    assert "it is step 2's training state" in q[0].reason
    run = ckptd.connect(daemon.target).open_run("frozen", transport="stream")
    with pytest.raises(ValueError, match="holds no optimizer state"):
        run.restore(model=model, optimizer=opt, step=1)
    assert run.restore(model=model, optimizer=opt, step=2).step == 2


def test_a_flipped_metadata_value_is_refused_by_restore_load_and_verify(daemon):
    run = ckptd.connect(daemon.target).open_run("meta", transport="stream")
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run.save(4, model=model, optimizer=opt)
    run.wait()
    w = weights(daemon, "meta")
    train = os.path.join(w, "step_4.train.gguf")
    good = open(train, "rb").read()
    # One bit of a value the resume depends on (ckpt.step's u64: 4 -> 5).
    flip(train, b"ckpt.step", offset=len("ckpt.step") + 4)
    assert ckptd.gguf.read_header(train).metadata["ckpt.step"] == 5
    with pytest.raises(ckptd.gguf.GgufError, match="metadata digest mismatch"):
        run.restore(model=model, optimizer=opt, step=4)
    out = subprocess.run([CKPTCTL, "verify", train], capture_output=True, text=True)
    assert out.returncode != 0 and "metadata digest mismatch" in out.stderr + out.stdout, out
    open(train, "wb").write(good)
    assert run.restore(model=model, optimizer=opt, step=4).step == 4
    # The model file's architecture: "llama" -> "llamb" is refused as well.
    run2 = ckptd.connect(daemon.target).open_run("arch", metadata={"general.architecture": "llama"},
                                                 transport="stream")
    run2.save(1, model={"w": torch.ones(4)})
    run2.wait()
    path = os.path.join(weights(daemon, "arch"), "step_1.gguf")
    flip(path, b"llama", offset=4, bit=0x03)
    assert ckptd.gguf.read_header(path).metadata["general.architecture"] == "llamb"
    with pytest.raises(ckptd.gguf.GgufError, match="metadata digest mismatch"):
        ckptd.load(path)
    with pytest.raises(ckptd.gguf.GgufError, match="metadata digest mismatch"):
        run2.restore(model={"w": torch.zeros(4)}, step=1)
    out = subprocess.run([CKPTCTL, "verify", path], capture_output=True, text=True)
    assert out.returncode != 0, out


def test_step_ones_files_under_step_threes_names_are_refused_then_quarantined(daemon):
    run = ckptd.connect(daemon.target).open_run("names", transport="stream")
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1)
        run.save(step, model=model, optimizer=opt)
    run.wait()
    w = weights(daemon, "names")
    for suffix in (".gguf", ".train.gguf"):
        shutil.copy(os.path.join(w, "step_1" + suffix), os.path.join(w, "step_3" + suffix))
    with pytest.raises(ckptd.gguf.GgufError, match="its header says step 1"):
        run.restore(model=model, optimizer=opt, step=3)
    with pytest.raises(ckptd.gguf.GgufError, match="its header says step 1"):
        ckptd.load(os.path.join(w, "step_3.gguf"))
    daemon.stop()
    daemon.start()
    q = quarantined(daemon, "names")
    assert sorted(os.path.basename(f.file) for f in q) == ["step_3.gguf", "step_3.train.gguf"], q
    run = ckptd.connect(daemon.target).open_run("names", transport="stream")
    info = run.restore(model=model, optimizer=opt)
    assert info.step == 2  # latest moved back to the newest step it can trust
    ls = subprocess.run([CKPTCTL, "--socket", daemon.target, "ls", "names"], capture_output=True,
                        text=True)
    assert ls.returncode == 0, ls.stderr
    assert "QUARANTINED" in ls.stdout and "step_3.gguf" in ls.stdout and "its header says step 1" in ls.stdout


def test_a_damaged_model_file_never_costs_its_intact_train_file(daemon):
    run = ckptd.connect(daemon.target).open_run("trunc", transport="stream")
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.Adam(model.parameters())
    for step in (1, 2):
        model(torch.randn(2, 64)).sum().backward()
        opt.step()
        run.save(step, model=model, optimizer=opt)
    run.wait()
    w = weights(daemon, "trunc")
    train = open(os.path.join(w, "step_2.train.gguf"), "rb").read()
    daemon.stop()
    os.truncate(os.path.join(w, "step_2.gguf"), 4096)
    daemon.start()
    qdir = os.path.join(daemon.root, "trunc", "quarantine")
    assert open(os.path.join(qdir, "step_2.train.gguf"), "rb").read() == train
    assert "runs past the end" in open(os.path.join(qdir, "step_2.gguf.why")).read()
    assert os.readlink(os.path.join(w, "latest")) == "step_1.gguf"
    log = open(daemon.log).read()
    assert "recovery run=trunc quarantined" in log and "step_2.train.gguf" in log
    run = ckptd.connect(daemon.target).open_run("trunc", transport="stream")
    assert run.restore(model=model, optimizer=opt).step == 1


def test_restore_falls_back_to_the_newest_intact_step_and_says_why(daemon):
    run = ckptd.connect(daemon.target).open_run("fallback", transport="stream")
    saved = {}
    for step in (1, 2, 3):
        w = torch.full((1024,), float(step))
        run.save(step, model={"w": w})
        saved[step] = w
    run.wait()
    path = os.path.join(weights(daemon, "fallback"), "step_3.gguf")
    f = ckptd.gguf.read_header(path)
    t = f.by_name["w"]
    data = bytearray(open(path, "rb").read())
    data[f.data_offset + t.offset + 100] ^= 0x04  # one bit of the tensor's bytes
    open(path, "wb").write(bytes(data))
    dst = {"w": torch.zeros(1024)}
    info = run.restore(model=dst)
    assert info.step == 2, info
    assert torch.equal(dst["w"], saved[2])
    assert len(info.skipped) == 1 and info.skipped[0].startswith("step 3: "), info.skipped
    assert "does not match its digest" in info.skipped[0], info.skipped
    # A step asked for is never swapped for another; nor with fall_back=False.
    with pytest.raises(ckptd.DigestMismatch):
        run.restore(model=dst, step=3)
    with pytest.raises(ckptd.DigestMismatch):
        run.restore(model=dst, fall_back=False)


def test_the_scrubber_quarantines_a_damaged_step_and_latest_moves_back(tmp_path):
    import urllib.request

    from conftest import Daemon, logged_port, wait_for

    cfg = tmp_path / "scrub.toml"
    cfg.write_text("[storage]\nscrub_bytes_per_second = 1073741824\nscrub_min_age_seconds = 0\n")
    d = Daemon(tmp_path, ["--config", str(cfg), "--http-listen", "127.0.0.1:0"]).start()
    try:
        run = ckptd.connect(d.target).open_run("scrubbed", transport="stream")
        model = torch.nn.Linear(16, 16)
        opt = torch.optim.Adam(model.parameters())
        for step in (1, 2, 3):
            model(torch.randn(2, 16)).sum().backward()
            opt.step()
            run.save(step, model=model, optimizer=opt)
        run.wait()
        w = weights(d, "scrubbed")
        train = os.path.join(w, "step_3.train.gguf")
        f = ckptd.gguf.read_header(train)
        t = f.tensors[0]
        data = bytearray(open(train, "rb").read())
        data[f.data_offset + t.offset + t.nbytes // 2] ^= 0x10  # rot in the optimizer state
        open(train, "wb").write(bytes(data))
        qdir = os.path.join(d.root, "scrubbed", "quarantine")
        wait_for(lambda: os.path.exists(os.path.join(qdir, "step_3.train.gguf")), timeout=60,
                 what="the scrubber to quarantine step 3")
        assert os.readlink(os.path.join(w, "latest")) == "step_2.gguf"
        assert sorted(os.listdir(qdir)) == ["step_3.gguf", "step_3.gguf.why", "step_3.train.gguf",
                                            "step_3.train.gguf.why"]
        assert "does not match its digest" in open(os.path.join(qdir, "step_3.train.gguf.why")).read()
        assert run.restore(model=model, optimizer=opt).step == 2
        log = open(d.log).read()
        assert "scrub run=scrubbed step=3 is no longer a checkpoint; latest is step_2.gguf" in log
        port = logged_port(d.log)
        series = 'ckptd_quarantined_files_total{run="scrubbed",by="scrub"} 2'
        # Counted after the files moved and the log line: wait for it too.
        wait_for(lambda: series in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
                 .read().decode(), timeout=30, what=series)
    finally:
        d.stop()
