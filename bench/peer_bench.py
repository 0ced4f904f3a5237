#!/usr/bin/python3
"""Peer replication over a real, rate-limited link, in one run (medians of
the rounds), against the limits measured on the same link:

- two network namespaces joined by a veth pair, each end shaped with tc's
  token bucket to --gbit (so the link, not the 2 CPUs, is the limit); one
  daemon per namespace, node A sending its memory steps to node B;
- iperf3 over the same link, before and after the rounds: the link's rate;
- replication: a --mib memory step saved on A; the sender's time from its
  log line ("peers: replicated ... seconds="); rate against iperf3;
- CPU per replicated GiB of A's and B's daemons (utime + stime from /proc
  over each round: A's includes writing the memory step to its tmpfs);
- restore: A is lost (daemon killed, disk and memory wiped) and replaced;
  the trainer's restore() fetches the step from B's memory; then, the page
  cache dropped, the same step restored again from A's disk (cold): both
  whole restores (read, every digest checked), same step, same run.
- with Ceph RGW installed: the same step restored from the object store
  (dev RGW in B's namespace, so over the same link) with B's daemon down,
  against the peer; the step is then a disk step, uploaded and replicated.

Needs root (namespaces, tc, drop_caches) and iperf3 (install-deps --bench).

  bench/peer_bench.py --build build [--mib 256] [--rounds 3] [--gbit 2]
  (--gbit 0: the veth unshaped, so the CPUs are the limit)
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.environ.get("CKPTD_PYTHON_LIB") or os.path.join(ROOT, "build", "python", "lib"))

import numpy as np  # noqa: E402

import ckptd  # noqa: E402
import netns  # noqa: E402
from netns import sh  # noqa: E402

MiB = 1 << 20
A_IP, B_IP = "10.77.0.1", "10.77.0.2"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def Link(gbit):
    return netns.Link("pb", A_IP, B_IP, gbit)


class Store:
    """The dev RGW (scripts/dev-s3.sh) in B's namespace, on B's address."""

    def __init__(self, base, ns, ip):
        self.dir = os.path.join(base, "s3")
        self.ns = ns
        out = sh("ip", "netns", "exec", ns, "env", f"CKPTD_DEV_S3_IP={ip}", "CKPTD_DEV_S3_BLOCK_GIB=4",
                 os.path.join(ROOT, "scripts", "dev-s3.sh"), "start", self.dir, timeout=240).stdout
        self.env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        prog = ("import boto3, sys\n"
                "boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2],"
                " aws_secret_access_key=sys.argv[3], region_name='us-east-1')"
                ".create_bucket(Bucket='bench')\n")
        sh("ip", "netns", "exec", ns, "/usr/bin/python3", "-c", prog, self.env["CKPTD_S3_ENDPOINT"],
           self.env["CKPTD_S3_ACCESS_KEY"], self.env["CKPTD_S3_SECRET_KEY"])

    def config(self):
        return (f'[tier.s3]\nendpoint = "{self.env["CKPTD_S3_ENDPOINT"]}"\nbucket = "bench"\n'
                'prefix = "peer-bench"\n')

    def stop(self):
        sh(os.path.join(ROOT, "scripts", "dev-s3.sh"), "stop", self.dir, check=False, timeout=120)


class Node:
    def __init__(self, build, base, name, ns, ip, nodes, max_bytes, store=None):
        self.build, self.ns, self.ip = build, ns, ip
        self.dir = os.path.join(base, name)
        self.memory = tempfile.mkdtemp(prefix=f"ckptd-peer-bench-{name}-", dir="/dev/shm")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "ckptd.sock")
        self.log = os.path.join(self.dir, "daemon.log")
        self.cfg = os.path.join(self.dir, "ckptd.toml")
        with open(self.cfg, "w") as f:
            f.write(f'[memory]\nroot = "{self.memory}"\nkeep_last = 2\n'
                    f'[peers]\nlisten = "{ip}:7077"\nnodes = [{", ".join(nodes)}]\n'
                    f'max_bytes = {max_bytes}\ninsecure = true\n' + (store.config() if store else ""))
        self.env = {**os.environ, **(store.env if store else {})}
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, os.path.join(self.build, "daemon", "ckptd"),
                 "--config", self.cfg, "--root", os.path.join(self.dir, "runs"),
                 "--listen", "unix:" + self.sock, "--http-listen", ""],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(open(self.log).read()[-2000:])
            time.sleep(0.05)
        return self

    def lose(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(os.path.join(self.dir, "runs"), ignore_errors=True)
        shutil.rmtree(self.memory, ignore_errors=True)
        os.makedirs(self.memory)
        os.remove(self.sock)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        shutil.rmtree(self.memory, ignore_errors=True)

    def uploaded(self, step, timeout=600):
        deadline = time.monotonic() + timeout
        while f"tier: uploaded run=bench step={step} " not in open(self.log).read():
            if time.monotonic() > deadline:
                raise RuntimeError(f"step {step} was not uploaded: {open(self.log).read()[-2000:]}")
            time.sleep(0.05)

    def replicated(self, step, timeout=600):
        pat = re.compile(rf"peers: replicated run=bench step={step} peer=\S+ bytes=(\d+) seconds=([\d.]+)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pat.search(open(self.log).read())
            if m:
                return int(m.group(1)), float(m.group(2))
            time.sleep(0.05)
        raise RuntimeError(f"step {step} was not replicated: {open(self.log).read()[-2000:]}")


def restore_on_replacement(node, schedule, state, step, tier):
    """The node lost and restarted empty; its trainer's restore(), timed:
    it must bring back `step` from `tier`, every tensor equal to `state`.
    Returns the run, the restored tensors and the seconds."""
    node.lose()
    node.start()
    run = ckptd.connect("unix:" + node.sock).open_run("bench", schedule=schedule)
    dest = {k: np.zeros_like(v) for k, v in state.items()}
    t = time.perf_counter()
    info = run.restore(model=dest)
    seconds = time.perf_counter() - t
    assert info.step == step and info.tier == tier, info
    assert all(np.array_equal(dest[k], state[k]) for k in state)
    return run, dest, seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gbit", type=float, default=2)
    ap.add_argument("--store", choices=("auto", "on", "off"), default="auto",
                    help="also restore from Ceph RGW (auto: where radosgw is installed)")
    args = ap.parse_args()
    with_store = args.store == "on" or (args.store == "auto" and shutil.which("radosgw"))
    if os.geteuid() != 0 or not shutil.which("iperf3"):
        print("peer_bench: needs root and iperf3 (scripts/install-deps.sh --bench); skipped")
        return
    build = os.path.abspath(args.build)
    n = args.mib * MiB // 4 // 8
    state = {f"layer{i}": np.random.default_rng(i).standard_normal(n, dtype=np.float32) for i in range(8)}
    base = tempfile.mkdtemp(prefix="ckptd-peer-bench-")
    link_rates, rates, cpu_a, cpu_b = [], [], [], []
    store, store_s, store_split = None, None, ""
    with Link(args.gbit) as link:
        nodes = [f'"{A_IP}:7077"', f'"{B_IP}:7077"']
        store = Store(base, link.ns[1], B_IP) if with_store else None
        a = Node(build, base, "a", link.ns[0], A_IP, nodes, 8 * args.mib * MiB, store).start()
        b = Node(build, base, "b", link.ns[1], B_IP, nodes, 8 * args.mib * MiB).start()
        try:
            schedule = {"every_steps": 1000000, "memory_every_steps": 1}
            run = ckptd.connect("unix:" + a.sock).open_run("bench", schedule=schedule)
            link_rates.append(link.iperf())
            for step in range(1, args.rounds + 1):
                ca, cb = cpu_seconds(a.proc.pid), cpu_seconds(b.proc.pid)
                for v in state.values():
                    v[:16] += 1  # a new step's bytes
                run.maybe_save(step, model=state)
                run.wait()
                nbytes, seconds = a.replicated(step)
                rates.append(nbytes / seconds)
                time.sleep(0.2)
                gib = nbytes / (1 << 30)
                cpu_a.append((cpu_seconds(a.proc.pid) - ca) / gib)
                cpu_b.append((cpu_seconds(b.proc.pid) - cb) / gib)
            link_rates.append(link.iperf())
            last = args.rounds
            if store:  # a disk step, so that the store has it too
                last += 1
                for v in state.values():
                    v[:16] += 1
                run.save(last, model=state)
                run.wait()
                a.uploaded(last)
                a.replicated(last)
            run.close()
            # A is lost and replaced: restore from B's memory, then from A's disk, cold.
            run, dest, peer_s = restore_on_replacement(a, schedule, state, last, "peer")
            fetched = re.search(rf"peers: fetched run=bench step={last} from peer=\S+ bytes=\d+ "
                                r"seconds=([\d.]+) (\(.*\))", open(a.log).read())
            fetch_s = float(fetched.group(1)) if fetched else float("nan")
            fetch_split = fetched.group(2) if fetched else ""
            cold = []
            for _ in range(args.rounds):
                sh("sync")
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
                t = time.perf_counter()
                info = run.restore(model=dest, remote=False)
                cold.append(time.perf_counter() - t)
                assert info.step == last and info.tier == "disk", info
            if store:  # A lost again, B down: the store is the only source left
                b.stop()
                run, dest, store_s = restore_on_replacement(a, schedule, state, last, "store")
                m = re.search(rf"tier: fetched run=bench step={last} files=\d+ bytes=\d+ seconds=([\d.]+)",
                              open(a.log).read())
                store_split = f"(of which {float(m.group(1)):.3f} s fetching into the node)" if m else ""
        finally:
            a.stop()
            b.stop()
            if store:
                store.stop()
    shutil.rmtree(base, ignore_errors=True)
    link_rate = statistics.median(link_rates)
    rate = statistics.median(rates)
    size = args.mib * MiB
    shaped = f"link shaped to {args.gbit:g} Gbit/s" if args.gbit > 0 else "veth unshaped"
    print(f"\nPeer replication, {args.mib} MiB memory step, {shaped}, {args.rounds} rounds (medians)")
    print(f"{'':<38}{'measured':>14}{'limit':>14}{'ratio':>8}")
    print(f"{'replication rate (MB/s), vs iperf3':<38}{rate / 1e6:>14.1f}{link_rate / 1e6:>14.1f}"
          f"{rate / link_rate:>8.2f}")
    print(f"{'sender CPU (s per replicated GiB)':<38}{statistics.median(cpu_a):>14.2f}")
    print(f"{'receiver CPU (s per replicated GiB)':<38}{statistics.median(cpu_b):>14.2f}")
    print(f"{'restore from a peer (s), vs cold disk':<38}{peer_s:>14.3f}{statistics.median(cold):>14.3f}"
          f"{statistics.median(cold) / peer_s:>8.2f}")
    print(f"  (of which {fetch_s:.3f} s fetching into the node {fetch_split}; the rest the "
          f"trainer's read)")
    if store_s is not None:
        print(f"{'restore from the store (RGW) (s), vs peer':<38}{store_s:>14.3f}{peer_s:>14.3f}"
              f"{store_s / peer_s:>8.2f}")
        print(f"  {store_split}; the same step, over the same link, after a disk step's upload")
    print(f"  ({size / peer_s / 1e6:.0f} MB/s from the peer over the link, "
          f"{size / statistics.median(cold) / 1e6:.0f} MB/s from the disk, cold)")


if __name__ == "__main__":
    main()
