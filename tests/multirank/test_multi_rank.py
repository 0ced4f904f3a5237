"""Multi-rank steps across three "nodes": network namespaces joined by a
bridge in a fourth, the storage namespace, where a Ceph cluster with RGW
runs (scripts/dev-s3.sh on 127.100.0.10). Each node runs its own ckptd;
a trainer per node (rank 0, 1, 2) saves its part of each step through its
node's daemon (a Unix socket: reachable from the test's namespace). The
invariant every test checks after recovery: each step is committed on
every node and in the store (a manifest naming all three parts), or on
none and absent from the store; `latest` names the newest complete step
everywhere; no report or stray part is left."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

from conftest import BINARY, PYLIB, Daemon, wait_for  # noqa: E402

import ckptd  # noqa: E402
from ckptd.v1 import ckptd_pb2 as pb  # noqa: E402

DEV_S3 = os.path.join(ROOT, "scripts", "dev-s3.sh")
TRAINER = os.path.join(HERE, "trainer.py")
PY = "/usr/bin/python3"
MiB = 1 << 20
STORE_IP = "127.100.0.10"
WORLD = 3
TIMEOUT = 6.0  # multi_rank.part_timeout_seconds in these tests

pytest.importorskip("boto3")
if os.geteuid() != 0:
    pytest.skip("network namespaces need root", allow_module_level=True)
if not shutil.which("radosgw") or not shutil.which("ip"):
    pytest.skip("Ceph RGW or iproute2 is not installed (scripts/install-deps.sh installs them)",
                allow_module_level=True)


def sh(*args, timeout=60, check=True):
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


class Net:
    """The storage namespace (bridge, 127.100.0.10) and one per node
    (127.100.0.11...): each namespace's lo keeps only 127.0.0.1/32, and
    route_localnet lets 127/8 addresses cross the veths."""

    def __init__(self, nodes):
        tag = f"{os.getpid() % 100000}"
        self.storage = f"cks{tag}"
        self.nodes = [f"ckn{tag}x{i}" for i in range(nodes)]
        self.made = []

    def up(self):
        s = self.storage
        for ns in [s, *self.nodes]:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "-n", s, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", s, "addr", "add", f"{STORE_IP}/24", "dev", "br0")
        sh("ip", "-n", s, "link", "set", "br0", "up")
        for i, ns in enumerate(self.nodes):
            sh("ip", "-n", s, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "-n", s, "link", "set", f"v{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"127.100.0.{11 + i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        for ns in [s, *self.nodes]:
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo")
            sh("ip", "-n", ns, "addr", "add", "127.0.0.1/32", "dev", "lo")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
        sh("ip", "netns", "exec", s, "sysctl", "-qw", "net.ipv4.conf.br0.route_localnet=1")
        for ns in self.nodes:
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")

    def partition(self, i, down=True):
        sh("ip", "-n", self.nodes[i], "link", "set", "eth0", "down" if down else "up")

    def down(self):
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def cluster():
    d = tempfile.mkdtemp(prefix="ckptd-mr-")
    net = Net(WORLD)
    try:
        net.up()
        out = sh("ip", "netns", "exec", net.storage, "env", f"CKPTD_DEV_S3_IP={STORE_IP}",
                 "CKPTD_DEV_S3_BLOCK_GIB=4", DEV_S3, "start", d, timeout=180)
        env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        yield {"net": net, "dir": d, **env}
    finally:
        subprocess.run([DEV_S3, "stop", d], timeout=60)
        net.down()
        shutil.rmtree(d, ignore_errors=True)


def store(cluster, code, **kw):
    """Runs boto3 code in the storage namespace (the test's own cannot reach
    it); `s3`, `bucket`, `json` are defined; the code prints JSON."""
    prog = ("import boto3, json, sys\n"
            f"s3 = boto3.client('s3', endpoint_url={cluster['CKPTD_S3_ENDPOINT']!r}, "
            f"aws_access_key_id={cluster['CKPTD_S3_ACCESS_KEY']!r}, "
            f"aws_secret_access_key={cluster['CKPTD_S3_SECRET_KEY']!r}, region_name='us-east-1')\n"
            f"kw = json.loads({json.dumps(json.dumps(kw))})\n" + code)
    out = sh("ip", "netns", "exec", cluster["net"].storage, PY, "-c", prog, timeout=60)
    return json.loads(out.stdout)


def store_objects(cluster, bucket):
    return store(cluster, """
keys = {}
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=kw['bucket']):
    for o in page.get('Contents', []):
        keys[o['Key']] = o['Size']
uploads = s3.list_multipart_uploads(Bucket=kw['bucket']).get('Uploads', [])
out = {'keys': keys, 'uploads': len(uploads), 'docs': {}}
for k in keys:
    if k.endswith('.json') or k.endswith('/latest'):
        try:  # a report the coordinator deletes meanwhile
            out['docs'][k] = json.loads(s3.get_object(Bucket=kw['bucket'], Key=k)['Body'].read())
        except s3.exceptions.NoSuchKey:
            pass
