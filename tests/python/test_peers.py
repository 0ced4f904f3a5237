"""Peer replication through real daemons and a real PyTorch trainer: three
"nodes" on this host, each a daemon with its own run root, memory tier
and [peers] listener on loopback, in a ring. Each recovery test states
the tier that served the restore and the work lost: a node lost and
replaced restores from a peer's memory; two nodes lost with k = 1 fall back
to disk, saying why; a stopped peer does not slow the trainer, lags, and
catches up; a peer's budget holds; a damaged replica is refused."""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import Daemon, wait_for  # noqa: E402
import tier_trainer  # noqa: E402
from test_tiers import assert_exactly, free_port, kill, train_until  # noqa: E402

import ckptd  # noqa: E402
import ckptd.gguf  # noqa: E402
from ckptd.v1 import ckptd_pb2 as pb  # noqa: E402
from ckptd.v1 import ckptd_pb2_grpc as pb_grpc  # noqa: E402

PY = "/usr/bin/python3"
MEMORY_EVERY = 5
SCHEDULE = {"every_steps": 50, "memory_every_steps": MEMORY_EVERY}

if not os.path.isdir("/dev/shm"):
    pytest.skip("no /dev/shm (tmpfs) for the memory tier", allow_module_level=True)


class Node:
    """One node: a daemon with its own runs, memory tier and peer port."""

    def __init__(self, base, name, peer_port, http_port):
        self.name = name
        self.dir = base / name
        self.dir.mkdir()
        self.memory = tempfile.mkdtemp(prefix=f"ckptd-peers-{name}-", dir="/dev/shm")
        self.peer = f"127.0.0.1:{peer_port}"
        self.http = f"127.0.0.1:{http_port}"
        self.daemon = None

    def configure(self, nodes, replicas=1, max_bytes=64 << 20, ring=True, server=""):
        cfg = self.dir / "ckptd.toml"
        peers = ", ".join(f'"{n}"' for n in nodes) if ring else ""
        cfg.write_text(f'[server]\n{server}\n[memory]\nroot = "{self.memory}"\nkeep_last = 3\n'
                       f'[peers]\nlisten = "{self.peer}"\nnodes = [{peers}]\nreplicas = {replicas}\n'
                       f'max_bytes = {max_bytes}\ninsecure = true\n')
        self.daemon = Daemon(self.dir, ["--config", str(cfg), "--http-listen", self.http])
        return self

    def start(self):
        self.daemon.start()
        return self

    def lose(self):
        """The node is gone: daemon killed, its run root and memory wiped."""
        if self.daemon.proc and self.daemon.proc.poll() is None:
            self.daemon.proc.send_signal(signal.SIGKILL)
            self.daemon.proc.wait()
        shutil.rmtree(self.daemon.root, ignore_errors=True)
        shutil.rmtree(self.memory, ignore_errors=True)
        os.makedirs(self.memory)

    def replicas(self, run_id):
        stub = pb_grpc.PeersStub(grpc.insecure_channel(self.peer))
        try:
            got = stub.ListReplicas(pb.ListReplicasRequest(run_id=run_id), timeout=5)
        except grpc.RpcError:
            return []
        return [r.step for r in got.replicas]

    def metric(self, name):
        text = urllib.request.urlopen(f"http://{self.http}/metrics", timeout=10).read().decode()
        return {line.split("{")[1].split("}")[0]: float(line.split()[-1])
                for line in text.splitlines() if line.startswith(name + "{")}

    def stop(self):
        if self.daemon:
            if self.daemon.proc and self.daemon.proc.poll() is None:
                self.daemon.proc.send_signal(signal.SIGCONT)  # a test may have stopped it
            self.daemon.stop()
        shutil.rmtree(self.memory, ignore_errors=True)


@pytest.fixture
def ring(tmp_path):
    made = []

    def make(replicas=1, budgets=None):
        nodes = [Node(tmp_path, n, free_port(), free_port()) for n in "abc"]
        addresses = [n.peer for n in nodes]
        for i, n in enumerate(nodes):
            n.configure(addresses, replicas, (budgets or {}).get(n.name, 64 << 20)).start()
        made.extend(nodes)
        return nodes

    yield make
    for n in made:
        n.stop()


