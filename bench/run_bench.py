#!/usr/bin/python3
"""make bench [ARGS=--quick]: ckptd against the physical limits and its peers,
all measured in one run on one filesystem, as a table and bench/out/latest.json.

Per size: warm memcpy into a pre-faulted memfd arena (the stall's floor);
the disk's limit: the best of fio sequential O_DIRECT writes at queue depth 1
(psync) and 8 (libaio), each with a final fsync; ckptd's shared-memory path
through ckptd::Checkpointer, its saves interleaved with those fio runs
(medians): the trainer's stall and the call-to-durable time, the daemon's CPU
seconds per GiB (/proc/PID/stat) and its private memory (RssAnon + RssFile,
sampled; the arenas it maps are the trainer's shared memory); then saves
spaced as a trainer spaces them (a pause after each at least as long as the
disk needs), whose stall p50 and p99 measure the copy, and saves back to
back (backpressure); the arena setup per GiB with 4 KiB pages and with
huge pages; ckptd's stream path over its Unix socket; torch.save + fsync
and numpy tofile + fsync. N trainers (1, 2, 4) saving at once to different
runs against fio with numjobs=N. The Python client, with a hot-restore
daemon: its shm save stall against a numpy copy of the same bytes and
torch.save + fsync; a cold torch.load; a hot restore (from the daemon's
in-memory copy) against a memcpy. Cold restores against the disk's read
limit are bench/restore_bench.py's, stream saves against theirs
bench/stream_bench.py's.
Every ratio is printed against its goal, marked where it falls short.
Numbers on shared machines are noisy: read the ratios within one run.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

MiB = 1 << 20
GiB = 1 << 30
THP_SHMEM = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


def best_of(n, fn):
    return min(fn() for _ in range(n))


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def memcpy_s(size):
    src = np.ones(size, dtype=np.uint8)
    dst = np.zeros(size, dtype=np.uint8)
    dst[:] = 1  # pre-fault
    return best_of(3, lambda: timed(lambda: np.copyto(dst, src)))


def median(values):
    return sorted(values)[len(values) // 2]


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class DaemonWatch:
    """The daemon's CPU seconds (utime + stime) and its private memory
    (RssAnon + RssFile, sampled every 10 ms) while `with` runs."""

    def __init__(self, pid):
        self.pid = pid
        self.private_max = 0
        self._stop = threading.Event()

    def cpu_s(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def private_rss(self):
        with open(f"/proc/{self.pid}/status") as f:
            text = f.read()
        return sum(int(m) * 1024 for m in re.findall(r"Rss(?:Anon|File):\s+(\d+) kB", text))

    def _sample(self):
        while not self._stop.wait(0.01):
            self.private_max = max(self.private_max, self.private_rss())

    def __enter__(self):
        self.private_max = self.private_rss()
        self._cpu0 = self.cpu_s()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.cpu = self.cpu_s() - self._cpu0


class ShmBench:
    """An interactive bench/shm_save_bench (one trainer, its arenas reserved)."""

    def __init__(self, build, sock, run, size, keep_last=0):
        env = dict(os.environ, BENCH_KEEP_LAST=str(keep_last))
        self.proc = subprocess.Popen([os.path.join(build, "bench/shm_save_bench"), sock, run, str(size),
                                      "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("shm_save_bench did not start")

    def send(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def reply(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("shm_save_bench failed")
        return json.loads(line)

    def ask(self, command):
        self.send(command)
        return self.reply()

    def close(self):
        self.proc.stdin.close()
        summary = json.loads(self.proc.stdout.readline())
        if self.proc.wait() != 0:
            raise RuntimeError("shm_save_bench failed")
        return summary


def shm_interleaved_with_fio(build, pid, sock, work, size, rounds, quick):
    """Alternates fio (QD1, then QD8) and a ckptd shm save, `rounds` times, and
    returns the medians of each: the disk's own speed drifts by ~30% within a
    minute here, so they are measured side by side rather than one after the
    other. Then saves spaced as a trainer spaces them and saves back to back
    (a run keeping its 2 newest checkpoints: the disk must hold them)."""
    bench = ShmBench(build, sock, "shm", size)
    qd1, qd8 = [], []
    with DaemonWatch(pid) as watch:
        for _ in range(rounds):
            qd1.append(fio_once(work, size, f"fio-{len(qd1)}.tmp", depth=1))
            qd8.append(fio_once(work, size, f"fio-q8-{len(qd8)}.tmp", depth=8))
            bench.ask("save")
    summary = bench.close()
    # Room for what follows (fio-0.tmp stays: the restore bench reads it).
    for name in os.listdir(work):
        if name.startswith("fio-") and name != "fio-0.tmp":
            os.remove(os.path.join(work, name))
    os.sync()
    time.sleep(3)  # let the deletions' discards drain
    # Spaced: a pause after each save of 2.5x the time the disk needed (its
    # rate drifts by half within minutes, and retention deletes as it goes).
    gap = max(0.2, 2.5 * summary["durable_s"])
    bench = ShmBench(build, sock, "shm-spaced", size, keep_last=2)
    spaced = bench.ask(f"spaced {8 if quick or size > GiB else 12} {gap:.3f}")
    burst = bench.ask("burst 4")
    bench.close()

    def med(v):
        return None if None in v else median(v)

    return {
        "summary": summary, "fio_qd1": med(qd1), "fio_qd8": med(qd8), "cpu_s": watch.cpu,
        "saves": rounds, "private_max": watch.private_max, "spaced": spaced, "gap_s": gap,
        "burst": burst,
    }


def fio_once(directory, size, name, depth=1, jobs=1):
    """Sequential 4 MiB O_DIRECT writes and a final fsync: psync at depth 1,
    libaio deeper; `jobs` writers of `size` bytes each. Aggregate MB/s."""
    if not shutil.which("fio"):
        return None
    path = os.path.join(directory, name)  # kept until the size is done (see main)
    engine = ["--ioengine=psync"] if depth == 1 else ["--ioengine=libaio", f"--iodepth={depth}"]
    multi = [f"--numjobs={jobs}", "--group_reporting"] if jobs > 1 else []
    target = [f"--directory={path}"] if jobs > 1 else [f"--filename={path}"]
    if jobs > 1:
        os.makedirs(path, exist_ok=True)
    out = subprocess.run(["fio", "--name=w", *target, "--rw=write", "--bs=4M", f"--size={size}",
                          "--direct=1", "--end_fsync=1", *engine, *multi, "--output-format=json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    job = json.loads(out.stdout)["jobs"][0]["write"]
    return job["bw_bytes"] / 1e6


def concurrent_trainers(build, sock, work, size, rounds):
    """N trainers (1, 2, 4) saving `size` bytes each at once to different runs:
    the aggregate call-to-durable rate against fio with numjobs=N (the best of
    QD1 and QD8), interleaved round by round."""
    results = []
    for n in (1, 2, 4):
        benches = [ShmBench(build, sock, f"conc-{n}-{i}", size, keep_last=2) for i in range(n)]
        ours, fio = [], []
        for r in range(rounds):
            f1 = fio_once(work, size, f"fio-c{n}-{r}", depth=1, jobs=n)
            f8 = fio_once(work, size, f"fio-c{n}-{r}-q8", depth=8, jobs=n)
            fio.append(None if f1 is None or f8 is None else max(f1, f8))
            t0 = time.perf_counter()
            for b in benches:
                b.send("save")
            for b in benches:
                b.reply()
            ours.append(n * size / (time.perf_counter() - t0) / 1e6)
        for b in benches:
            b.close()
        results.append({"n": n, "aggregate_MBps": median(ours),
                        "fio_MBps": None if None in fio else median(fio)})
    return results


def arena_setup(build, size):
    """Arena setup seconds with 4 KiB pages and with huge pages: shmem THP
    (shmem_enabled=advise, set here when run as root) or a hugetlb pool."""

    def once():
        return run_json([os.path.join(build, "bench/shm_save_bench"), "--arena-setup", str(size)])

    out = {"thp_setting": None}
    try:
        with open(THP_SHMEM) as f:
            out["thp_setting"] = re.search(r"\[(\w+)\]", f.read()).group(1)
    except OSError:
        return {**out, "small_s": once()["setup_s"], "huge_s": None}
    try:
        with open(THP_SHMEM, "w") as f:
            f.write("never")
        out["small_s"] = once()["setup_s"]
        with open(THP_SHMEM, "w") as f:
            f.write("advise")
        out["huge_s"] = once()["setup_s"]
    except OSError:  # not root: only the current setting
        r = once()
        out["small_s"] = r["setup_s"] if out["thp_setting"] == "never" else None
        out["huge_s"] = r["setup_s"] if out["thp_setting"] != "never" else None
    return out


def fsync_file(path, write):
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def numpy_s(directory, size):
    arr = np.ones(size // 4, dtype=np.float32)
    path = os.path.join(directory, "np.bin")
    return timed(lambda: fsync_file(path, arr.tofile))


def torch_s(directory, size):
    try:
        import torch
    except ImportError:
        return None
    n = 64 * MiB
    state = {f"blk.{i}.weight": torch.ones(min(n, size - i * n) // 4) for i in range((size + n - 1) // n)}
    path = os.path.join(directory, "torch.pt")
    return timed(lambda: fsync_file(path, lambda f: torch.save(state, f)))


def start_daemon(build, root, args=()):
    sock = f"unix:{root}/ckptd.sock"
    proc = subprocess.Popen([os.path.join(build, "daemon/ckptd"), "--root", root, "--listen", sock,
                             "--http-listen", "", *args], stderr=subprocess.PIPE, text=True)
    log = ""
    while "ready: listening" not in log:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("ckptd did not start:\n" + log)
        log += line
    return proc, sock


def run_json(argv):
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def numpy_copy_s(model, dst, rounds):
    """The floor of a save that copies: a numpy copy of the model's own
    tensors into `dst`, pre-faulted memory (median seconds of `rounds`)."""

    def copy_model():
        at = 0
        for t in model.values():
            src = t.numpy().view(np.uint8)
            np.copyto(dst[at:at + src.nbytes], src)
            at += src.nbytes

    return median([timed(copy_model) for _ in range(rounds)])


def with_daemon(build, root, fn, args=()):
    """Runs fn(socket, pid) against a fresh daemon; returns its result(s) and the daemon's peak RSS."""
    proc, sock = start_daemon(build, root, args)
    try:
        result = fn(sock, proc.pid)
        rss = peak_rss(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    return (*result, rss) if isinstance(result, tuple) else (result, rss)


def drop_caches():
    """Cold reads: write back and drop the page cache (root only); False when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def python_client(build, sock, scratch, size, rounds):
    """The Python client's save stall, hot restore, and their peers."""
    sys.path.insert(0, os.path.join(build, "python", "lib"))
    import ckptd
    import torch

    n = 64 * MiB
    model = {f"blk.{i}.weight": torch.ones(min(n, size - i * n) // 4) for i in range((size + n - 1) // n)}
    run = ckptd.connect(sock).open_run("py-bench", transport="shm", schedule={"every_steps": 0},
                                       retention={"keep_last": 2})
    run.save(0, model=model)  # arenas created and populated once, as a trainer's first save
    run.wait()
    # Each save beside its own numpy copy: memory bandwidth drifts too. The
    # copy's destination is faulted in once (as the arenas are), and is hot
    # restore's floor's destination below.
    dst = np.ones(size, dtype=np.uint8)
    stalls, copies = [], []
    for step in range(1, rounds + 1):
        copies.append(numpy_copy_s(model, dst, 1))
        stalls.append(run.save(step, model=model).stall_s)
        run.wait()
    numpy_copy = median(copies)

    # Hot restore's floor: copying the bytes out of a fresh read-only mapping
    # of a memfd (shmem pages, 4 KiB each here, where anonymous memory gets
    # huge pages), which is what a restarted trainer does.
    import mmap

    fd = os.memfd_create("bench")
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size) as m:
        np.frombuffer(m, dtype=np.uint8)[:] = 1

    def memfd_read(dst=dst):
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            src = np.frombuffer(m, dtype=np.uint8)
            np.copyto(dst, src)
            del src

    memfd_read_s = median([timed(memfd_read) for _ in range(5)])
    os.close(fd)
    del dst
    # Restores into the existing tensors (as a resumed trainer does); cold
    # restores against the disk's read limit: bench/restore_bench.py.
    hot = []
    for _ in range(rounds):
        info = run.restore(model=model)
        if info.source != "memory":
            raise RuntimeError("hot restore did not come from memory")
        hot.append(info.seconds)
    torch_path = os.path.join(scratch, "torch.pt")
    fsync_file(torch_path, lambda f: torch.save(model, f))
    drop_caches()
    torch_load = timed(lambda: torch.load(torch_path))
    # The C++ Restore, hot, through ckptctl restore-check.
    ckptctl = os.path.join(build, "client/cli/ckptctl")
    cpp_hot = run_json([ckptctl, "restore-check", "py-bench", "--json", "--socket", sock])
    run.close()
    return {
        "py_stall_s": median(stalls),
        "py_numpy_copy_s": numpy_copy,
        "restore_hot_s": median(hot),
        "memfd_read_s": memfd_read_s,
        "cpp_restore_hot_s": cpp_hot["seconds"] if cpp_hot["source"] == "memory" else None,
        "torch_load_s": torch_load,
    }


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


GOALS = [
    # (key in a size's results, label, goal, True when higher is better)
    ("durable_vs_fio", "ckptd durable / disk limit", 0.90, True),
    ("stall_p50_vs_memcpy", "stall p50 / memcpy", 1.10, False),
    ("stall_p99_vs_memcpy", "stall p99 / memcpy", 1.50, False),
    ("torch_vs_stall", "torch.save+fsync / stall p50", 20.0, True),
    ("daemon_private_rss_MiB", "daemon private RSS, MiB (max of paths)", 64.0, False),
    ("daemon_cpu_s_per_GiB", "daemon CPU s/GiB, shm", 0.30, False),
    ("arena_setup_huge_s_per_GiB", "arena setup s/GiB, huge pages", 0.30, False),
]


def ratios(r):
    """The goal ratios of one size's results (None where an input is missing)."""
    fio = r["fio_direct_MBps"]
    mbps = r["bytes"] / r["ckptd_durable_s"] / 1e6

    def div(a, b):
        return None if a is None or not b else a / b

    huge = r["arena_setup"]["huge_s"]
    return {
        "durable_vs_fio": div(mbps, fio),
        "stall_p50_vs_memcpy": div(r["ckptd_stall_p50_s"], r["memcpy_s"]),
        "stall_p99_vs_memcpy": div(r["ckptd_stall_p99_s"], r["memcpy_s"]),
        "torch_vs_stall": div(r["torch_save_fsync_s"], r["ckptd_stall_p50_s"]),
        "daemon_private_rss_MiB": r["daemon_private_rss_bytes"] / MiB,
        "daemon_cpu_s_per_GiB": r["daemon_cpu_s_per_GiB"],
        "arena_setup_huge_s_per_GiB": div(huge, r["bytes"] / GiB),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256 MiB and 1 GiB only")
    ap.add_argument("--build", default="build")
    ap.add_argument("--dir", default=None, help="where files are written (default: under --build)")
    ap.add_argument("--saves", type=int, default=3,
                    help="rounds of (fio QD1, fio QD8, save) per size; medians reported")
    args = ap.parse_args()
    sizes = [256 * MiB, 1024 * MiB] + ([] if args.quick else [4096 * MiB])
    work = tempfile.mkdtemp(dir=args.dir or args.build, prefix="bench-")
    fs = subprocess.run(["stat", "-f", "-c", "%T", work], capture_output=True, text=True).stdout.strip()
    results = []
    concurrent = []
    submission = None
    thp_before = None
    try:
        # Huge pages for the arenas (shmem THP on request), as the README
        # tells operators to set it; restored afterwards.
        try:
            with open(THP_SHMEM) as f:
                thp_before = re.search(r"\[(\w+)\]", f.read()).group(1)
            with open(THP_SHMEM, "w") as f:
                f.write("advise")
        except OSError:
            pass
        for size in sizes:
            # Everything a size writes stays until that size is done: the root
            # filesystem here is mounted with `discard`, and the TRIM after a
            # deletion slows the next writer (whichever tool that is).
            scratch = os.path.join(work, f"size-{size}")
            root = os.path.join(scratch, "root")
            os.makedirs(root)
            setup = arena_setup(args.build, size)
            shm, shm_rss = with_daemon(args.build, root, lambda sock, pid: shm_interleaved_with_fio(
                args.build, pid, sock, scratch, size, args.saves, args.quick))
            for run_dir in ("shm", "shm-spaced"):  # room for the rest of the size
                shutil.rmtree(os.path.join(root, run_dir), ignore_errors=True)
            os.sync()
            time.sleep(3)

            def stream_save(sock, pid):
                with DaemonWatch(pid) as watch:
                    out = run_json([os.path.join(args.build, "bench/stream_save_bench"), sock, "stream",
                                    "1", str(size)])
                return out, watch

            stream, stream_watch, stream_rss = with_daemon(args.build, root, stream_save)
            hot_cfg = os.path.join(scratch, "hot.toml")
            with open(hot_cfg, "w") as f:
                f.write(f"[shm]\nkeep_last_in_memory = true\nkeep_in_memory_max_bytes = {4 * size}\n")
            py, _ = with_daemon(args.build, root,
                                lambda sock, pid: python_client(args.build, sock, scratch, size, args.saves),
                                ["--config", hot_cfg])
            summary = shm["summary"]
            stalls = shm["spaced"]["stalls"]
            fio_best = None if shm["fio_qd1"] is None else max(shm["fio_qd1"], shm["fio_qd8"] or 0)
            r = {
                "bytes": size,
                "memcpy_s": summary["memcpy_s"],
                "fio_direct_MBps": fio_best,
                "fio_qd1_MBps": shm["fio_qd1"],
                "fio_qd8_MBps": shm["fio_qd8"],
                "ckptd_stall_s": median(stalls),
                "ckptd_stall_p50_s": percentile(stalls, 50),
                "ckptd_stall_p99_s": percentile(stalls, 99),
                "ckptd_stalls_s": stalls,
                "ckptd_stall_copies_s": shm["spaced"]["copies"],
                "ckptd_stall_waits_s": shm["spaced"]["waits"],
                "ckptd_spacing_s": shm["gap_s"],
                "ckptd_max_stall_s": max(stalls),
                "ckptd_waited_stall_s": summary["stall_s"],
                "ckptd_durable_s": summary["durable_s"],
                "ckptd_spaced_durable_s": shm["spaced"]["durable_s"],
                "backpressure_stall_p50_s": percentile(shm["burst"]["stalls"], 50),
                "backpressure_MBps": 4 * size / shm["burst"]["seconds"] / 1e6,
                "ckptd_arena_setup_s": summary["reserve_s"],
                "arena_setup": setup,
                "ckptd_saveshared_call_s": summary["call_s"],
                "daemon_cpu_s_per_GiB": shm["cpu_s"] / (shm["saves"] * size / GiB),
                "stream_daemon_cpu_s_per_GiB": stream_watch.cpu / (size / GiB),
                "torch_save_fsync_s": torch_s(scratch, size),
                "numpy_fsync_s": numpy_s(scratch, size),
                "stream_durable_s": stream["durable_s"],
                "stream_MBps": size / stream["durable_s"] / 1e6,
                "daemon_peak_rss_bytes": max(shm_rss, stream_rss),
                "shm_daemon_peak_rss_bytes": shm_rss,
                "stream_daemon_peak_rss_bytes": stream_rss,
                "daemon_private_rss_bytes": max(shm["private_max"], stream_watch.private_max),
                "shm_daemon_private_rss_bytes": shm["private_max"],
                "stream_daemon_private_rss_bytes": stream_watch.private_max,
                "numpy_memcpy_s": memcpy_s(size),
                **py,
            }
            results.append(r)
            if size == sizes[0]:
                concurrent, _ = with_daemon(args.build, root, lambda sock, pid: concurrent_trainers(
                    args.build, sock, scratch, size, args.saves))
            shutil.rmtree(scratch)
            os.sync()
            time.sleep(3)  # let the deletions' discards drain before the next size
        # The write submission A/B: pwrite threads (ckptd's) against io_uring.
        submission = None
        wpb = os.path.join(args.build, "bench/write_path_bench")
        if os.path.exists(wpb):
            os.makedirs(os.path.join(work, "wpb"))
            submission = run_json([wpb, os.path.join(work, "wpb"), str(GiB), str(args.saves)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if thp_before is not None:
            with open(THP_SHMEM, "w") as f:
                f.write(thp_before)

    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    print(f"ckptd bench on {fs}, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC"
          f" (shmem THP was '{thp_before}', 'advise' during the run)\n")
    print("trainer stall per save and save call -> durable file, seconds; the disk's limit, MB/s")
    print(f"{'size':>7} {'memcpy':>7} {'p50':>7} {'p99':>7} {'/memcpy':>11} {'torch':>7} "
          f"{'/p50':>5} {'backpr.':>7} | {'fio QD1':>7} {'QD8':>5} {'ckptd dur':>9} {'MB/s':>6} "
          f"{'/best':>5} | {'stream':>6} {'/best':>5} | {'CPU s/GiB':>9} {'private MiB':>11}")
    for r in results:
        fio = r["fio_direct_MBps"]
        mbps = r["bytes"] / r["ckptd_durable_s"] / 1e6
        torch = r["torch_save_fsync_s"]
        print(f"{r['bytes'] // MiB:>5}Mi {r['memcpy_s']:>6.3f}s {r['ckptd_stall_p50_s']:>6.3f}s "
              f"{r['ckptd_stall_p99_s']:>6.3f}s "
              f"{r['ckptd_stall_p50_s'] / r['memcpy_s']:>5.2f}/{r['ckptd_stall_p99_s'] / r['memcpy_s']:<5.2f} "
              f"{f(torch, '{:.3f}s'):>7} {f(torch and torch / r['ckptd_stall_p50_s'], '{:.0f}x'):>5} "
              f"{r['backpressure_stall_p50_s']:>6.3f}s | "
              f"{f(r['fio_qd1_MBps'], '{:.0f}'):>7} {f(r['fio_qd8_MBps'], '{:.0f}'):>5} "
              f"{r['ckptd_durable_s']:>8.3f}s {mbps:>6.0f} {f(fio and mbps / fio, '{:.2f}'):>5} | "
              f"{r['stream_MBps']:>6.0f} {f(fio and r['stream_MBps'] / fio, '{:.2f}'):>5} | "
              f"{r['daemon_cpu_s_per_GiB']:>4.2f}/{r['stream_daemon_cpu_s_per_GiB']:<4.2f} "
              f"{r['shm_daemon_private_rss_bytes'] / MiB:>5.0f}/{r['stream_daemon_private_rss_bytes'] / MiB:<5.0f}")
    print("\nmemcpy = one warm single-thread copy into a pre-faulted memfd arena; p50/p99 ="
          "\nCheckpointer::Save() blocking time over saves spaced as a trainer spaces them (a pause"
          "\nof 2.5x the disk's time after each); backpr. = its p50 when saves come back to back;"
          "\nfio = sequential 4 MiB O_DIRECT writes + fsync at queue depth 1 (psync) and 8 (libaio),"
          "\nthe best of the two is the disk's limit; ckptd dur = the save call to the durable,"
          "\ncommitted step_N.gguf (median of saves interleaved with the fio runs); stream = the"
          "\ngRPC stream path over the Unix socket, call to durable; CPU = the daemon's CPU seconds"
          "\nper GiB saved, shm/stream; private = the daemon's RssAnon + RssFile, max sampled, shm/stream.")
    print("\nthe slowest spaced save, split: its copy, its wait for a free arena, and the rest"
          "\n(the SaveShared round trip through the daemon's gRPC server), ms")
    for r in results:
        stalls = r["ckptd_stalls_s"]
        i = stalls.index(max(stalls))
        copy, wait = r["ckptd_stall_copies_s"][i], r["ckptd_stall_waits_s"][i]
        print(f"{r['bytes'] // MiB:>5}Mi stall {stalls[i] * 1e3:>6.1f}  copy {copy * 1e3:>6.1f}  "
              f"wait {wait * 1e3:>6.1f}  call {(stalls[i] - copy - wait) * 1e3:>6.1f}")
    print("\narena setup per size (two arenas per trainer are set up once), seconds")
    for r in results:
        a = r["arena_setup"]
        per_gib = a['huge_s'] and a['huge_s'] / (r['bytes'] / GiB)
        print(f"{r['bytes'] // MiB:>5}Mi 4 KiB pages {f(a['small_s'], '{:.3f}s'):>7}  huge pages "
              f"{f(a['huge_s'], '{:.3f}s'):>7}  ({f(per_gib, '{:.2f}')} s/GiB)")
    if concurrent:
        print(f"\nN trainers saving {sizes[0] // MiB} MiB each at once (aggregate MB/s, medians)")
        for c in concurrent:
            ok = c["fio_MBps"] and c["aggregate_MBps"] / c["fio_MBps"]
            print(f"  N={c['n']}: ckptd {c['aggregate_MBps']:>6.0f}  fio numjobs={c['n']} "
                  f"{f(c['fio_MBps'], '{:.0f}'):>6}  ratio {f(ok, '{:.2f}')} (goal >= 0.85)"
                  f"{'' if ok and ok >= 0.85 else '  <-- short'}")
    if submission:
        print("\nwrite submission A/B (1 GiB from a memfd arena, O_DIRECT 4 MiB pieces + fdatasync, "
              "interleaved, medians)")
        for name, v in submission.items():
            if "error" in v:
                print(f"  {name:<14} {v['error']}")
            else:
                print(f"  {name:<14} {v['MBps']:>6.0f} MB/s  {v['cpu_s_per_GiB']:.3f} CPU s/GiB"
                      f"{'   <- ckptd' if name == 'threads:2' else ''}")
    print("\ngoals (a mark where one falls short)")
    for key, label, goal, higher in GOALS:
        cells = []
        for r in results:
            v = ratios(r)[key]
            short = v is not None and (v < goal if higher else v > goal)
            cells.append(f"{r['bytes'] // MiB}Mi {f(v, '{:.2f}')}{' <-- short' if short else ''}")
        print(f"  {label:<40} {'>=' if higher else '<='} {goal:<5} " + "   ".join(cells))
    print("\nPython client (ckptd package): save stall, and restore into existing tensors, seconds")
    print(f"{'size':>7} {'np copy':>8} {'py stall':>8} {'/copy':>6} {'torch.save':>10} | "
          f"{'torch.load':>10} | "
          f"{'memcpy':>7} {'memfd rd':>8} {'hot':>7} {'/memcpy':>7} {'/memfd':>6}")
    for r in results:
        print(f"{r['bytes'] // MiB:>5}Mi {r['py_numpy_copy_s']:>7.3f}s {r['py_stall_s']:>7.3f}s "
              f"{r['py_stall_s'] / r['py_numpy_copy_s']:>5.2f}x {f(r['torch_save_fsync_s'], '{:.3f}s'):>10} | "
              f"{r['torch_load_s']:>9.3f}s | "
              f"{r['memcpy_s']:>6.3f}s {r['memfd_read_s']:>7.3f}s {r['restore_hot_s']:>6.3f}s "
              f"{r['restore_hot_s'] / r['memcpy_s']:>6.2f}x {r['restore_hot_s'] / r['memfd_read_s']:>5.2f}x")
    print("\nnp copy = numpy copy of the model's tensors into pre-faulted memory; py stall = Run.save()"
          "\nblocking time over shared memory (median; arenas set up by a first save);"
          "\ntorch.load = cold (page cache dropped), into new tensors;"
          "\nhot = Run.restore() from the daemon's in-memory copy, digests checked; memfd rd = one"
          "\ncopy out of a fresh read-only mapping of a memfd (the same kind of memory), its floor.")
    print("\nC++ Restore (ckptctl restore-check), hot, seconds")
    print(f"{'size':>7} {'hot':>7} {'/memcpy':>7}")
    for r in results:
        hot = r["cpp_restore_hot_s"]
        print(f"{r['bytes'] // MiB:>5}Mi {f(hot, '{:.3f}s'):>7} {f(hot and hot / r['memcpy_s'], '{:.2f}x'):>7}")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/latest.json", "w") as out:
        json.dump({"sizes": results, "concurrent": concurrent, "write_submission": submission,
                   "filesystem": fs,
                   "shmem_thp_setting": thp_before,
                   "when": datetime.datetime.utcnow().isoformat() + "Z"}, out, indent=1)


if __name__ == "__main__":
    sys.exit(main())