print(json.dumps(out))
""", bucket=bucket)


class Node(Daemon):
    """One node's ckptd, run in the node's namespace; its socket is a file,
    so trainers and the test reach it from outside."""

    def __init__(self, cluster, i, bucket, base, extra=""):
        self.i, self.ns = i, cluster["net"].nodes[i]
        self.dir = os.path.join(base, f"node{i}")
        os.makedirs(self.dir, exist_ok=True)
        self.root = os.path.join(self.dir, "runs")
        self.sock = os.path.join(self.dir, "ckptd.sock")
        self.log = os.path.join(self.dir, "daemon.log")
        self.cfg = os.path.join(self.dir, "ckptd.toml")
        with open(self.cfg, "w") as f:
            f.write(f'[tier.s3]\nendpoint = "{cluster["CKPTD_S3_ENDPOINT"]}"\nbucket = "{bucket}"\n'
                    f'prefix = "mr"\npart_size = {5 * MiB}\nstall_timeout_seconds = 5\n{extra}')
        self.env = {**os.environ, "CKPTD_S3_ACCESS_KEY": cluster["CKPTD_S3_ACCESS_KEY"],
                    "CKPTD_S3_SECRET_KEY": cluster["CKPTD_S3_SECRET_KEY"],
                    "CKPTD_TEST_MULTI_RANK_POLL_S": "0.3"}
        self.proc = None

    def start(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, BINARY, "--root", self.root, "--listen",
                 "unix:" + self.sock, "--http-listen", "", "--log-level", "debug", "--config",
                 self.cfg], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, 30,
                 f"node {self.i}'s ckptd")
        assert self.proc.poll() is None, open(self.log).read()[-3000:]
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        # The query channel first: an open connection holds the daemon's
        # graceful shutdown to its deadline.
        if getattr(self, "_chan_for", None) is not None:
            self._chan.close()
            self._chan_for = None
        super().stop()

    def client(self):
        return ckptd.Client("unix:" + self.sock, reconnect_timeout=10)

    def _ask(self, method, req):
        """A query through one channel per daemon process; a busy machine's
        slow connect (UNAVAILABLE) is tried again for up to 60 s."""
        if getattr(self, "_chan_for", None) is not self.proc:
            self._chan, self._chan_for = ckptd.Client("unix:" + self.sock), self.proc
        deadline = time.monotonic() + 60
        while True:
            try:
                return getattr(self._chan.stub, method)(req, timeout=30)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def info(self, run):
        return self._ask("GetRun", pb.GetRunRequest(run_id=run))

    def steps(self, run):
        r = self._ask("ListCheckpoints", pb.ListCheckpointsRequest(run_id=run))
        return sorted(ck.step for ck in r.checkpoints)

    def part_files(self, run):
        w = os.path.join(self.root, run, "weights")
        return sorted(n for n in os.listdir(w) if "-of-" in n) if os.path.isdir(w) else []


@pytest.fixture
def nodes(cluster, tmp_path):
    bucket = "mr-" + uuid.uuid4().hex[:10]
    store(cluster, "s3.create_bucket(Bucket=kw['bucket']); print('{}')", bucket=bucket)
    ns = [Node(cluster, i, bucket, str(tmp_path)) for i in range(WORLD)]
    for n in ns:
        n.bucket = bucket
        n.start()
    yield ns
    for n in ns:
        n.stop()
    for n in ns:  # the daemons' logs, for a failed test's report
        print(f"==== node {n.i} log (tail)\n" + open(n.log, errors="replace").read()[-4000:])


class Trainer:
    def __init__(self, node, run, rank, steps, mib=1.0):
        self.lines = []
        self.proc = subprocess.Popen(
            [PY, TRAINER, "--socket", node.sock, "--run", run, "--rank", str(rank), "--world",
             str(WORLD), "--steps", ",".join(map(str, steps)), "--mib", str(mib),
             "--part-timeout", str(TIMEOUT)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": PYLIB})

    def wait_line(self, want, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.strip())
            if line.strip() == want:
                return
        raise AssertionError(f"trainer never printed {want!r}: {self.lines}")

    def finish(self, timeout=120):
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines()
        return self.proc.returncode

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def settle(nodes, run, timeout=TIMEOUT + 40):
    """Until no node has a part waiting for its verdict."""
    wait_for(lambda: all(not n.info(run).pending_steps for n in nodes), timeout,
             "every node's parts decided")


def check_atomic(cluster, nodes, run, tried):
    """The invariant, after recovery: complete everywhere or absent everywhere."""
    settle(nodes, run)
    base = f"mr/{run}/"
    # A report that lands after its step's verdict (a PUT retried across a
    # partition) is removed at the coordinator's next listing, at most
    # kQuietPollS (5 s) later on an idle run: every report must go, within
    # a deadline.
    wait_for(lambda: not [k for k in store_objects(cluster, nodes[0].bucket)["keys"]
                          if k.startswith(base + "parts/")], 30, "every part report removed")

    # A failed step's part whose PUT the node gave up on can land after its
    # first delete; the node deletes it again 15 s later (the withdrawal's
    # recheck): every such part must go, within a deadline.
    def failed_parts():
        objs = store_objects(cluster, nodes[0].bucket)
        committed = {objs["docs"][k]["step"] for k in objs["docs"]
                     if k.startswith(base) and k.endswith(".manifest.json")}
        return [k for k in objs["keys"] for step in tried
                if step not in committed and k.startswith(f"{base}step_{step}-")]
    try:
        wait_for(lambda: not failed_parts(), 40, "the failed steps' parts deleted")
    except AssertionError as e:
        raise AssertionError(f"{e}: {failed_parts()}") from None
    objs = store_objects(cluster, nodes[0].bucket)
    keys, docs = objs["keys"], objs["docs"]
    manifests = {docs[k]["step"]: docs[k] for k in docs if k.startswith(base) and
                 k.endswith(".manifest.json")}
    assert not [k for k in keys if k.startswith(base + "parts/")], "reports left behind"
    assert objs["uploads"] == 0, "a multipart upload was left open"
    committed = [set(n.steps(run)) for n in nodes]
    for step in tried:
        if step in manifests:
            m = manifests[step]
            assert sorted(p["rank"] for p in m["parts"]) == list(range(WORLD)), m
            for f in m["files"]:
                assert f["key"] in keys and keys[f["key"]] == f["size"], (step, f)
            for i, c in enumerate(committed):
                assert step in c, f"step {step} is in the store but not committed on node {i}"
        else:
            for i, c in enumerate(committed):
                assert step not in c, f"step {step} committed on node {i} but not in the store"
            assert not [k for k in keys if k.startswith(f"{base}step_{step}-")], \
                f"parts of failed step {step} left in the store"
            for n in nodes:
                assert not [f for f in n.part_files(run) if f.startswith(f"step_{step}-")], \
                    f"node {n.i} kept a part of failed step {step}"
    newest = max(manifests) if manifests else None
    if newest is not None:
        assert docs[base + "latest"]["step"] == newest
    for n in nodes:
        info = n.info(run)
        assert (info.last_step if info.HasField("last_step") else None) == newest, n.i
        if newest is not None:
            link = os.readlink(os.path.join(n.root, run, "weights", "latest"))
            assert link == f"step_{newest}-{n.i + 1:05d}-of-{WORLD:05d}.gguf"
    return set(manifests), docs


def gather_parts(cluster, nodes, run, step, dest):
    """Once `step` is committed everywhere: its parts copied from every node
    into `dest`, as a loader wants them (side by side); the first's path."""
    wait_for(lambda: all(n.steps(run) == [step] for n in nodes), 60, f"step {step} everywhere")
    check_atomic(cluster, nodes, run, [step])
    os.makedirs(dest)
    for n in nodes:
        name = f"step_{step}-{n.i + 1:05d}-of-{WORLD:05d}.gguf"
        shutil.copy(os.path.join(n.root, run, "weights", name), os.path.join(dest, name))
    return os.path.join(dest, f"step_{step}-00001-of-{WORLD:05d}.gguf")