def trainer(node, run_id):
    p = subprocess.Popen([PY, os.path.join(HERE, "tier_trainer.py"), run_id, json.dumps(SCHEDULE)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=node.daemon.env())
    restored = json.loads(p.stdout.readline() or "null")
    if restored is None:
        p.kill()
        raise RuntimeError(f"trainer did not start: {p.stderr.read()[-3000:]}")
    return p, restored


def train_and_kill(node, run_id, until):
    """Trains to at least `until`, then SIGKILLs the trainer; returns the
    last step it reported done."""
    p, _ = trainer(node, run_id)
    train_until(p, until)
    kill(p)
    return until


def restore(node, run_id):
    run = ckptd.connect(node.daemon.target).open_run(run_id, schedule=SCHEDULE)
    model, opt = tier_trainer.make()
    return run.restore(model=model, optimizer=opt), model, opt


def test_a_replacement_node_restores_from_a_peers_memory(ring):
    a, b, c = ring()
    reached = train_and_kill(a, "job", 73)
    wait_for(lambda: b.replicas("job") and max(b.replicas("job")) >= 70, 30, "b holds a's step 70")
    assert c.replicas("job") == []  # k = 1: only the next node in the ring
    a.lose()
    a.start()  # the replacement: empty disk, empty memory
    info, model, opt = restore(a, "job")
    lost = reached - info.step
    print(f"node lost at step {reached}: the replacement restored step {info.step} from "
          f"{info.tier}, {lost} steps lost (memory every {MEMORY_EVERY})")
    assert info.tier == "peer", info
    assert info.step == max(b.replicas("job")) and 0 <= lost <= MEMORY_EVERY, info
    assert_exactly(model, opt, info.step)


def test_two_nodes_lost_with_one_replica_fall_back_to_disk(ring):
    a, b, c = ring()
    reached = train_and_kill(a, "job", 73)
    wait_for(lambda: b.replicas("job") and max(b.replicas("job")) >= 70, 30, "b holds a's step 70")
    # a reboots (its memory tier is gone, its disk is not) and b is lost.
    a.daemon.proc.send_signal(signal.SIGKILL)
    a.daemon.proc.wait()
    shutil.rmtree(a.memory)
    os.makedirs(a.memory)
    b.lose()
    a.start()
    info, model, opt = restore(a, "job")
    print(f"a rebooted and b lost at step {reached}: restored step {info.step} from {info.tier}, "
          f"{reached - info.step} steps lost; elsewhere: {info.elsewhere}")
    assert (info.step, info.tier) == (50, "disk"), info  # the newest disk step
    assert f"peer {b.peer}" in info.elsewhere  # b did not answer
    assert f"peer {c.peer}: no replica of run 'job'" in info.elsewhere  # c never held one
    assert_exactly(model, opt, 50)


def test_a_stopped_peer_never_slows_the_trainer_and_catches_up(ring):
    a, b, c = ring()
    run = ckptd.connect(a.daemon.target).open_run("job", schedule=SCHEDULE)
    model, opt = tier_trainer.make()

    def train(first, last):
        stalls = []
        for step in range(first, last + 1):
            tier_trainer.train_step(model, opt, step)
            t = time.perf_counter()
            r = run.maybe_save(step, model=model, optimizer=opt)
            if r is not None and r.state != "skipped":
                stalls.append(time.perf_counter() - t)
        run.wait()
        return stalls

    healthy = train(1, 60)
    wait_for(lambda: max(b.replicas("job") or [0]) == 60, 30, "b holds step 60")
    b.daemon.proc.send_signal(signal.SIGSTOP)  # partitioned: takes connections, answers nothing
    try:
        stopped = train(61, 120)
        wait_for(lambda: a.metric("ckptd_peer_lag_steps").get(f'run="job",peer="{b.peer}"', 0) >= 60,
                 30, "a reports b's lag")
        lag = a.metric("ckptd_peer_lag_steps")[f'run="job",peer="{b.peer}"']
    finally:
        b.daemon.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: max(b.replicas("job") or [0]) == 120, 60, "b catches up")
    wait_for(lambda: a.metric("ckptd_peer_lag_steps")[f'run="job",peer="{b.peer}"'] == 0, 30,
             "the lag is back to 0")
    h, s = statistics.median(healthy), statistics.median(stopped)
    print(f"median save stall: {h * 1e3:.2f} ms with b up, {s * 1e3:.2f} ms with b stopped; "
          f"lag while stopped {lag:.0f} steps, then caught up to step 120")
    assert s <= 1.5 * h + 0.005, (h, s)


