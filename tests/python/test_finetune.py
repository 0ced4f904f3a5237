"""Fine-tunes pay for what changed: a PyTorch run whose backbone (90 % of
its bytes) is frozen saves every step on an XFS file system with reflink,
made on a loop device by this test (root; skipped with the reason where
loop devices or XFS are unavailable). Each checkpoint allocates new blocks
only for its changed tensors; every file verifies and holds exactly the
bytes a plain write gives (the same run on ext4, compared data section by
data section); after retention deletes the first checkpoint the others
still verify and restore exactly. On ext4 nothing is shared, as before."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import Daemon, logged_port  # noqa: E402

import ckptd  # noqa: E402
import ckptd.gguf  # noqa: E402
from ckptd.v1 import ckptd_pb2 as pb  # noqa: E402

torch = pytest.importorskip("torch")

STEPS = 4
WIDTH = 512  # each Linear(512, 512): 1 MiB of weights


def sh(*args, timeout=60):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def xfs_dir():
    """A fresh XFS (reflink on) on a loop device, unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    if not shutil.which("mkfs.xfs") or not shutil.which("losetup"):
        pytest.skip("xfsprogs or losetup is missing (scripts/install-deps.sh installs xfsprogs)")
    work = tempfile.mkdtemp(prefix="ckx-")
    image, mnt = os.path.join(work, "xfs.img"), os.path.join(work, "m")
    os.makedirs(mnt)
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    made = sh("mkfs.xfs", "-q", "-m", "reflink=1", image)
    mounted = made.returncode == 0 and sh("mount", "-o", "loop", image, mnt).returncode == 0
    if not mounted:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"no XFS on a loop device here: {made.stderr.strip() or 'mount failed'}")
    try:
        yield pathlib.Path(mnt)
    finally:
        for _ in range(20):  # a daemon that just exited may still hold a file open
            if sh("umount", mnt).returncode == 0:
                break
            sh("sleep", "0.5")
        shutil.rmtree(work, ignore_errors=True)


def model_and_optimizer():
    torch.manual_seed(7)
    layers = [torch.nn.Linear(WIDTH, WIDTH) for _ in range(10)]
    model = torch.nn.Sequential(*layers)
    for layer in layers[:9]:  # the frozen backbone
        layer.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, opt


