"""Ops: who may connect to the daemon's sockets (a peer of another uid, as
`setpriv` makes one), and one daemon per root and per socket: a second one
refuses to start naming the first, and never takes its socket away."""

import grp
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BINARY, PYLIB, Daemon, wait_for

CKPTCTL = os.environ.get("CKPTCTL_BINARY",
                         os.path.join(os.path.dirname(BINARY), "..", "client", "cli", "ckptctl"))
NOBODY = 65534


@pytest.fixture
def open_dir():
    """A directory any uid may traverse (pytest's own are 0700)."""
    d = tempfile.mkdtemp(prefix="ckptd-ops-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _ckptctl_as(uid, groups, target):
    who = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(uid), *who,
                           CKPTCTL, "runs", "--socket", target],
                          capture_output=True, text=True, timeout=60)


def _serving(d):
    """Starts `d` and waits until it serves: its socket may exist before it
    does (a stale one), and its log may hold an earlier daemon's lines."""
    start = os.path.getsize(d.log) if os.path.exists(d.log) else 0
    d.start()
    deadline = time.monotonic() + 30
    while True:
        with open(d.log) as f:
            f.seek(start)
            if "ready: listening" in f.read():
                return d
        assert d.proc.poll() is None and time.monotonic() < deadline, open(d.log).read()[-2000:]
        time.sleep(0.02)


def _start_refused(root, sock, log):
    """Runs a daemon expected to refuse to start; returns (exit code, log text)."""
    with open(log, "wb") as out:
        p = subprocess.run([BINARY, "--root", str(root), "--listen", "unix:" + str(sock),
                            "--http-listen", ""], stdout=out, stderr=subprocess.STDOUT, timeout=60)
    return p.returncode, Path(log).read_text()


def test_the_sockets_group_may_connect_and_others_are_told_it_is_permissions(open_dir):
    """As under the unit (UMask=0027): with server.socket_group = "users" the
    API and arena sockets are srw-rw---- root:users after bind; a uid in
    the group connects, one outside is told it is a permission problem."""
    users = grp.getgrnam("users").gr_gid
    cfg = open_dir / "ckptd.toml"
    cfg.write_text('[server]\nsocket_group = "users"\n')
    d = Daemon(open_dir, ["--config", str(cfg)])
    old = os.umask(0o027)
    try:
        _serving(d)
    finally:
        os.umask(old)
    try:
        for path in (d.sock, d.sock + ".arenas"):
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode), path
            assert stat.S_IMODE(st.st_mode) == 0o660, (path, oct(st.st_mode))
            assert st.st_gid == users, path
        member = _ckptctl_as(NOBODY, [users], d.target)
        assert member.returncode == 0, member.stderr
        stranger = _ckptctl_as(NOBODY, [], d.target)
        assert stranger.returncode != 0
        assert "permission denied on ckptd's socket" in stranger.stderr, stranger.stderr
        assert "server.socket_group" in stranger.stderr
        assert "is it running" not in stranger.stderr
        # The Python client says the same, at once (no reconnecting).
        py = ("import ckptd\ntry:\n    ckptd.connect(%r).open_run('p', transport='stream')\n"
              "except ckptd.Error as e:\n    print(e.code, e.message)\nelse:\n    print('OK')\n"
              % d.target)
        env = {**os.environ, "PYTHONPATH": PYLIB}

        def python_as(groups):
            who = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
            return subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), *who,
                                   "/usr/bin/python3", "-c", py], capture_output=True, text=True,
                                  timeout=60, env=env, cwd=open_dir)

        assert python_as([users]).stdout.strip() == "OK"
        refused = python_as([])
        assert refused.stdout.startswith("PERMISSION_DENIED permission denied on ckptd's socket"), \
            refused.stdout + refused.stderr
        assert "server.socket_group" in refused.stdout
    finally:
        d.stop()


