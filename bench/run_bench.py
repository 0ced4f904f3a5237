#!/usr/bin/python3
"""make bench [ARGS=--quick]: ckptd against the physical limits and its peers,
all measured in one run on one filesystem, as a table and bench/out/latest.json.

Per size: warm memcpy into a pre-faulted memfd arena (the stall's floor),
fio sequential write with O_DIRECT and a final fsync (the disk's limit),
ckptd's shared-memory path through ckptd::Checkpointer (the trainer's stall
per save and the time from the call to the durable commit), ckptd's stream
path over its Unix socket, torch.save + fsync and numpy tofile + fsync, and
the daemon's peak RSS on each path (a fresh daemon per path and size).
The Python client (client/python/ckptd), with a hot-restore daemon: its
shm save stall against a numpy copy of the same bytes and torch.save +
fsync; a cold restore (page cache dropped) into existing tensors against
fio's sequential O_DIRECT read of the same size and torch.load; a hot
restore (from the daemon's in-memory copy) against a memcpy.
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
import time

import numpy as np

MiB = 1 << 20


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


def shm_interleaved_with_fio(build, sock, work, size, rounds):
    """Alternates one fio run and one ckptd shm save, `rounds` times, and returns the
    medians of both: the disk's own speed drifts by ~30% within a minute here, so the
    two are measured side by side rather than one after the other."""
    bench = subprocess.Popen([os.path.join(build, "bench/shm_save_bench"), sock, "shm", str(size),
                              "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if bench.stdout.readline().strip() != "ready":
        raise RuntimeError("shm_save_bench did not start")
    fio = []
    for _ in range(rounds):
        fio.append(fio_once(work, size, f"fio-{len(fio)}.tmp"))
        bench.stdin.write("save\n")
        bench.stdin.flush()
        json.loads(bench.stdout.readline())
    bench.stdin.close()
    summary = json.loads(bench.stdout.readline())
    if bench.wait() != 0:
        raise RuntimeError("shm_save_bench failed")
    return summary, None if None in fio else median(fio)


def fio_once(directory, size, name):
    if not shutil.which("fio"):
        return None
    path = os.path.join(directory, name)  # kept until the size is done (see main)
    out = subprocess.run(["fio", "--name=w", f"--filename={path}", "--rw=write", "--bs=4M",
                          f"--size={size}", "--direct=1", "--end_fsync=1", "--ioengine=psync",
                          "--output-format=json"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    job = json.loads(out.stdout)["jobs"][0]["write"]
    return job["bw_bytes"] / 1e6


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


def with_daemon(build, root, fn, args=()):
    """Runs fn(socket) against a fresh daemon; returns its result(s) and the daemon's peak RSS."""
    proc, sock = start_daemon(build, root, args)
    try:
        result = fn(sock)
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