def test_a_step_commits_everywhere_only_once_every_rank_s_part_is_durable(cluster, nodes):
    run = "mr-basic"
    ts = [Trainer(nodes[r], run, r, [10, 20]) for r in range(WORLD)]
    assert [t.finish() for t in ts] == [0] * WORLD, [t.lines for t in ts]
    wait_for(lambda: all(n.steps(run) == [10, 20] for n in nodes), 60, "steps 10, 20 everywhere")
    done, docs = check_atomic(cluster, nodes, run, [10, 20])
    assert done == {10, 20}
    m = docs[f"mr/{run}/step_20.manifest.json"]
    assert m["world_size"] == WORLD and len(m["files"]) == 2 * WORLD  # part + train file each
    # Each node's part has the split keys llama.cpp reads, model metadata in the first.
    from ckptd import gguf
    for n in nodes:
        info = n.info(run)
        assert (info.world_size, info.rank) == (WORLD, n.i)
        part = os.path.join(n.root, run, "weights", f"step_20-{n.i + 1:05d}-of-00003.gguf")
        md = gguf.read_header(part).metadata
        assert (md["split.no"], md["split.count"], md["split.tensors.count"]) == (n.i, 3, 6)

    # Ranks 0 and 1 save step 30, rank 2 never does: invisible, then aborted.
    ts = [Trainer(nodes[r], run, r, [30]) for r in (0, 1)]
    assert [t.finish() for t in ts] == [0, 0]
    # Each save said what it did: its part durable here, the step not committed.
    assert all("saved 30 pending staged" in t.lines for t in ts), [t.lines for t in ts]
    for n in nodes[:2]:
        assert list(n.info(run).pending_steps) == [30]
        assert n.steps(run) == [10, 20]  # never listed while a part is missing
    done, docs = check_atomic(cluster, nodes, run, [10, 20, 30])
    assert done == {10, 20}
    failed = docs[f"mr/{run}/step_30.failed.json"]
    assert failed["missing_ranks"] == [2], failed
    assert "aborted" in nodes[0].info(run).last_error and "2" in nodes[0].info(run).last_error
    # Rank 2's part of the failed step, late: removed too.
    assert Trainer(nodes[2], run, 2, [30]).finish() == 0
    wait_for(lambda: not nodes[2].part_files(run) or
             all(not f.startswith("step_30-") for f in nodes[2].part_files(run)), 30,
             "the late part removed")
    check_atomic(cluster, nodes, run, [10, 20, 30])


