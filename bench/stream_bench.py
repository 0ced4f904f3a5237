#!/usr/bin/python3
"""The stream path against its limits: saves of SIZE bytes from the C++
client (bench/stream_save_bench) and the Python client (ckptd, transport
"stream", 1 MiB messages) over

- the daemon's Unix socket: the limit is the disk;
- TCP with TLS on loopback, and TCP with TLS across a veth link between two
  network namespaces shaped with tc: the limit is the smallest of the disk,
  iperf3 on that path, and `openssl speed` on one core for the cipher the
  daemon negotiates (openssl s_client reports it).

Each round runs fio (sequential O_DIRECT 4 MiB writes, QD1 psync and QD8
libaio, each with a final fsync; the better one is the disk's limit) and
then one save per case, so every ratio compares numbers taken minutes
apart at most; the table gives medians of the rounds, each case's ratio is
the median of its per-round ratios, and the daemon's and the client's CPU
seconds per GiB. Needs root (namespaces, tc), fio, iperf3 and openssl.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_bench as rb  # noqa: E402
from netns import Link, iperf, sh  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
A_IP, B_IP = "10.78.0.1", "10.78.0.2"
GOAL = 0.8


def median(values):
    values = [v for v in values if v is not None]
    return sorted(values)[len(values) // 2] if values else None


def make_certs(d):
    def openssl(*args):
        sh("openssl", *args, cwd=d)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ckptd bench ca")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write(f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:{B_IP}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", "server.pem", "-extfile", "server.ext")
    return {name: os.path.join(d, name) for name in ("ca.pem", "server.pem", "server.key")}


def openssl_speed(cipher):
    """`openssl speed` of an AEAD cipher on one core, 16 KiB blocks (a TLS record), bytes/s."""
    out = sh("openssl", "speed", "-evp", cipher, "-bytes", "16384", "-seconds", "2").stdout
    for line in out.splitlines():
        if line.lower().startswith(cipher.lower()):
            value = line.split()[-1]
            return float(value.rstrip("k")) * 1000
    raise RuntimeError(f"openssl speed {cipher}: no result in\n{out}")


def negotiated_cipher(address, ca, ns=None):
    """The TLS 1.3 suite the daemon picks for an OpenSSL client, as openssl's EVP name."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [
        "openssl", "s_client", "-connect", address, "-CAfile", ca, "-alpn", "h2", "-brief"]
    r = sh(*cmd, check=False, input="", timeout=30, errors="replace")
    m = re.search(r"Ciphersuite: (\S+)", r.stdout + r.stderr)
    if not m:
        raise RuntimeError(f"openssl s_client {address}: no cipher suite in\n{r.stderr[-2000:]}")
    suite = m.group(1)
    names = {"TLS_AES_256_GCM_SHA384": "aes-256-gcm", "TLS_AES_128_GCM_SHA256": "aes-128-gcm",
             "TLS_CHACHA20_POLY1305_SHA256": "chacha20-poly1305"}
    return suite, names[suite]