def test_one_daemon_per_root_and_per_socket(open_dir):
    first = _serving(Daemon(open_dir))
    try:
        # The same root, another socket: refused before it touches the root.
        rc, log = _start_refused(first.root, open_dir / "other.sock", open_dir / "second.log")
        assert rc == 1, log
        assert f"root {os.path.realpath(first.root)} is in use by another ckptd " \
               f"(pid {first.proc.pid})" in log, log
        assert "ckptd-root.lock" in log
        # Another root, the same socket: refused, and the socket stays the first's.
        rc, log = _start_refused(open_dir / "root-3", first.sock, open_dir / "third.log")
        assert rc == 1, log
        assert f"another ckptd is serving {first.sock}" in log, log
        assert "server.listen" in log
        assert os.path.exists(first.sock)
        assert subprocess.run([CKPTCTL, "runs", "--socket", first.target], capture_output=True,
                              timeout=60).returncode == 0
    finally:
        first.stop()
    # A clean stop leaves no socket behind, the arena socket included.
    assert not os.path.exists(first.sock)
    assert not os.path.exists(first.sock + ".arenas")
    # A daemon that died leaves its socket; the next one takes the root and
    # the socket over (the lock died with it).
    crashed = _serving(Daemon(open_dir))
    crashed.proc.send_signal(signal.SIGKILL)
    crashed.proc.wait()
    assert os.path.exists(crashed.sock)
    again = _serving(Daemon(open_dir))
    try:
        assert subprocess.run([CKPTCTL, "runs", "--socket", again.target], capture_output=True,
                              timeout=60).returncode == 0
    finally:
        again.stop()