STEPS = list(range(1, 9))


def test_a_trainer_killed_mid_save_aborts_its_step_everywhere(cluster, nodes):
    run = "mr-trainer-killed"
    ts = [Trainer(nodes[r], run, r, STEPS, mib=16) for r in range(WORLD)]
    ts[1].wait_line("saving 4")
    ts[1].kill()  # mid-save of step 4 (or just before its part was staged)
    assert ts[0].finish() == 0 and ts[2].finish() == 0
    done, docs = check_atomic(cluster, nodes, run, STEPS)
    assert {1, 2, 3} <= done, done
    assert not done & {5, 6, 7, 8}, done  # rank 1 never saved them
    for step in (5, 6, 7, 8):
        assert docs[f"mr/{run}/step_{step}.failed.json"]["missing_ranks"] == [1]


@pytest.mark.parametrize("victim", [2, 0], ids=["a-rank", "the-coordinator"])
def test_a_node_s_ckptd_killed_mid_save_recovers_to_complete_or_absent(cluster, nodes, victim):
    run = f"mr-daemon-killed-{victim}"
    ts = [Trainer(nodes[r], run, r, STEPS, mib=16) for r in range(WORLD)]
    ts[victim].wait_line("saving 3")
    time.sleep(0.05)
    nodes[victim].kill()  # SIGKILL, mid-save of step 3, uploads of earlier parts perhaps in flight
    time.sleep(1)
    nodes[victim].start()  # recovery: pending parts found on disk, uploads resumed, verdicts read
    for t in ts:
        assert t.finish(timeout=180) == 0
    done, _ = check_atomic(cluster, nodes, run, STEPS)
    assert {1, 2, 8} <= done, done  # before the kill, and once the trainer reconnected


def test_a_partitioned_node_s_steps_abort_and_its_parts_go_when_it_is_back(cluster, nodes):
    run = "mr-partition"
    net = cluster["net"]
    ts = [Trainer(nodes[r], run, r, STEPS, mib=4) for r in range(WORLD)]
    ts[1].wait_line("saved 2 pending staged")
    net.partition(1)
    try:
        for t in ts:
            assert t.finish(timeout=180) == 0  # local saves never wait for the store
        # Node 1 cannot report; the coordinator aborts what it misses, and
        # node 1's parts stay invisible meanwhile.
        wait_for(lambda: store_objects(cluster, nodes[0].bucket)["docs"].get(
            f"mr/{run}/step_8.failed.json"), TIMEOUT + 60, "step 8 aborted")
        assert 8 in nodes[1].info(run).pending_steps
        assert 8 not in nodes[1].steps(run)
    finally:
        net.partition(1, down=False)
    done, docs = check_atomic(cluster, nodes, run, STEPS)
    assert 8 not in done, done
    assert docs[f"mr/{run}/step_8.failed.json"]["missing_ranks"] == [1]


def test_a_whole_tensor_step_loads_in_llama_cpp_as_a_split_model(cluster, nodes, tmp_path):
    """Three ranks each save a third of a tiny Llama's tensors (llama.cpp
    names and layout, as a ggml trainer holds them): the first part, given to
    llama.cpp, loads the three as one model whose logits equal the
    single-file model's; and each node's part reads back exactly the bytes
    its rank saved."""
    import numpy as np
    import tiny_llama as tl

    # The single-file reference: llama.cpp's layout, from the hf-llama export.
    os.makedirs(tmp_path / "single")
    one = Daemon(tmp_path / "single").start()
    try:
        with ckptd.Client(one.target) as c:
            r = c.open_run("single", metadata=tl.metadata(), exports=["hf-llama"],
                           transport="stream")
            r.save(1, model=tl.hf_model())
            r.close()
        single = os.path.join(one.root, "single", "weights", "step_1.hf-llama.gguf")
        weights = ckptd.load(single)
        meta = {k: v for k, v in ckptd.gguf.read_header(single).metadata.items()
                if k.startswith("llama.") and k not in tl.metadata(hf_names=False)}
    finally:
        one.stop()
    meta.update(tl.metadata(hf_names=False), **{"general.architecture": "llama"})
    names = list(weights)
    run = "mr-llama"
    saved = {}
    for rank, n in enumerate(nodes):
        mine = {k: weights[k] for k in names[rank::WORLD]}
        saved[rank] = mine
        with n.client() as c:
            r = c.open_run(run, metadata=meta, transport="stream",
                           multi_rank={"world_size": WORLD, "rank": rank,
                                       "part_timeout_seconds": TIMEOUT,
                                       "total_tensors": len(names)})
            r.save(1, model=mine)
    # llama.cpp is given the first part and finds the others beside it.
    first = gather_parts(cluster, nodes, run, 1, os.path.join(tmp_path, "split"))
    got = tl.llama_cpp_logits(first)
    want = tl.llama_cpp_logits(single)
    assert np.abs(got - want).max() < 1e-6, np.abs(got - want).max()
    # Restore at the same world size: each rank's part, exactly its bytes.
    for n in nodes:
        back = ckptd.load(os.path.join(n.root, run, "weights", "latest"), verify=True)
        model = {k: v for k, v in back.items() if k in weights}
        assert sorted(model) == sorted(saved[n.i])
        for k, v in saved[n.i].items():
            assert model[k].tobytes() == v.tobytes(), k


