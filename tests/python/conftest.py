"""Fixtures: a real ckptd daemon on a temp root and a Unix socket, and the
ckptd package as built (build/python/lib, by `make build`)."""

import os
import signal
import subprocess
import sys
import time

import pytest

# An idle gRPC channel answers the daemon's shutdown ping only when its
# backup poller runs (every 5 s by default), so each daemon stop with a
# client connected took 5 s. Polling every 100 ms keeps the same graceful
# stop (the ping is still answered) at a tenth of a second; set before any
# test module imports grpc. Trainers keep gRPC's default.
os.environ.setdefault("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The built package (make build: build/python/lib; ctest says where).
PYLIB = os.environ.get("CKPTD_PYTHON_LIB") or os.path.join(ROOT, "build", "python", "lib")
sys.path.insert(0, PYLIB)
BINARY = os.environ.get("CKPTD_BINARY", os.path.join(ROOT, "build", "daemon", "ckptd"))


class Daemon:
    def __init__(self, tmp, extra_args=()):
        self.root = str(tmp / "runs")
        self.sock = str(tmp / "ckptd.sock")
        self.target = "unix:" + self.sock
        self.log = str(tmp / "daemon.log")
        self.extra_args = list(extra_args)
        self.http = [] if "--http-listen" in self.extra_args else ["--http-listen", ""]
        self.proc = None

    def start(self, env=None):
        """Starts the binary; `env`: extra environment (e.g. CKPTD_TEST_FAULTS)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [BINARY, "--root", self.root, "--listen", self.target, *self.http,
                 "--log-level", "debug", *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ckptd did not start: {open(self.log).read()[-2000:]}")
            time.sleep(0.02)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self):
        e = dict(os.environ)
        e["CKPTD_SOCKET"] = self.target
        e["PYTHONPATH"] = PYLIB
        return e


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path).start()
    yield d
    d.stop()


@pytest.fixture
def hot_daemon(tmp_path):
    cfg = tmp_path / "hot.toml"
    cfg.write_text("[shm]\nkeep_last_in_memory = true\n")
    d = Daemon(tmp_path, ["--config", str(cfg)]).start()
    yield d
    d.stop()


def logged_port(log, what="http", timeout=30):
    """The port a daemon started with port 0 took, from its log line
    ("http: listening on HOST:PORT" or, what="ready", the API's
    "ready: listening on HOST:PORT"): no port is picked, then bound, by
    another process in between."""
    marker = f"{what}: listening on "
    deadline = time.monotonic() + timeout
    while True:
        with open(log) as f:
            for line in f:
                if marker in line:
                    return int(line.split(marker, 1)[1].split()[0].rsplit(":", 1)[1])
        assert time.monotonic() < deadline, f"no '{marker}' line in {log} after {timeout}s"
        time.sleep(0.02)


def wait_for(pred, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
