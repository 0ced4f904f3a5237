#!/usr/bin/python3
"""The object-storage tier against the same Ceph RGW (scripts/dev-s3.sh, one
bluestore OSD on this machine's disk), over HTTPS (RGW's TLS endpoint, the
CA dev-s3.sh made; ckptd sends UNSIGNED-PAYLOAD as AWS's SDKs do), in one
run, interleaved round by round (medians):

- local: the checkpoint's call-to-durable time on the shared-memory path
  (the disk's rate as ckptd writes it), the reference the upload is held to;
- ckptd: the uploader's time for the step's files (log line "tier:
  uploaded ... seconds="), multipart, `parallel_parts` in flight;
- boto3: `upload_file` of the same committed file with 4 threads and the
  same part size (Debian's python3-boto3), the peer;
- the daemon's private memory (RssAnon + RssFile, sampled every 20 ms)
  during the upload, against tier.s3.max_memory_bytes;
- fetch: `ckptctl fetch` of the step into an empty directory (ranged GETs,
  every file proved by its digests, fsync'ed) against boto3's
  `download_file` of the model object with its default transfer config;
- CPU seconds per GB of the uploader or downloader and of the store
  (RGW + OSD), from /proc and getrusage.

  bench/tier_bench.py --build build [--mib 1024] [--rounds 3]
Goals: upload >= 1.1x boto3's rate at <= 0.8x its CPU per GB; fetch >=
1.1x boto3's download; memory bounded by max_memory_bytes + a constant.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.environ.get("CKPTD_PYTHON_LIB") or os.path.join(ROOT, "build", "python", "lib"))

import boto3  # noqa: E402
import numpy as np  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

import ckptd  # noqa: E402

MiB = 1 << 20


def private_rss(pid):
    kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                kb += int(line.split()[1])
    return kb * 1024


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_pids(s3dir):
    return {name: int(open(os.path.join(s3dir, "pids", name)).read()) for name in ("rgw", "osd")}


def drop_caches():
    """Page cache written back and dropped (root), so each reader starts cold."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def cpu_of(pids):
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--part-mib", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--max-memory-mib", type=int, default=64)
    args = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="ckptd-tier-bench-", dir=os.path.join(ROOT, "bench", "out")
                               if os.path.isdir(os.path.join(ROOT, "bench", "out")) else None)
    s3dir = os.path.join(scratch, "s3")
    daemon = None
    try:
        # Room for every copy of every round: RGW frees deleted objects'
        # space only at its garbage collection, hours later.
        block_gib = max(8, 2 * args.rounds * args.mib // 1024 + 4)
        out = subprocess.run([os.path.join(ROOT, "scripts", "dev-s3.sh"), "start", s3dir],
                             capture_output=True, text=True, timeout=240, check=True,
                             env={**os.environ, "CKPTD_DEV_S3_BLOCK_GIB": str(block_gib)}).stdout
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        endpoint, ca = env["CKPTD_S3_HTTPS_ENDPOINT"], env["CKPTD_S3_CA_FILE"]
        s3 = boto3.client("s3", endpoint_url=endpoint, verify=ca,
                          aws_access_key_id=env["CKPTD_S3_ACCESS_KEY"],
                          aws_secret_access_key=env["CKPTD_S3_SECRET_KEY"], region_name="us-east-1")
        s3.create_bucket(Bucket="bench")
        cfg = os.path.join(scratch, "ckptd.toml")
        with open(cfg, "w") as f:
            f.write(f'[tier.s3]\nendpoint = "{endpoint}"\nca_file = "{ca}"\nbucket = "bench"\n'
                    f'prefix = "ckptd"\npart_size = {args.part_mib * MiB}\n'
                    f'parallel_parts = {args.parallel}\nmax_memory_bytes = {args.max_memory_mib * MiB}\n'
                    'retention = "same"\n'
                    '[retention]\nkeep_last = 1\n')
        sock = os.path.join(scratch, "ckptd.sock")
        log_path = os.path.join(scratch, "daemon.log")
        daemon = subprocess.Popen([os.path.join(args.build, "daemon", "ckptd"), "--config", cfg, "--root",
                                   os.path.join(scratch, "runs"), "--listen", "unix:" + sock,
                                   "--http-listen", ""], stdout=open(log_path, "wb"),
                                  stderr=subprocess.STDOUT, env={**os.environ, **env})
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert daemon.poll() is None and time.monotonic() < deadline, open(log_path).read()
            time.sleep(0.05)
        run = ckptd.connect("unix:" + sock).open_run("bench", transport="shm")
        tensors = {"w": np.random.default_rng(1).standard_normal(args.mib * MiB // 4, dtype=np.float32)}
        rows = []
        for rnd in range(args.rounds):
            step = rnd + 1
            fresh = {"w": tensors["w"] + step}  # new bytes: every part is sent
            t0 = time.monotonic()
            run.save(step, fresh)
            run.wait()
            local_s = time.monotonic() - t0
            # The upload starts at the commit; sample the daemon meanwhile.
            peak = [0]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], private_rss(daemon.pid))
                    time.sleep(0.02)
            sampler = threading.Thread(target=sample)
            pids = {**store_pids(s3dir), "ckptd": daemon.pid}
            cpu0 = cpu_of(pids)
            sampler.start()
            perf_up = None
            if os.environ.get("BENCH_PERF_UPLOAD"):  # a perf.data path: profile the daemon's upload
                perf_up = subprocess.Popen(["perf", "record", "-g", "-p", str(daemon.pid), "-o",
                                            os.environ["BENCH_PERF_UPLOAD"]], stderr=subprocess.DEVNULL)
            pattern = re.compile(rf"tier: uploaded run=bench step={step} files=\d+ bytes=(\d+) .*?seconds=([\d.]+)")
            deadline = time.monotonic() + 600
            while not (m := pattern.search(open(log_path).read())):
                assert time.monotonic() < deadline, "upload did not finish"
                time.sleep(0.05)
            done.set()
            sampler.join()
            if perf_up:
                perf_up.send_signal(signal.SIGINT)
                perf_up.wait()
            cpu1 = cpu_of(pids)
            up_bytes, up_s = int(m.group(1)), float(m.group(2))
            model = os.path.join(scratch, "runs", "bench", "weights", f"step_{step}.gguf")
            size = os.path.getsize(model)
            drop_caches()  # the file cold for boto3 too, as ckptd read it
            t0 = time.monotonic()
            me0 = time.process_time()
            store0 = cpu_of(store_pids(s3dir))
            s3.upload_file(model, "bench", f"boto3/step_{step}.gguf",
                           Config=TransferConfig(multipart_threshold=args.part_mib * MiB,
                                                 multipart_chunksize=args.part_mib * MiB,
                                                 max_concurrency=4, use_threads=True))
            boto_s = time.monotonic() - t0
            boto_cpu = time.process_time() - me0
            store1 = cpu_of(store_pids(s3dir))
            boto_store_cpu = sum(store1[n] - store0[n] for n in ("rgw", "osd"))
            # Fetch: ckptctl (the daemon's own fetch code, its CPU from
            # getrusage) against boto3's download of the model object.
            fetched = os.path.join(scratch, f"fetched-{step}")
            store0 = cpu_of(store_pids(s3dir))
            kids0 = os.times()
            t0 = time.monotonic()
            perf = os.environ.get("BENCH_PERF_FETCH")  # a perf.data path: profile the fetch
            subprocess.run([*(["perf", "record", "-g", "-o", perf] if perf else []),
                            os.path.join(args.build, "client", "cli", "ckptctl"), "fetch", "bench", str(step),
                            "--config", cfg, "-o", fetched], check=True, capture_output=True, timeout=600,
                           env={**os.environ, **env})
            fetch_s = time.monotonic() - t0
            kids1 = os.times()
            store1 = cpu_of(store_pids(s3dir))
            fetch_bytes = sum(os.path.getsize(os.path.join(fetched, n)) for n in os.listdir(fetched))
            fetch_cpu = (kids1.children_user + kids1.children_system - kids0.children_user
                         - kids0.children_system)
            fetch_store_cpu = sum(store1[n] - store0[n] for n in ("rgw", "osd"))
            shutil.rmtree(fetched)
            down = os.path.join(scratch, "boto3-download")
            drop_caches()
            store0 = cpu_of(store_pids(s3dir))
            me0 = time.process_time()
            t0 = time.monotonic()
            s3.download_file("bench", f"ckptd/bench/step_{step}.gguf", down)
            with open(down, "rb+") as fd:  # durable, as ckptctl's files are
                os.fsync(fd.fileno())
            down_s = time.monotonic() - t0
            down_cpu = time.process_time() - me0
            store1 = cpu_of(store_pids(s3dir))
            down_store_cpu = sum(store1[n] - store0[n] for n in ("rgw", "osd"))
            os.remove(down)
            # Room for the next round: the copies just measured go.
            s3.delete_object(Bucket="bench", Key=f"boto3/step_{step}.gguf")
            rows.append({"local_MBps": size / local_s / 1e6, "ckptd_MBps": up_bytes / up_s / 1e6,
                         "boto3_MBps": size / boto_s / 1e6, "peak_private_MiB": peak[0] / MiB,
                         "bytes": up_bytes, "model_bytes": size,
                         # CPU seconds per GB moved, by process, during each upload
                         "ckptd_cpu_s_per_GB": (cpu1["ckptd"] - cpu0["ckptd"]) / (up_bytes / 1e9),
                         "store_cpu_s_per_GB_ckptd": sum(cpu1[n] - cpu0[n] for n in ("rgw", "osd")) / (up_bytes / 1e9),
                         "boto3_cpu_s_per_GB": boto_cpu / (size / 1e9),
                         "store_cpu_s_per_GB_boto3": boto_store_cpu / (size / 1e9),
                         "store_cores_ckptd": sum(cpu1[n] - cpu0[n] for n in ("rgw", "osd")) / up_s,
                         "store_cores_boto3": boto_store_cpu / boto_s,
                         "fetch_MBps": fetch_bytes / fetch_s / 1e6,
                         "boto3_download_MBps": size / down_s / 1e6,
                         "fetch_cpu_s_per_GB": fetch_cpu / (fetch_bytes / 1e9),
                         "boto3_download_cpu_s_per_GB": down_cpu / (size / 1e9),
                         "store_cpu_s_per_GB_fetch": fetch_store_cpu / (fetch_bytes / 1e9),
                         "store_cpu_s_per_GB_boto3_download": down_store_cpu / (size / 1e9)})
            print(f"round {rnd + 1}: local {rows[-1]['local_MBps']:.0f} MB/s, ckptd upload "
                  f"{rows[-1]['ckptd_MBps']:.0f} MB/s, boto3 {rows[-1]['boto3_MBps']:.0f} MB/s, "
                  f"daemon private {rows[-1]['peak_private_MiB']:.0f} MiB; CPU s/GB: ckptd "
                  f"{rows[-1]['ckptd_cpu_s_per_GB']:.2f}, boto3 {rows[-1]['boto3_cpu_s_per_GB']:.2f}, "
                  f"store (RGW+OSD) {rows[-1]['store_cpu_s_per_GB_ckptd']:.2f} / "
                  f"{rows[-1]['store_cpu_s_per_GB_boto3']:.2f}; store busy "
                  f"{rows[-1]['store_cores_ckptd']:.2f} / {rows[-1]['store_cores_boto3']:.2f} cores; fetch "
                  f"{rows[-1]['fetch_MBps']:.0f} MB/s ({rows[-1]['fetch_cpu_s_per_GB']:.2f} s/GB), boto3 "
                  f"download {rows[-1]['boto3_download_MBps']:.0f} MB/s "
                  f"({rows[-1]['boto3_download_cpu_s_per_GB']:.2f} s/GB)",
                  flush=True)
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print()
        print("| checkpoint | local write (call to durable) | ckptd upload (/local) | boto3, 4 threads "
              "(ckptd/boto3) | daemon private memory, peak (max_memory_bytes) |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| {args.mib} MiB | {med['local_MBps']:.0f} MB/s | {med['ckptd_MBps']:.0f} MB/s "
              f"({med['ckptd_MBps'] / med['local_MBps']:.2f}) | {med['boto3_MBps']:.0f} MB/s "
              f"({med['ckptd_MBps'] / med['boto3_MBps']:.2f}) | {med['peak_private_MiB']:.0f} MiB "
              f"({args.max_memory_mib} MiB) |")
        print()
        print("| CPU seconds per GB uploaded | uploader | store (RGW + OSD) | store busy (cores of 2) |")
        print("| --- | --- | --- | --- |")
        print(f"| ckptd | {med['ckptd_cpu_s_per_GB']:.2f} | {med['store_cpu_s_per_GB_ckptd']:.2f} | "
              f"{med['store_cores_ckptd']:.2f} |")
        print(f"| boto3, 4 threads | {med['boto3_cpu_s_per_GB']:.2f} | {med['store_cpu_s_per_GB_boto3']:.2f} | "
              f"{med['store_cores_boto3']:.2f} |")
        print()
        print("| fetch, HTTPS | rate | vs boto3 (goal >= 1.1) | CPU s/GB | store CPU s/GB |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| ckptctl fetch (verified, fsync'ed) | {med['fetch_MBps']:.0f} MB/s | "
              f"{med['fetch_MBps'] / med['boto3_download_MBps']:.2f} | {med['fetch_cpu_s_per_GB']:.2f} | "
              f"{med['store_cpu_s_per_GB_fetch']:.2f} |")
        print(f"| boto3 download_file (defaults) | {med['boto3_download_MBps']:.0f} MB/s | | "
              f"{med['boto3_download_cpu_s_per_GB']:.2f} | {med['store_cpu_s_per_GB_boto3_download']:.2f} |")
        up_ratio = med['ckptd_MBps'] / med['boto3_MBps']
        cpu_ratio = med['ckptd_cpu_s_per_GB'] / med['boto3_cpu_s_per_GB']
        print(f"\nupload: {up_ratio:.2f}x boto3's rate (goal >= 1.1){'' if up_ratio >= 1.1 else ' *'}, "
              f"{cpu_ratio:.2f}x its CPU per GB (goal <= 0.8){'' if cpu_ratio <= 0.8 else ' *'}; "
              f"fetch {med['fetch_MBps'] / med['boto3_download_MBps']:.2f}x boto3's download "
              f"(goal >= 1.1){'' if med['fetch_MBps'] / med['boto3_download_MBps'] >= 1.1 else ' *'}")
        print(f"\nmedians of {args.rounds} rounds; parts of {args.part_mib} MiB, {args.parallel} in flight; "
              "the store is one bluestore OSD on this machine's disk, so uploads and local writes share it.")
        os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "out", "tier.json"), "w") as f:
            json.dump({"mib": args.mib, "rounds": rows, "median": med, "part_mib": args.part_mib,
                       "parallel": args.parallel, "max_memory_mib": args.max_memory_mib,
                       "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
    finally:
        if daemon and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(60)
        subprocess.run([os.path.join(ROOT, "scripts", "dev-s3.sh"), "stop", s3dir], timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