CKPTCTL = os.environ.get("CKPTCTL_BINARY", os.path.join(ROOT, "build", "client", "cli", "ckptctl"))


def test_a_row_sliced_step_merges_into_the_single_process_checkpoint(cluster, nodes, tmp_path):
    """FSDP-style: every rank holds a slice of every tensor (rows, the
    outermost dimension, and for one tensor columns); `ckptctl merge` joins
    the parts into a file whose tensor data equals, byte for byte, the
    checkpoint one process holding the whole tensors writes."""
    import numpy as np
    rng = np.random.default_rng(7)
    full = {"emb": rng.standard_normal((9, 16)).astype(np.float32),   # rows split 3/3/3
            "proj": rng.standard_normal((6, 12)).astype(np.float32),  # columns split 4/4/4
            "norm": rng.standard_normal(16).astype(np.float32)}       # whole, on rank 0
    run = "mr-sliced"
    for rank, n in enumerate(nodes):
        mine = {"emb": full["emb"][3 * rank:3 * rank + 3], "proj": full["proj"][:, 4 * rank:4 * rank + 4]}
        if rank == 0:
            mine["norm"] = full["norm"]
        slices = [{"name": "emb", "full_ne": [16, 9], "dim": 1, "offset": 3 * rank},
                  {"name": "proj", "full_ne": [12, 6], "dim": 0, "offset": 4 * rank}]
        with n.client() as c:
            r = c.open_run(run, transport="stream",
                           multi_rank={"world_size": WORLD, "rank": rank,
                                       "part_timeout_seconds": TIMEOUT, "slices": slices})
            r.save(5, model=mine)
    first = gather_parts(cluster, nodes, run, 5, os.path.join(tmp_path, "parts"))
    merged = os.path.join(tmp_path, "merged.gguf")
    out = sh(CKPTCTL, "merge", first, "-o", merged)
    assert "2 reassembled from slices" in out.stdout, out.stdout
    # The single-process checkpoint of the same tensors.
    os.makedirs(tmp_path / "single")
    one = Daemon(tmp_path / "single").start()
    try:
        with ckptd.Client(one.target) as c:
            r = c.open_run("single", transport="stream")
            r.save(5, model=full)
        single = os.path.join(one.root, "single", "weights", "step_5.gguf")
    finally:
        one.stop()

    def tensor_bytes(path):
        h = ckptd.gguf.read_header(path)
        with open(path, "rb") as f:
            data = {}
            for t in h.tensors:
                f.seek(h.data_offset + t.offset)
                data[t.name] = (list(t.ne), t.type, f.read(t.nbytes))
            return data
    got, want = tensor_bytes(merged), tensor_bytes(single)
    assert sorted(got) == sorted(want) == ["emb", "norm", "proj"]
    for name in want:
        assert got[name] == want[name], name
    # Restore at world size 1: the merged file is an ordinary, verified
    # checkpoint; or straight from the parts.
    back = ckptd.load(merged, verify=True)
    for name, v in full.items():
        assert np.array_equal(back[name], v), name
    sh(CKPTCTL, "verify", merged)
    for name, v in ckptd.load_step(first).items():
        assert v.tobytes() == full[name].tobytes(), name
    # Restore at world size 2: each new rank's rows of emb and columns of proj.
    for rank, (rows, cols) in enumerate([((0, 5), (0, 6)), ((5, 4), (6, 6))]):
        mine = ckptd.load_step(first, select={"emb": (1, *rows), "proj": (0, *cols)})
        assert mine["emb"].tobytes() == full["emb"][rows[0]:rows[0] + rows[1]].tobytes()
        assert mine["proj"].tobytes() == np.ascontiguousarray(
            full["proj"][:, cols[0]:cols[0] + cols[1]]).tobytes()
    # Restore at world size 3: each rank's part gives exactly its slices.
    for rank, n in enumerate(nodes):
        got = ckptd.load(os.path.join(n.root, run, "weights", "latest"), verify=True)
        assert got["emb"].tobytes() == full["emb"][3 * rank:3 * rank + 3].tobytes()