def fio_read(path, size):
    if not shutil.which("fio"):
        return None
    drop_caches()
    out = subprocess.run(["fio", "--name=r", f"--filename={path}", "--rw=read", "--bs=4M",
                          f"--size={size}", "--direct=1", "--ioengine=libaio", "--iodepth=4",
                          "--output-format=json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)["jobs"][0]["read"]["bw_bytes"] / 1e6


def python_client(build, sock, scratch, size, rounds):
    """The Python client's save stall, cold and hot restore, and their peers."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client", "python"))
    import ckptd
    import torch

    n = 64 * MiB
    model = {f"blk.{i}.weight": torch.ones(min(n, size - i * n) // 4) for i in range((size + n - 1) // n)}
    run = ckptd.connect(sock).open_run("py-bench", transport="shm", schedule={"every_steps": 0})
    run.save(0, model=model)  # arenas created and populated once, as a trainer's first save
    run.wait()
    stalls = []
    for step in range(1, rounds + 1):
        stalls.append(run.save(step, model=model).stall_s)
        run.wait()
    # The floor: a numpy copy of the same bytes (the model's own tensors)
    # into pre-faulted memory.
    dst = np.zeros(size, dtype=np.uint8)
    dst[:] = 1

    def copy_model():
        at = 0
        for t in model.values():
            src = t.numpy().view(np.uint8)
            np.copyto(dst[at:at + src.nbytes], src)
            at += src.nbytes

    numpy_copy = median([timed(copy_model) for _ in range(5)])

    # Hot restore's floor: copying the bytes out of a fresh read-only mapping
    # of a memfd (shmem pages, 4 KiB each here, where anonymous memory gets
    # huge pages), which is what a restarted trainer does.
    import mmap

    fd = os.memfd_create("bench")
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size) as m:
        np.frombuffer(m, dtype=np.uint8)[:] = 1

    def memfd_read():
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            src = np.frombuffer(m, dtype=np.uint8)
            np.copyto(dst, src)
            del src

    memfd_read_s = median([timed(memfd_read) for _ in range(5)])
    os.close(fd)
    del dst
    # Restores into the existing tensors (as a resumed trainer does).
    cold = []
    for _ in range(rounds):
        cold_ok = drop_caches()
        t0 = time.perf_counter()
        info = run.restore(model=model, hot=False)
        cold.append(time.perf_counter() - t0)
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
    fio_path = os.path.join(scratch, "fio-0.tmp")
    # The C++ Restore (O_DIRECT, 4 reads in flight) through ckptctl restore-check.
    ckptctl = os.path.join(build, "client/cli/ckptctl")
    drop_caches()
    cpp_cold = run_json([ckptctl, "restore-check", "py-bench", "--no-memory", "--json", "--socket", sock])
    cpp_hot = run_json([ckptctl, "restore-check", "py-bench", "--json", "--socket", sock])
    run.close()
    return {
        "py_stall_s": median(stalls),
        "py_numpy_copy_s": numpy_copy,
        "restore_cold_s": median(cold),
        "restore_cold_dropped_cache": cold_ok,
        "restore_hot_s": median(hot),
        "memfd_read_s": memfd_read_s,
        "cpp_restore_cold_s": cpp_cold["seconds"],
        "cpp_restore_hot_s": cpp_hot["seconds"] if cpp_hot["source"] == "memory" else None,
        "torch_load_s": torch_load,
        "fio_read_MBps": fio_read(fio_path, size) if os.path.exists(fio_path) else None,
    }


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256 MiB and 1 GiB only")
    ap.add_argument("--build", default="build")
    ap.add_argument("--dir", default=None, help="where files are written (default: under --build)")
    ap.add_argument("--saves", type=int, default=3,
                    help="rounds of (fio, ckptd shm save) per size; medians reported")
    args = ap.parse_args()
    sizes = [256 * MiB, 1024 * MiB] + ([] if args.quick else [4096 * MiB])
    work = tempfile.mkdtemp(dir=args.dir or args.build, prefix="bench-")
    fs = subprocess.run(["stat", "-f", "-c", "%T", work], capture_output=True, text=True).stdout.strip()
    results = []
    try:
        for size in sizes:
            # Everything a size writes stays until that size is done: the root
            # filesystem here is mounted with `discard`, and the TRIM after a
            # deletion slows the next writer (whichever tool that is).
            scratch = os.path.join(work, f"size-{size}")
            root = os.path.join(scratch, "root")
            os.makedirs(root)
            shm, fio, shm_rss = with_daemon(args.build, root, lambda sock: shm_interleaved_with_fio(
                args.build, sock, scratch, size, args.saves))
            stream, stream_rss = with_daemon(args.build, root, lambda sock: run_json(
                [os.path.join(args.build, "bench/stream_save_bench"), sock, "stream", "1",
                 str(size)]))
            hot_cfg = os.path.join(scratch, "hot.toml")
            with open(hot_cfg, "w") as f:
                f.write(f"[shm]\nkeep_last_in_memory = true\nkeep_in_memory_max_bytes = {4 * size}\n")
            py, _ = with_daemon(args.build, root, lambda sock: python_client(args.build, sock, scratch, size, args.saves),
                                ["--config", hot_cfg])
            r = {
                "bytes": size,
                "memcpy_s": shm["memcpy_s"],
                "fio_direct_MBps": fio,
                "ckptd_stall_s": shm["stall_s"],
                "ckptd_max_stall_s": shm["max_stall_s"],
                "ckptd_durable_s": shm["durable_s"],
                "ckptd_arena_setup_s": shm["reserve_s"],
                "ckptd_saveshared_call_s": shm["call_s"],
                "torch_save_fsync_s": torch_s(scratch, size),
                "numpy_fsync_s": numpy_s(scratch, size),
                "stream_durable_s": stream["durable_s"],
                "stream_MBps": size / stream["durable_s"] / 1e6,
                "daemon_peak_rss_bytes": max(shm_rss, stream_rss),
                "shm_daemon_peak_rss_bytes": shm_rss,
                "stream_daemon_peak_rss_bytes": stream_rss,
                "numpy_memcpy_s": memcpy_s(size),
                **py,
            }
            results.append(r)
            shutil.rmtree(scratch)
            os.sync()
            time.sleep(3)  # let the deletions' discards drain before the next size
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    print(f"ckptd bench on {fs}, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC\n")
    print("trainer stall per save (blocking time) and save call -> durable file, seconds")
    print(f"{'size':>7} {'memcpy':>8} {'ckptd stall':>11} {'/memcpy':>7} {'call':>7} {'torch':>7} "
          f"{'torch/stall':>11} {'numpy':>7} | {'fio MB/s':>8} {'ckptd dur':>9} {'MB/s':>6} "
          f"{'/fio':>5} {'vs torch':>8} {'vs numpy':>8} | {'stream MB/s':>11} {'rss MiB shm/stream':>18}")
    for r in results:
        fio = r["fio_direct_MBps"]
        torch = r["torch_save_fsync_s"]
        mbps = r["bytes"] / r["ckptd_durable_s"] / 1e6
        print(f"{r['bytes'] // MiB:>5}Mi {r['memcpy_s']:>7.3f}s {r['ckptd_stall_s']:>10.3f}s "
              f"{r['ckptd_stall_s'] / r['memcpy_s']:>6.2f}x "
              f"{r['ckptd_saveshared_call_s'] * 1000:>5.2f}ms {f(torch, '{:.3f}s'):>7} "
              f"{f(torch and torch / r['ckptd_stall_s'], '{:.0f}x'):>11} "
              f"{r['numpy_fsync_s']:>6.3f}s | {f(fio, '{:.0f}'):>8} "
              f"{r['ckptd_durable_s']:>8.3f}s {mbps:>6.0f} {f(fio and mbps / fio, '{:.2f}'):>5} "
              f"{f(torch and torch / r['ckptd_durable_s'], '{:.2f}x'):>8} "
              f"{r['numpy_fsync_s'] / r['ckptd_durable_s']:>7.2f}x | "
              f"{r['stream_MBps']:>11.0f} "
              f"{r['shm_daemon_peak_rss_bytes'] / MiB:>8.1f}/{r['stream_daemon_peak_rss_bytes'] / MiB:<9.1f}")
    print("\nmemcpy = one warm single-thread copy into a pre-faulted memfd arena; ckptd stall ="
          "\nCheckpointer::Save() blocking time (median of --saves; arenas reserved beforehand:"
          "\nsee ckptd_arena_setup_s); call = the part of the stall that is not the copy: the"
          "\nSaveShared round trip (validate + queue), ckptd_saveshared_call_s;"
          "\nckptd dur = that call to the durable, committed step_N.gguf;"
          "\ntorch/numpy = save + fsync (their stall and their durable time are the same);"
          "\nstream = the gRPC stream path over the Unix socket, call to durable.")
    print("\nPython client (ckptd package): save stall, and restore into existing tensors, seconds")
    print(f"{'size':>7} {'np copy':>8} {'py stall':>8} {'/copy':>6} {'torch.save':>10} | "
          f"{'fio read':>8} {'cold':>7} {'MB/s':>6} {'/fio':>5} {'torch.load':>10} | "
          f"{'memcpy':>7} {'memfd rd':>8} {'hot':>7} {'/memcpy':>7} {'/memfd':>6}")
    for r in results:
        cold_mbps = r["bytes"] / r["restore_cold_s"] / 1e6
        fio_r = r["fio_read_MBps"]
        print(f"{r['bytes'] // MiB:>5}Mi {r['py_numpy_copy_s']:>7.3f}s {r['py_stall_s']:>7.3f}s "
              f"{r['py_stall_s'] / r['py_numpy_copy_s']:>5.2f}x {f(r['torch_save_fsync_s'], '{:.3f}s'):>10} | "
              f"{f(fio_r, '{:.0f}'):>8} {r['restore_cold_s']:>6.3f}s {cold_mbps:>6.0f} "
              f"{f(fio_r and cold_mbps / fio_r, '{:.2f}'):>5} {r['torch_load_s']:>9.3f}s | "
              f"{r['memcpy_s']:>6.3f}s {r['memfd_read_s']:>7.3f}s {r['restore_hot_s']:>6.3f}s "
              f"{r['restore_hot_s'] / r['memcpy_s']:>6.2f}x {r['restore_hot_s'] / r['memfd_read_s']:>5.2f}x")
    print("\nnp copy = numpy copy of the model's tensors into pre-faulted memory; py stall = Run.save()"
          "\nblocking time over shared memory (median; arenas set up by a first save); cold ="
          "\nRun.restore() into the model's existing tensors after dropping the page cache, digests"
          "\nchecked; fio read = sequential O_DIRECT read, cold; torch.load = cold, into new tensors;"
          "\nhot = Run.restore() from the daemon's in-memory copy, digests checked; memfd rd = one"
          "\ncopy out of a fresh read-only mapping of a memfd (the same kind of memory), its floor.")
    print("\nC++ Restore (ckptctl restore-check: ReadMany, O_DIRECT, 4 reads in flight), seconds")
    print(f"{'size':>7} {'cold':>7} {'MB/s':>6} {'/fio':>5} | {'hot':>7} {'/memcpy':>7}")
    for r in results:
        mbps = r["bytes"] / r["cpp_restore_cold_s"] / 1e6
        hot = r["cpp_restore_hot_s"]
        print(f"{r['bytes'] // MiB:>5}Mi {r['cpp_restore_cold_s']:>6.3f}s {mbps:>6.0f} "
              f"{f(r['fio_read_MBps'] and mbps / r['fio_read_MBps'], '{:.2f}'):>5} | "
              f"{f(hot, '{:.3f}s'):>7} {f(hot and hot / r['memcpy_s'], '{:.2f}x'):>7}")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/latest.json", "w") as out:
        json.dump({"sizes": results, "filesystem": fs,
                   "when": datetime.datetime.utcnow().isoformat() + "Z"}, out, indent=1)


if __name__ == "__main__":
    sys.exit(main())