def test_a_daemon_stops_within_its_deadline_while_a_send_hangs_on_a_stopped_peer(ring):
    a, b, c = ring()
    a.daemon.stop()
    a.configure([a.peer, b.peer, c.peer], server="shutdown_deadline_seconds = 8").start()
    b.daemon.proc.send_signal(signal.SIGSTOP)  # accepts the connection, never answers
    try:
        run = ckptd.connect(a.daemon.target).open_run("job", schedule=SCHEDULE)
        model, opt = tier_trainer.make()
        tier_trainer.train_step(model, opt, 5)
        run.maybe_save(5, model=model, optimizer=opt)
        run.wait()
        wait_for(lambda: "peers: replicated" not in open(a.daemon.log).read() and
                 "memory step committed run=job step=5" in open(a.daemon.log).read(), 10, "step 5")
        time.sleep(0.5)  # the send to b is in flight, and hangs
        t = time.monotonic()
        a.daemon.proc.send_signal(signal.SIGTERM)
        rc = a.daemon.proc.wait(30)
        print(f"a stopped in {time.monotonic() - t:.2f} s with a send to a stopped peer in flight")
        assert rc == 0, open(a.daemon.log).read()[-2000:]  # 3: the shutdown deadline passed
    finally:
        b.daemon.proc.send_signal(signal.SIGCONT)


def test_a_peers_budget_holds_and_evicts_the_oldest(ring):
    a, b, c = ring()
    train_and_kill(a, "probe", 12)
    step_bytes = sum(os.path.getsize(os.path.join(a.memory, "probe", "weights", f))
                     for f in ("step_10.gguf", "step_10.train.gguf"))
    # b again, holding at most ~2.5 of a's replicas.
    budget = int(step_bytes * 2.5)
    b.daemon.stop()
    b.configure([a.peer, b.peer, c.peer], 1, budget).start()
    held_dir = os.path.join(b.memory, "replicas@peers")
    p, _ = trainer(a, "job")
    samples, rss = [], []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            with open(f"/proc/{b.daemon.proc.pid}/status") as f:
                rss += [int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")]
            total = 0
            for root, _, files in os.walk(held_dir):
                for f in files:
                    try:
                        total += os.path.getsize(os.path.join(root, f))
                    except FileNotFoundError:
                        pass
            samples.append(total)
            if max(b.replicas("job") or [0]) >= 400:
                break
            time.sleep(0.01)
    finally:
        kill(p)
    assert b.daemon.proc.poll() is None  # alive: nothing was killed
    held = b.replicas("job")
    print(f"b's budget {budget} bytes ({step_bytes} per replica): at most {max(samples)} bytes held "
          f"over {len(samples)} samples, b's RSS at most {max(rss) >> 20} MiB; holds steps {held}")
    assert max(samples) <= budget, max(samples)
    assert max(rss) < 256 << 20, max(rss)  # replicas live on tmpfs, not in the daemon's heap
    assert len(held) == 2 and held == sorted(held) and held[-1] >= 400  # the newest two
    assert "replica evicted run=job" in open(b.daemon.log).read()


def test_a_damaged_replica_is_refused_and_another_peer_serves(ring):
    a, b, c = ring(replicas=2)
    reached = train_and_kill(a, "job", 73)
    wait_for(lambda: max(b.replicas("job") or [0]) >= 70 and max(c.replicas("job") or [0]) >= 70,
             30, "b and c hold a's step 70")
    newest = max(b.replicas("job"))
    assert newest == max(c.replicas("job"))
    path = os.path.join(b.memory, "replicas@peers", "job", f"step_{newest}.gguf")
    header = ckptd.gguf.read_header(path)
    at = header.data_offset + header.tensors[0].offset + 5
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    a.lose()
    a.start()
    info, model, opt = restore(a, "job")
    print(f"node lost at step {reached}, b's replica of step {newest} damaged: restored step "
          f"{info.step} from {info.tier} (c)")
    assert (info.step, info.tier) == (newest, "peer")
    assert "damaged, dropped" in open(b.daemon.log).read()
    assert newest not in b.replicas("job")
    assert f"from peer={c.peer}" in open(a.daemon.log).read()
    assert_exactly(model, opt, newest)