def test_a_new_node_restores_its_rank_s_part_from_the_store(cluster, nodes):
    """Node 1's disk is lost after step 20 committed: restarted empty, its
    rank's trainer restores exactly what rank 1 saved, fetched from the
    store (its part and training state only), and the step is committed
    there again (listed, `latest`), not pending."""
    import numpy as np
    import trainer as tr
    run = "mr-new-node"
    ts = [Trainer(nodes[r], run, r, [10, 20]) for r in range(WORLD)]
    assert [t.finish() for t in ts] == [0] * WORLD
    check_atomic(cluster, nodes, run, [10, 20])
    nodes[1].stop()
    shutil.rmtree(os.path.join(nodes[1].root, run))
    nodes[1].start()
    with nodes[1].client() as c:
        r = c.open_run(run, transport="stream", multi_rank={"world_size": WORLD, "rank": 1})
        want = tr.tensors(1, 20, 1.0)
        got = {k: np.zeros_like(v) for k, v in want.items()}
        info = r.restore(got)
        assert info is not None and info.step == 20
        for k, v in want.items():
            assert got[k].tobytes() == v.tobytes(), k
    files = sorted(os.listdir(os.path.join(nodes[1].root, run, "weights")))
    assert files == ["latest", "step_20-00002-of-00003.gguf", "step_20-00002-of-00003.train.gguf",
                     "step_20.commit"], files
    assert nodes[1].steps(run) == [20] and not nodes[1].info(run).pending_steps


def test_retention_drops_whole_steps_never_a_part_without_its_siblings(cluster, nodes):
    """keep_last 1 with remote retention "same": in the store a dropped
    step goes whole (its manifest first, then every rank's files); on each
    node its part goes with it, and no node ever drops a step it has not
    committed."""
    import numpy as np
    run = "mr-retention"
    runs = []
    for rank, n in enumerate(nodes):
        c = n.client()
        runs.append((c, c.open_run(run, transport="stream", retention={"keep_last": 1},
                                   tier={"remote_retention": "same"},
                                   multi_rank={"world_size": WORLD, "rank": rank,
                                               "part_timeout_seconds": TIMEOUT})))
    for step in (10, 20, 30):
        for rank, (c, r) in enumerate(runs):
            r.save(step, model={f"w{rank}": np.full(64, step, np.float32)})
        wait_for(lambda: all(n.steps(run) == [step] for n in nodes), 60, f"step {step} everywhere")
    for c, r in runs:
        c.close()
    wait_for(lambda: sorted(k for k in store_objects(cluster, nodes[0].bucket)["keys"]
                            if k.endswith(".manifest.json")) == [f"mr/{run}/step_30.manifest.json"],
             60, "remote retention down to step 30")
    done, _ = check_atomic(cluster, nodes, run, [30])
    assert done == {30}
    keys = store_objects(cluster, nodes[0].bucket)["keys"]
    assert sorted(k.rsplit("/", 1)[1] for k in keys if "-of-" in k) == sorted(
        f"step_30-{r + 1:05d}-of-00003{ext}" for r in range(WORLD) for ext in (".gguf", ".train.gguf"))
    for n in nodes:
        assert n.part_files(run) == sorted([f"step_30-{n.i + 1:05d}-of-00003.gguf",
                                            f"step_30-{n.i + 1:05d}-of-00003.train.gguf"])


def test_bad_multi_rank_settings_and_saves_are_refused_naming_what_to_fix(cluster, nodes):
    import numpy as np
    n = nodes[0]
    cases = [
        ({"world_size": 3, "rank": 3}, {}, "INVALID_ARGUMENT", "multi_rank.rank"),
        ({"world_size": 70000, "rank": 0}, {}, "INVALID_ARGUMENT", "u16"),
        ({"world_size": 3, "rank": 0, "part_timeout_seconds": -1}, {}, "INVALID_ARGUMENT",
         "part_timeout_seconds"),
        ({"world_size": 3, "rank": 0, "slices": [{"name": "w", "full_ne": [4, 6], "dim": 2}]}, {},
         "INVALID_ARGUMENT", "dim"),
        ({"world_size": 3, "rank": 0, "slices": [{"name": "w", "full_ne": [4, 6], "dim": 1, "offset": 6}]},
         {}, "INVALID_ARGUMENT", "offset"),
        ({"world_size": 3, "rank": 0}, {"tier": {"local_only": True}}, "FAILED_PRECONDITION",
         "object-storage tier"),
        ({"world_size": 3, "rank": 0}, {"exports": ["hf-llama"]}, "INVALID_ARGUMENT", "merge"),
    ]
    with n.client() as c:
        for i, (mr, extra, code, words) in enumerate(cases):
            with pytest.raises(ckptd.Error) as e:
                c.open_run(f"mr-bad-{i}", transport="stream", multi_rank=mr, **extra)
            assert e.value.code == code and words in e.value.message, (mr, e.value.message)
            assert not os.path.exists(os.path.join(n.root, f"mr-bad-{i}", "ckptd-run.json"))
        r = c.open_run("mr-bad-save", transport="stream", multi_rank={
            "world_size": 3, "rank": 0, "slices": [{"name": "w", "full_ne": [4, 6], "dim": 1}]})
        with pytest.raises(ckptd.Error) as e:  # not a slice of the declared tensor
            r.save(1, model={"w": np.zeros((2, 5), np.float32)})
        assert e.value.code == "INVALID_ARGUMENT" and "not a slice" in e.value.message
        r.save(1, model={"w": np.zeros((2, 4), np.float32)})
        with pytest.raises(ckptd.Error) as e:  # rewriting or rolling back: never
            r.save(2, model={"w": np.zeros((2, 4), np.float32)}, overwrite=True)
        assert e.value.code == "FAILED_PRECONDITION" and "multi-rank" in e.value.message
        with pytest.raises(ckptd.Error) as e:  # its part waits for the other ranks'
            r.save(1, model={"w": np.zeros((2, 4), np.float32)})
        assert e.value.code == "ALREADY_EXISTS" and "other ranks" in e.value.message
    assert n.part_files("mr-bad-save") == ["step_1-00001-of-00003.gguf",
                                           "step_1-00001-of-00003.train.gguf"]
    # A daemon without [tier.s3] cannot run a multi-rank run at all.
    os.makedirs(os.path.join(n.dir, "plain"), exist_ok=True)
    import pathlib
    plain = Daemon(pathlib.Path(n.dir) / "plain").start()
    try:
        with ckptd.Client(plain.target) as c, pytest.raises(ckptd.Error) as e:
            c.open_run("mr-plain", multi_rank={"world_size": 2, "rank": 1})
        assert e.value.code == "FAILED_PRECONDITION" and "[tier.s3]" in e.value.message
    finally:
        plain.stop()