def test_a_finished_run_is_listed_after_a_restart(tmp_path):
    """A run closed (finished) before a restart, on the daemon's default
    retention: listing its checkpoints after the restart. This aborted the
    daemon: startup takes the registry lock and then the run's, the listing
    took the run's and then the registry's (for the default policy), and
    absl's deadlock detector kills the process on such a cycle."""
    import numpy as np

    import ckptd

    d = _serving(Daemon(tmp_path))
    try:
        run = ckptd.connect(d.target).open_run("done", transport="stream")
        assert run.save(1, {"w": np.ones(4, dtype=np.float32)}).state == "committed"
        run.close()
    finally:
        d.stop()
    d = _serving(Daemon(tmp_path))
    try:
        for _ in range(2):
            r = subprocess.run([CKPTCTL, "ls", "done", "--socket", d.target], capture_output=True,
                               text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert "step_1.gguf" in r.stdout or " 1 " in r.stdout, r.stdout
        assert d.proc.poll() is None, open(d.log).read()[-2000:]
    finally:
        d.stop()


def test_ckptctl_takes_its_options_before_or_after_the_command_and_explains_itself(tmp_path):
    """`ckptctl --socket X ls RUN` as well as `ckptctl ls RUN --socket X`;
    `ckptctl help [COMMAND...]`; `import --overwrite`, which the refusal
    without it asks for."""
    import numpy as np

    import ckptd

    d = _serving(Daemon(tmp_path))
    try:
        run = ckptd.connect(d.target).open_run("cli", transport="stream")
        assert run.save(1, {"w": np.ones(4, dtype=np.float32)}).state == "committed"

        def ctl(*args):
            return subprocess.run([CKPTCTL, *args], capture_output=True, text=True, timeout=60)

        for args in (["--socket", d.target, "ls", "cli"], ["ls", "cli", "--socket", d.target],
                     ["--socket", d.target, "retention", "plan", "cli"],
                     ["retention", "plan", "cli", "--socket", d.target]):
            r = ctl(*args)
            assert r.returncode == 0, (args, r.stderr)
        top = ctl("help")
        assert top.returncode == 0 and "Usage: ckptctl" in top.stdout
        assert all(c in top.stdout for c in ("ls", "import", "retention", "--socket")), top.stdout
        sub = ctl("help", "retention", "plan")
        assert sub.returncode == 0 and "RUN" in sub.stdout and "keep/delete" in sub.stdout
        bad = ctl("help", "nope")
        assert bad.returncode == 2 and "no command 'nope'" in bad.stderr
        # A run or step that is not there, in the user's words (commands, not API calls).
        for args, says in ((["ls", "nosuchrun"], "ckptctl runs lists them"),
                           (["show", "cli", "99999"], "ckptctl ls RUN lists its steps")):
            r = ctl("--socket", d.target, *args)
            assert r.returncode == 1 and says in r.stderr, (args, r.stderr)
            assert not re.search(r"OpenRun|ListCheckpoints", r.stderr), r.stderr
        src = os.path.join(d.root, "cli", "weights", "step_1.gguf")
        assert ctl("--socket", d.target, "import", "copy", src, "--step", "5").returncode == 0
        again = ctl("--socket", d.target, "import", "copy", src, "--step", "5")
        assert again.returncode != 0 and "--overwrite" in again.stderr, again.stderr
        assert ctl("--socket", d.target, "import", "copy", src, "--step", "5",
                   "--overwrite").returncode == 0
    finally:
        d.stop()


def test_ckptctl_show_ls_and_runs_speak_to_people(tmp_path):
    """`show`: metadata as `key type value` rows and a tensor table (`--json`:
    the API's message); `ls`: one column per metric, in name order, with
    every digit; `runs`: an imported run is finished, a run a trainer has
    open stays open, and an open run nobody uses turns idle."""
    import json

    import numpy as np

    import ckptd

    cfg = tmp_path / "idle.toml"
    cfg.write_text("[server]\nunload_idle_runs_seconds = 1\n")
    d = _serving(Daemon(tmp_path, ["--config", str(cfg)]))
    try:
        def ctl(*args):
            r = subprocess.run([CKPTCTL, "--socket", d.target, *args], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, (args, r.stderr)
            return r.stdout

        def state(run_id):
            rows = [ln.split() for ln in ctl("runs").splitlines()[1:]]
            return {r[0]: r[1] for r in rows}[run_id]

        run = ckptd.connect(d.target).open_run("people", transport="stream")
        loss, acc = 0.1 + 0.2, 2 / 3  # 0.30000000000000004: 17 digits
        run.save(10, {"w": np.ones((2, 3), dtype=np.float32)}, metrics={"loss": loss, "acc": acc})
        run.save(20, {"w": np.ones((2, 3), dtype=np.float32)}, metrics={"loss": 0.25})
        show = ctl("show", "people", "20")
        rows = {ln.split()[1]: ln.split()[2:] for ln in show.splitlines()
                if re.match(r"^\s+\d+\s+\S", ln)}
        assert re.search(r"^\s+#\s+key\s+type\s+value$", show, re.M), show
        assert rows["ckpt.step"] == ["u64", "20"]
        assert rows["ckpt.run_id"] == ["string", '"people"']
        assert rows["ckpt.metrics.loss"] == ["f64", "0.25"]
        assert rows["w"][:3] == ["f32", "[3,", "2]"], rows["w"]
        assert "stringValue" not in show
        detail = json.loads(ctl("show", "people", "20", "--json"))
        assert detail["info"]["step"] == "20" and detail["metadata"]
        ls = ctl("ls", "people").splitlines()
        assert ls[0].index(" acc ") < ls[0].index(" loss "), ls[0]

        def cell(row, name):  # columns are right-aligned under their names
            end = ls[0].index(f" {name} ") + len(name) + 1
            return row[:end].split()[-1]

        assert (cell(ls[1], "acc"), cell(ls[1], "loss")) == (repr(acc), repr(loss)), ls
        assert (cell(ls[2], "acc"), cell(ls[2], "loss")) == ("-", "0.25"), ls

        src = os.path.join(d.root, "people", "weights", "step_10.gguf")
        assert "run finished" in ctl("import", "imported", src, "--step", "1")
        assert state("imported") == "finished"
        assert "left open" in ctl("import", "people", src, "--step", "30")  # its trainer has it
        assert state("people") == "open"
        wait_for(lambda: state("people") == "idle", 30, "the unused run to turn idle")
        run.should_save(31)
        assert state("people") == "open"
    finally:
        d.stop()