def train(d, run_id, retention=None, seal_frozen=False, poke_at=None, transport="auto"):
    """Trains STEPS steps, saving each; returns per step the bytes the file
    system allocated for it (statvfs), the listing, and the final model.
    `poke_at`: before that step's save, a frozen weight is written in place."""
    model, opt = model_and_optimizer()
    run = ckptd.connect(d.target).open_run(run_id, schedule={"every_steps": 1}, retention=retention,
                                           seal_frozen=seal_frozen, transport=transport)
    allocated = {}
    g = torch.Generator().manual_seed(1)
    for step in range(1, STEPS + 1):
        if step == poke_at:
            with torch.no_grad():
                model[0].weight.mul_(-1)
        x = torch.randn(32, WIDTH, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        os.sync()
        before = used(d.root)
        run.save(step, model=model, optimizer=opt, metrics={"loss": loss.item()})
        run.wait()
        os.sync()
        allocated[step] = used(d.root) - before
    listing = {c.step: c for c in run.client.stub.ListCheckpoints(
        pb.ListCheckpointsRequest(run_id=run_id)).checkpoints}
    run.close()
    return allocated, listing, model


def used(path):
    s = os.statvfs(path)
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def data_section(path):
    """The file's bytes from its data offset on: tensors and their padding."""
    header = ckptd.gguf.read_header(path)
    with open(path, "rb") as f:
        f.seek(header.data_offset)
        return f.read()


def changed_bytes(prev, now):
    """Bytes (padded to 4 KiB, headers included) of `now`'s files that differ
    from `prev`'s: every tensor whose digest changed, and each file's header."""
    total = 0
    for a, b in ((prev.file, now.file), (prev.train_file, now.train_file)):
        ha, hb = ckptd.gguf.read_header(a), ckptd.gguf.read_header(b)
        da = dict(zip((t.name for t in ha.tensors), ha.metadata["ckpt.tensor_digests"]))
        total += hb.data_offset
        for t, digest in zip(hb.tensors, hb.metadata["ckpt.tensor_digests"]):
            if da.get(t.name) != digest:
                total += -(-t.nbytes // 4096) * 4096
    return total


def test_a_frozen_backbone_is_shared_not_written_and_every_file_stays_whole(xfs_dir, tmp_path):
    xfs = Daemon(xfs_dir, ["--http-listen", "127.0.0.1:0"]).start()
    try:
        allocated, on_xfs, model = train(xfs, "ft", retention={"keep_last": STEPS - 1})
        port = logged_port(xfs.log)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        xfs.stop()
    (tmp_path / "ext4").mkdir()
    plain = Daemon(tmp_path / "ext4").start()
    try:
        _, on_ext4, _ = train(plain, "ft")
    finally:
        plain.stop()

    # Retention took step 1; the rest are whole: verified, and holding
    # exactly the bytes the plain write on ext4 gave.
    assert sorted(on_xfs) == list(range(2, STEPS + 1)), sorted(on_xfs)
    for step, c in on_xfs.items():
        for f in (c.file, c.train_file):
            subprocess.run([os.environ.get("CKPTCTL_BINARY", "ckptctl"), "verify", f], check=True,
                           capture_output=True, timeout=60)
        assert data_section(c.file) == data_section(on_ext4[step].file), step
        assert data_section(c.train_file) == data_section(on_ext4[step].train_file), step
        assert c.content_digest == on_ext4[step].content_digest
    # Each step after the first allocated new blocks only for what changed.
    frozen = 9 * (WIDTH * WIDTH * 4 + 4096)
    for step in range(3, STEPS + 1):
        changed = changed_bytes(on_xfs[step - 1], on_xfs[step])
        assert allocated[step] <= 1.1 * changed, (step, allocated[step], changed)
        assert on_xfs[step].shared_bytes >= frozen, on_xfs[step].shared_bytes
        assert on_ext4[step].shared_bytes == 0
    assert allocated[1] >= 10 * WIDTH * WIDTH * 4  # the first step writes everything
    shared = sum(c.shared_bytes for c in on_xfs.values())
    total = [line for line in metrics.splitlines() if line.startswith('ckptd_reflink_bytes_total{run="ft"}')]
    assert total and float(total[0].split()[-1]) >= shared, total

    # The newest step restores exactly into a fresh model.
    xfs = Daemon(xfs_dir).start()
    try:
        fresh, fresh_opt = model_and_optimizer()
        info = ckptd.connect(xfs.target).open_run("ft").restore(model=fresh, optimizer=fresh_opt)
        assert info.step == STEPS
        for (name, a), (_, b) in zip(fresh.state_dict().items(), model.state_dict().items()):
            assert torch.equal(a, b), name
    finally:
        xfs.stop()


def metric(port, name, run):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    lines = [line for line in text.splitlines() if line.startswith(f'{name}{{run="{run}"}}')]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_sealed_frozen_parameters_are_hashed_once_and_a_write_to_one_is_still_saved(tmp_path):
    """With seal_frozen, the frozen backbone moves once into memory sealed
    against writes (the kernel refuses a write to it) that the parameters
    map copy-on-write: the daemon hashes it at the first save only
    (ckptd_digest_known_bytes_total counts the rest), yet every file is the
    bytes a plain run writes, including after a frozen weight is written in
    place (that tensor is then saved from its new bytes), and the newest
    step restores exactly."""
    (tmp_path / "sealed").mkdir()
    (tmp_path / "plain").mkdir()
    poke = 3
    d = Daemon(tmp_path / "sealed", ["--http-listen", "127.0.0.1:0"]).start()
    try:
        _, sealed, model = train(d, "ft", seal_frozen=True, poke_at=poke, transport="shm")
        port = logged_port(d.log)
        known = metric(port, "ckptd_digest_known_bytes_total", "ft")
    finally:
        d.stop()
    d = Daemon(tmp_path / "plain").start()
    try:
        _, plain, plain_model = train(d, "ft", poke_at=poke, transport="shm")
    finally:
        d.stop()
    for step, c in sealed.items():
        assert data_section(c.file) == data_section(plain[step].file), step
        assert c.content_digest == plain[step].content_digest, step
    for (name, a), (_, b) in zip(model.state_dict().items(), plain_model.state_dict().items()):
        assert torch.equal(a, b), name
    # The frozen bytes (9 layers' weights and biases) were hashed at step 1
    # only; layer 0's weight, written before step `poke`, is hashed (and
    # staged) from then on.
    frozen = 9 * (WIDTH * WIDTH * 4 + WIDTH * 4)
    w0 = WIDTH * WIDTH * 4
    assert known == (poke - 2) * frozen + (STEPS - poke + 1) * (frozen - w0), known

    d = Daemon(tmp_path / "sealed").start()
    try:
        fresh, fresh_opt = model_and_optimizer()
        info = ckptd.connect(d.target).open_run("ft").restore(model=fresh, optimizer=fresh_opt)
        assert info.step == STEPS
        for (name, a), (_, b) in zip(fresh.state_dict().items(), model.state_dict().items()):
            assert torch.equal(a, b), name
        assert not torch.equal(fresh[0].weight, model_and_optimizer()[0][0].weight), "the write is saved"
    finally:
        d.stop()


def test_the_sealed_memory_refuses_writes_and_the_parameters_keep_their_values(tmp_path):
    d = Daemon(tmp_path).start()
    try:
        model, _ = model_and_optimizer()
        want = {k: v.clone() for k, v in model.state_dict().items()}
        run = ckptd.connect(d.target).open_run("s", seal_frozen=True, transport="shm")
        run.save(1, model=model)
        run.wait()
        sealed = run._sealed
        assert sealed is not None
        with pytest.raises(PermissionError):
            os.pwrite(sealed.fd, b"x", 0)
        for name, v in model.state_dict().items():
            assert torch.equal(v, want[name]), name
        w = model[1].weight
        assert sealed.base <= w.data_ptr() < sealed.base + sealed.size, "a view of the sealed memory"
        trainable = model[9].weight.data_ptr()
        assert not sealed.base <= trainable < sealed.base + sealed.size, "a trainable weight stays where it was"
        assert sealed.region(w.data_ptr(), w.numel() * 4) is not None
        with torch.no_grad():
            w[0, 0] += 1  # one page becomes the trainer's own
        assert sealed.region(w.data_ptr(), w.numel() * 4) is None
        run.close()
    finally:
        d.stop()