def test_a_sliced_hf_llama_step_exports_for_llama_cpp_like_the_reference(cluster, nodes, tmp_path):
    """Every tensor of a tiny Llama (Hugging Face names) sliced by rows
    across the three ranks, unevenly: `ckptctl export` on the first part
    joins the slices and applies hf-llama; llama.cpp's logits match an
    independent forward pass of the whole weights."""
    import numpy as np
    import tiny_llama as tl
    weights = tl.hf_weights()
    run = "mr-hf-sliced"
    for rank, n in enumerate(nodes):
        mine, slices = {}, []
        for name, w in weights.items():
            rows = w.shape[0]
            a, b = rows * rank // WORLD, rows * (rank + 1) // WORLD
            mine[name] = w[a:b]
            slices.append({"name": name, "full_ne": list(reversed(w.shape)), "dim": w.ndim - 1,
                           "offset": a})
        with n.client() as c:
            r = c.open_run(run, metadata=tl.metadata(), transport="stream",
                           multi_rank={"world_size": WORLD, "rank": rank,
                                       "part_timeout_seconds": TIMEOUT, "slices": slices})
            r.save(3, model=mine)
    first = gather_parts(cluster, nodes, run, 3, os.path.join(tmp_path, "parts"))
    out = os.path.join(tmp_path, "export.gguf")
    got = sh(CKPTCTL, "export", first, "--profile", "hf-llama", "-o", out)
    assert f"{len(weights)} tensors joined from slices" in got.stdout, got.stdout
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # the merged temp is gone
    err = np.abs(tl.llama_cpp_logits(out) - tl.reference_logits(weights)).max()
    assert err < 1e-3, f"max |logit - reference| = {err}"


# -- tiers: memory steps, replicated to peers, restored by agreement ---------

TIER_TRAINER = os.path.join(HERE, "tier_rank_trainer.py")
TIER_SCHEDULE = {"every_steps": 20, "memory_every_steps": 5}
PEER_PORT = 7411  # in each node's own namespace: no other suite can take it


@pytest.fixture
def tier_nodes(cluster, tmp_path):
    """The three nodes with a memory tier each (tmpfs) and [peers] in a
    ring over the namespaces' link: node i sends its memory steps to node
    i + 1."""
    bucket = "mr-" + uuid.uuid4().hex[:10]
    store(cluster, "s3.create_bucket(Bucket=kw['bucket']); print('{}')", bucket=bucket)
    peers = [f"127.100.0.{11 + i}:{PEER_PORT}" for i in range(WORLD)]
    ring = ", ".join(f'"{p}"' for p in peers)
    ns = []
    try:
        for i in range(WORLD):
            memory = tempfile.mkdtemp(prefix=f"ckptd-mr-mem{i}-", dir="/dev/shm")
            extra = (f'[memory]\nroot = "{memory}"\nkeep_last = 3\n'
                     f'[peers]\nlisten = "{peers[i]}"\nnodes = [{ring}]\nreplicas = 1\n'
                     f'max_bytes = {64 * MiB}\ninsecure = true\n')
            n = Node(cluster, i, bucket, str(tmp_path), extra)
            n.bucket, n.memory = bucket, memory
            ns.append(n)
            n.start()
        yield ns
    finally:
        for n in ns:
            n.stop()
            shutil.rmtree(n.memory, ignore_errors=True)
        for n in ns:
            print(f"==== node {n.i} log (tail)\n" + open(n.log, errors="replace").read()[-4000:])