class Daemon:
    def __init__(self, build, root, listen, ns=None, certs=None):
        os.makedirs(root, exist_ok=True)
        self.root = root
        args = []
        if certs:
            cfg = os.path.join(root, "..", os.path.basename(root) + ".toml")
            with open(cfg, "w") as f:
                f.write(f'[server]\ntls_cert = "{certs["server.pem"]}"\ntls_key = "{certs["server.key"]}"\n')
            args = ["--config", cfg]
        self.log = os.path.join(root, "..", os.path.basename(root) + ".log")
        cmd = (["ip", "netns", "exec", ns] if ns else []) + [
            os.path.join(build, "daemon/ckptd"), "--root", root, "--listen", listen, "--http-listen", "",
            *args]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            with open(self.log) as f:
                text = f.read()
            m = re.search(r"ready: listening on (\S+)", text)
            if m:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ckptd did not start:\n" + text[-2000:])
            time.sleep(0.02)
        self.pid = self.proc.pid  # `ip netns exec` execs the daemon in its own process
        port = re.search(r":(\d+)\b", m.group(1))
        self.target = listen if listen.startswith("unix:") else listen.rsplit(":", 1)[0] + ":" + port.group(1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


class Saver:
    """A client process that saves once per line it is sent, printing JSON per save."""

    def __init__(self, argv, ns=None):
        cmd = (["ip", "netns", "exec", ns] if ns else []) + argv
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def save(self):
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"{self.proc.args}: not ready ({line!r})")
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"{self.proc.args}: the save failed")
        return json.loads(out)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def python_saver(args):
    """The Python client's side: `--python-saver TARGET CA RUN STEP BYTES ROUNDS`."""
    target, ca, run_id, step, size, rounds = args
    sys.path.insert(0, os.environ.get("CKPTD_PYTHON_LIB", ""))
    import ckptd
    import numpy as np

    kwargs = {"tls_ca": ca} if ca else {}
    for attempt in range(3):  # a TLS handshake across the shaped link may time out once
        try:
            client = ckptd.connect(target, **kwargs)
            run = client.open_run(run_id, metadata={"general.architecture": "llama"}, transport="stream",
                                  retention={"keep_last": 2})
            break
        except ckptd.Error:
            if attempt == 2:
                raise
            time.sleep(1)
    n = 64 * MiB
    size = int(size)
    model = {f"blk.{i}.weight": np.ones(min(n, size - i * n) // 4, dtype=np.float32)
             for i in range((size + n - 1) // n)}
    for i in range(int(rounds)):
        print("ready", flush=True)
        if not sys.stdin.readline():
            return
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        r = run.save(int(step) + i, model=model, force=True)
        call = time.perf_counter() - t0
        assert r.state == "committed", r
        print(json.dumps({"call_s": call, "cpu_s": time.process_time() - cpu0, "durable_s": call}), flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--python-saver":
        return python_saver(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gbit", type=float, default=4, help="the namespace link's shaped rate")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("stream_bench: needs root (network namespaces, tc, drop_caches); skipped")
        return 0
    for tool in ("fio", "iperf3", "openssl"):
        if not shutil.which(tool):
            print(f"stream_bench: {tool} is missing (scripts/install-deps.sh --bench); skipped")
            return 0
    build = os.path.abspath(args.build)
    size = args.mib * MiB
    work = tempfile.mkdtemp(dir=args.dir or build, prefix="stream-bench-")
    os.environ["CKPTD_PYTHON_LIB"] = os.path.join(build, "python", "lib")
    os.environ["BENCH_KEEP_LAST"] = "2"  # stream_save_bench: room on the disk for every round
    certs = make_certs(tempfile.mkdtemp(dir=work, prefix="certs-"))
    cpp = os.path.join(build, "bench/stream_save_bench")
    py = [sys.executable, os.path.abspath(__file__), "--python-saver"]
    results = {}
    try:
        with Link("sb", A_IP, B_IP, args.gbit) as link:
            a, b = link.ns
            daemons = {
                "unix": Daemon(build, os.path.join(work, "unix"), f"unix:{work}/unix.sock"),
                "tls-loopback": Daemon(build, os.path.join(work, "lo"), "127.0.0.1:0", certs=certs),
                "tls-link": Daemon(build, os.path.join(work, "link"), f"{B_IP}:0", ns=b, certs=certs),
            }
            try:
                lo_suite, lo_cipher = negotiated_cipher(daemons["tls-loopback"].target, certs["ca.pem"])
                link_suite, link_cipher = negotiated_cipher(daemons["tls-link"].target, certs["ca.pem"], ns=a)
                limits = {
                    "iperf3 loopback": iperf(None, None, "127.0.0.1"),
                    f"iperf3 link ({args.gbit:g} Gbit/s tbf)": iperf(b, a, B_IP),
                    f"openssl {lo_cipher}": openssl_speed(lo_cipher),
                }
                if link_cipher != lo_cipher:
                    limits[f"openssl {link_cipher}"] = openssl_speed(link_cipher)
                net_limit = {
                    "unix": None,
                    "tls-loopback": min(limits["iperf3 loopback"], limits[f"openssl {lo_cipher}"]),
                    "tls-link": min(limits[f"iperf3 link ({args.gbit:g} Gbit/s tbf)"],
                                    limits[f"openssl {link_cipher}"]),
                }
                savers = {}
                for path, d in daemons.items():
                    ca = certs["ca.pem"] if path != "unix" else ""
                    ns = a if path == "tls-link" else None
                    savers[("C++", path)] = Saver([cpp, d.target, f"cpp-{path}", "1", str(size), ca,
                                                   str(args.rounds)], ns=ns)
                    savers[("Python", path)] = Saver([*py, d.target, ca, f"py-{path}", "1", str(size),
                                                      str(args.rounds)], ns=ns)
                fio = []
                for r in range(args.rounds):
                    f1 = rb.fio_once(work, size, f"fio-{r}", depth=1)
                    f8 = rb.fio_once(work, size, f"fio-{r}-q8", depth=8)
                    for name in (f"fio-{r}", f"fio-{r}-q8"):
                        os.remove(os.path.join(work, name))
                    disk = max(f1 or 0, f8 or 0) * 1e6
                    fio.append(disk)
                    for (client, path), saver in savers.items():
                        d = daemons[path]
                        with rb.DaemonWatch(d.pid) as watch:
                            out = saver.save()
                        rate = size / out["durable_s"]
                        limit = min(disk, net_limit[path]) if net_limit[path] else disk
                        row = results.setdefault((client, path), {"rate": [], "ratio": [], "limit": [],
                                                                  "daemon_cpu": [], "client_cpu": []})
                        row["rate"].append(rate)
                        row["limit"].append(limit)
                        row["ratio"].append(rate / limit)
                        row["daemon_cpu"].append(watch.cpu / (size / GiB))
                        row["client_cpu"].append(out["cpu_s"] / (size / GiB))
                for saver in savers.values():
                    saver.close()
            finally:
                for d in daemons.values():
                    d.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nstream path, {args.mib} MiB per save, {args.rounds} rounds (medians); "
          f"disk (fio best of QD1/QD8) median {median(fio) / 1e6:.0f} MB/s")
    for name, value in limits.items():
        print(f"  limit: {name:<34} {value / 1e6:>7.0f} MB/s")
    print(f"  TLS suite negotiated: {lo_suite} (loopback), {link_suite} (link)")
    print(f"\n{'client':<7} {'path':<13} {'MB/s':>6} {'limit':>6} {'ratio':>6} {'goal':>5} "
          f"{'daemon CPU':>10} {'client CPU':>10}")
    summary = {}
    for (client, path), row in results.items():
        ratio = median(row["ratio"])
        ok = ratio >= GOAL
        print(f"{client:<7} {path:<13} {median(row['rate']) / 1e6:>6.0f} {median(row['limit']) / 1e6:>6.0f} "
              f"{ratio:>6.2f} {'>=' + str(GOAL):>5}{'' if ok else ' *'} "
              f"{median(row['daemon_cpu']):>7.2f} s/GiB {median(row['client_cpu']):>7.2f} s/GiB")
        summary[f"{client}/{path}"] = {k: median(v) for k, v in row.items()}
    print("\nratio: the save's call-to-durable rate over the smallest of its limits, per round; "
          "* marks a goal missed.\nCPU: seconds per GiB saved, the daemon's (/proc) and the "
          "saving process's own (getrusage), medians.")
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "stream.json"), "w") as f:
        json.dump({"mib": args.mib, "rounds": args.rounds, "fio_Bps": fio,
                   "limits_Bps": limits, "suite": [lo_suite, link_suite], "cases": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
