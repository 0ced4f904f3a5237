#!/usr/bin/python3
"""make bench [ARGS=--quick]: ckptd against the physical limits and its peers,
all measured in one run on one filesystem, as a table and bench/out/latest.json.

Per size: warm memcpy into a pre-faulted buffer (numpy), fio sequential write
with O_DIRECT and a final fsync, torch.save + fsync, numpy tofile + fsync, and
ckptd's stream path over its Unix socket (the trainer's blocking time, the
daemon's durable time and its peak RSS). The shared-memory path (issue #4)
is not built yet: its keys (ckptd_stall_s) are null until it lands.
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


def fio_mbps(directory, size):
    if not shutil.which("fio"):
        return None
    path = os.path.join(directory, "fio.tmp")
    out = subprocess.run(["fio", "--name=w", f"--filename={path}", "--rw=write", "--bs=4M",
                          f"--size={size}", "--direct=1", "--end_fsync=1", "--ioengine=psync",
                          "--output-format=json"], capture_output=True, text=True)
    os.unlink(path) if os.path.exists(path) else None
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
    t = timed(lambda: fsync_file(path, arr.tofile))
    os.unlink(path)
    return t


def torch_s(directory, size):
    try:
        import torch
    except ImportError:
        return None
    n = 64 * MiB
    state = {f"blk.{i}.weight": torch.ones(min(n, size - i * n) // 4) for i in range((size + n - 1) // n)}
    path = os.path.join(directory, "torch.pt")
    t = timed(lambda: fsync_file(path, lambda f: torch.save(state, f)))
    os.unlink(path)
    return t


def start_daemon(build, root):
    sock = f"unix:{root}/ckptd.sock"
    proc = subprocess.Popen([os.path.join(build, "daemon/ckptd"), "--root", root, "--listen", sock,
                             "--http-listen", ""], stderr=subprocess.PIPE, text=True)
    log = ""
    while "ready: listening" not in log:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("ckptd did not start:\n" + log)
        log += line
    return proc, sock


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256 MiB and 1 GiB only")
    ap.add_argument("--build", default="build")
    ap.add_argument("--dir", default=None, help="where files are written (default: under --build)")
    args = ap.parse_args()
    sizes = [256 * MiB, 1024 * MiB] + ([] if args.quick else [4096 * MiB])
    work = tempfile.mkdtemp(dir=args.dir or args.build, prefix="bench-")
    fs = subprocess.run(["stat", "-f", "-c", "%T", work], capture_output=True, text=True).stdout.strip()
    results = []
    try:
        for size in sizes:
            root = os.path.join(work, f"root-{size}")
            os.makedirs(root)
            proc, sock = start_daemon(args.build, root)
            try:
                out = subprocess.run([os.path.join(args.build, "bench/stream_save_bench"), sock,
                                      "bench", "1", str(size)], capture_output=True, text=True,
                                     check=True)
                stream = json.loads(out.stdout)
                rss = peak_rss(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            r = {
                "bytes": size,
                "memcpy_s": memcpy_s(size),
                "fio_direct_MBps": fio_mbps(work, size),
                "ckptd_stall_s": None,  # shared-memory path: issue #4
                "ckptd_stream_call_s": stream["call_s"],
                "ckptd_durable_s": stream["durable_s"],
                "torch_save_fsync_s": torch_s(work, size),
                "numpy_fsync_s": numpy_s(work, size),
                "stream_MBps": size / stream["durable_s"] / 1e6,
                "daemon_peak_rss_bytes": rss,
            }
            results.append(r)
            shutil.rmtree(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    print(f"ckptd bench on {fs}, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC\n")
    print(f"{'size':>8} {'memcpy':>8} {'fio MB/s':>9} {'ckptd':>8} {'torch':>8} {'numpy':>8} "
          f"{'stream MB/s':>11} {'/fio':>6} {'vs torch':>8} {'rss MiB':>8}")
    for r in results:
        fio = r["fio_direct_MBps"]
        print(f"{r['bytes'] // MiB:>6}Mi {r['memcpy_s']:>7.3f}s {f(fio, '{:.0f}'):>9} "
              f"{r['ckptd_durable_s']:>7.3f}s {f(r['torch_save_fsync_s'], '{:.3f}s'):>8} "
              f"{r['numpy_fsync_s']:>7.3f}s {r['stream_MBps']:>11.0f} "
              f"{f(fio and r['stream_MBps'] / fio, '{:.2f}'):>6} "
              f"{f(r['torch_save_fsync_s'] and r['torch_save_fsync_s'] / r['ckptd_durable_s'], '{:.2f}x'):>8} "
              f"{r['daemon_peak_rss_bytes'] / MiB:>8.1f}")
    print("\nckptd = save call to durable step_N.gguf over the stream path; torch/numpy = save + fsync;"
          "\nstall on the shared-memory path (issue #4) is not measured yet.")
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/latest.json", "w") as out:
        json.dump({"sizes": results, "filesystem": fs,
                   "when": datetime.datetime.utcnow().isoformat() + "Z"}, out, indent=1)


if __name__ == "__main__":
    sys.exit(main())