class RankTrainer:
    """tier_rank_trainer.py as rank `rank` on `node`."""

    def __init__(self, node, run, rank, until, attempt=None):
        args = [PY, TIER_TRAINER, "--socket", node.sock, "--run", run, "--rank", str(rank),
                "--world", str(WORLD), "--schedule", json.dumps(TIER_SCHEDULE),
                "--until", str(until)]
        if attempt:
            args += ["--attempt", attempt]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": PYLIB})

    def restored(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"trainer failed: {self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def wait_done(self):
        for line in self.proc.stdout:
            if line.strip() == "done":
                return
        self.proc.wait(10)
        raise AssertionError(f"trainer exited early: {self.proc.stderr.read()[-3000:]}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def test_ranks_agree_on_the_newest_step_complete_across_tiers_after_a_node_is_lost(cluster,
                                                                                   tier_nodes):
    """Three PyTorch ranks, memory steps every 5, disk (and the store)
    every 20. Rank 0 ran ahead and saved memory step 50; ranks 1 and 2
    reached step 47. Node 1 is lost (daemon killed, its runs and memory
    wiped) and replaced by an empty one. Every rank restores step 45, the
    newest step every rank can get its own part of: rank 1's part from
    node 2's memory (its ring peer), ranks 0 and 2 from their own memory;
    not 40 (the newest on disk and in the store: 5 more steps lost), and
    not rank 0's 50 (ranks 1 and 2 never saved it). Each rank gets exactly
    the state it had after step 45, lost work ≤ the memory interval for the
    ranks in step, and training goes on across the replaced node."""
    import tier_rank_trainer as trt
    nodes, run = tier_nodes, "mr-tiers"
    until = {0: 51, 1: 47, 2: 47}
    ts = [RankTrainer(nodes[r], run, r, until[r], attempt="start") for r in range(WORLD)]
    try:
        assert [t.restored()["restored"] for t in ts] == [None] * WORLD
        for t in ts:
            t.wait_done()
        wait_for(lambda: all(n.info(run).last_step == 40 for n in nodes), 60,
                 "step 40 committed on every node")
        wait_for(lambda: [n.info(run).memory_step for n in nodes] == [50, 45, 45], 60,
                 "memory steps 50, 45, 45")
        replica = os.path.join(nodes[2].memory, "replicas@peers", run, "rank-1",
                               f"step_45-00002-of-{WORLD:05d}.gguf")
        wait_for(lambda: os.path.exists(replica), 60, "rank 1's part of step 45 on node 2")
    finally:
        for t in ts:
            t.kill()
    lost = nodes[1]
    lost.kill()
    shutil.rmtree(lost.root)
    shutil.rmtree(lost.memory)
    os.makedirs(lost.memory)
    lost.start()
    ts = [RankTrainer(nodes[r], run, r, 60, attempt="restart-1") for r in range(WORLD)]
    try:
        got = [t.restored() for t in ts]
        assert [g["restored"] for g in got] == [45] * WORLD, got
        assert [g["tier"] for g in got] == ["memory", "peer", "memory"], got
        for rank, g in enumerate(got):
            assert g["digest"] == trt.digest(*trt.replay(rank, 45)), \
                f"rank {rank} did not get back exactly its state after step 45"
        # Work lost: rank 2 reached 47 (≤ the memory interval); rank 0,
        # ahead at 51, gives up 6; rank 1's node is new (nothing seen).
        assert got[2]["steps_lost"] == 2 and got[0]["steps_lost"] == 6, got
        objs = store_objects(cluster, nodes[0].bucket)
        reports = sorted(k.rsplit("/", 1)[1] for k in objs["keys"]
                         if k.startswith(f"mr/{run}/restores/restart-1/"))
        assert reports == [f"rank-{r}.json" for r in range(WORLD)]
        for t in ts:
            t.wait_done()
        wait_for(lambda: all(n.info(run).last_step == 60 for n in nodes), 90,
                 "step 60 committed on every node, the replaced one included")
    finally:
        for t in ts:
            t.kill()
    # The next restart: ranks 0 and 1 restore through Python, rank 2 through
    # the C++ SDK (ckptctl restore-check); all agree on step 60. Then the
    # first restart's id again: refused, training went on since.
    ts = [RankTrainer(nodes[r], run, r, 60, attempt="restart-2") for r in (0, 1)]
    try:
        cpp = sh(CKPTCTL, "--socket", "unix:" + nodes[2].sock, "restore-check", run, "--attempt",
                 "restart-2", "--json", timeout=180)
        assert json.loads(cpp.stdout)["step"] == 60, cpp.stdout
        assert [t.restored()["restored"] for t in ts] == [60, 60]
        reused = sh(CKPTCTL, "--socket", "unix:" + nodes[2].sock, "restore-check", run,
                    "--attempt", "restart-1", check=False, timeout=60)
        assert reused.returncode != 0 and "was used already" in reused.stderr, reused.stderr
    finally:
        for t in ts:
            t.kill()
