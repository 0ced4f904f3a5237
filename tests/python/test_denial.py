"""Denial of service by a single client, each against the real daemon: a
pattern built to backtrack, waiters that would take every thread, a hot
copy asked for without its key, and a SIGTERM while a handler is stuck."""

import contextlib
import os
import signal
import time

import grpc
import pytest
import torch

import ckptd
from ckptd import shm
from ckptd.v1 import ckptd_pb2 as pb
from ckptd.v1 import ckptd_pb2_grpc as pb_grpc
from conftest import Daemon, logged_port, wait_for

F32 = pb.TENSOR_TYPE_F32


@contextlib.contextmanager
def daemon_with(tmp, config: str, env=None):
    cfg = tmp / "ckptd.toml"
    cfg.write_text(config)
    d = Daemon(tmp, ["--config", str(cfg)]).start(env=env)
    ch = grpc.insecure_channel(d.target)
    try:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield d, pb_grpc.CheckpointdStub(ch)
    finally:
        ch.close()
        d.stop()


def test_a_pattern_built_to_backtrack_answers_at_once(tmp_path):
    """drop = "*a*a*a*a*a*a*a*a*a*a*a*b" against a 63-byte name once spun a
    thread for good; matching now remembers what failed."""
    with daemon_with(tmp_path, "") as (d, stub):
        req = pb.OpenRunRequest(run_id="evil")
        req.model_tensors.add(name="a" * 63, type=F32, ne=[4])
        ex = req.exports.add(name="x")
        ex.definition.name = "x"
        ex.definition.drop.append("*a*a*a*a*a*a*a*a*a*a*a*b")
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.OpenRun(req, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        assert "is not consumed by any rule" in e.value.details()
        assert time.monotonic() - t0 < 30
        # More wildcards than a profile may hold: refused, naming the limit.
        ex.definition.drop[0] = "*a" * 16 + "*b"
        with pytest.raises(grpc.RpcError, match="wildcards and captures; at most 16"):
            stub.OpenRun(req, timeout=30)


def test_sigterm_stops_the_daemon_within_its_deadline_even_with_a_write_stuck(tmp_path):
    config = "[server]\nshutdown_deadline_seconds = 2\n"
    with daemon_with(tmp_path, config) as (d, stub):
        stub.OpenRun(pb.OpenRunRequest(run_id="stuck"))  # settings stored now, not under the fault
    with daemon_with(tmp_path, config, env={"CKPTD_TEST_FAULTS": "delay=write:120000"}) as (d, stub):
        h = pb.SaveHeader(run_id="stuck", step=1, force=True)
        h.tensors.add(name="w", type=F32, ne=[1024])
        msgs = [pb.SaveRequest(header=h), pb.SaveRequest(data=b"\0" * 4096)]
        save = stub.Save.future(iter(msgs))
        weights = os.path.join(d.root, "stuck", "weights")
        # The save's file exists: its first write is asleep for two minutes.
        wait_for(lambda: any(".step_1.gguf.tmp-" in f for f in os.listdir(weights)), 60,
                 "the save to start writing")
        time.sleep(0.2)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(timeout=60)
        took = time.monotonic() - t0
        with pytest.raises(grpc.RpcError):
            save.result(timeout=10)
    assert took < 30, f"SIGTERM took {took:.1f}s with a 2 s deadline"
    assert d.proc.returncode == 3
    log = open(d.log).read()
    assert "still busy 2s after SIGTERM (server.shutdown_deadline_seconds); exiting now" in log
    # What it left behind is what a crash leaves: the next start recovers.
    d.start()
    d.stop()
    assert os.listdir(os.path.join(d.root, "stuck", "weights")) == []


def test_waiters_never_take_the_threads_trainers_need(tmp_path):
    """70 WaitSaved calls on a save that stays pending, with 8 server
    threads: the 2 allowed to wait (server.max_waiting_calls) wait, the
    rest are answered at once, and another trainer's ShouldSave and save
    go through."""
    with daemon_with(tmp_path, "[server]\nmax_threads = 8\n",
                     env={"CKPTD_TEST_FAULTS": "delay=write:200"}) as (d, stub):
        slow = ckptd.connect(d.target).open_run("slow", schedule={"every_steps": 1})
        r = slow.save(1, model={"w": torch.ones(1024)})
        assert r.state == "pending"  # for seconds: each of its writes sleeps 0.2 s
        waits = []
        for _ in range(70):  # one after another: each finds a thread free
            waits.append(stub.WaitSaved.future(pb.WaitSavedRequest(
                run_id="slow", save_id=r.save_id, timeout_seconds=60), timeout=90))
            time.sleep(0.005)
        # All but the 2 allowed to wait are answered, not held (by time, not
        # by a sleep: a loaded machine answers later, still well within 60 s).
        wait_for(lambda: sum(f.done() for f in waits) >= 68, 30, "68 of 70 waits answered")
        # Answered PENDING at once, not holding a thread for 60 s (before
        # waits were capped, none was answered: 8 held threads, the rest
        # refused).
        pending_now = [f for f in waits if f.done() and f.exception() is None
                       and f.result().state == pb.WaitSavedResponse.STATE_PENDING]
        trainer = pb.ShouldSaveRequest(run_id="slow", step=2)
        for _ in range(20):
            assert stub.ShouldSave(trainer, timeout=10).due
        assert len(pending_now) >= 60, len(pending_now)
        slow.wait(timeout=120)
        # A burst at once can still find all 8 threads busy for an instant
        # (the sync server then answers RESOURCE_EXHAUSTED); none holds one
        # for its 60 s.
        states = []
        for f in waits:
            try:
                states.append(pb.WaitSavedResponse.State.Name(f.result().state))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                states.append("RESOURCE_EXHAUSTED")
        assert set(states) <= {"STATE_PENDING", "STATE_COMMITTED", "RESOURCE_EXHAUSTED"}, states


def test_a_hot_copy_needs_its_key(tmp_path):
    with daemon_with(tmp_path, "[shm]\nkeep_last_in_memory = true\n") as (d, stub):
        run = ckptd.connect(d.target).open_run("hot")
        run.save(1, model={"w": torch.arange(1024, dtype=torch.float32)})
        run.wait()
        info = stub.GetRun(pb.GetRunRequest(run_id="hot"))
        assert info.HasField("in_memory") and len(info.in_memory.key) == 32
        sock = info.in_memory.socket

        def hot(request):
            ch = shm.Channel(sock)
            try:
                return ch.exchange(request, want_fd=True)
            finally:
                ch.close()

        for request in ("HOT hot 1", "HOT hot 1 " + "0" * 32):
            with pytest.raises(shm.ArenaError) as e:
                hot(request)
            assert "key" in str(e.value), e.value
        words, fd = hot(f"HOT hot 1 {info.in_memory.key}")
        assert fd is not None and int(words[0]) > 0
        os.close(fd)
        # The client passes it: a hot restore still reads from memory.
        w = torch.zeros(1024)
        assert run.restore(model={"w": w}).source == "memory"
        assert torch.equal(w, torch.arange(1024, dtype=torch.float32))
        assert "hot copy refused run=hot step=1" in open(d.log).read()


def _http(port, raw: bytes, timeout=10) -> bytes:
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_half_sent_http_requests_cannot_take_the_probes_or_hold_slots(tmp_path):
    import socket
    cfg = tmp_path / "ckptd.toml"
    cfg.write_text("[http]\nheader_timeout_seconds = 1\n")
    d = Daemon(tmp_path, ["--config", str(cfg), "--http-listen", "127.0.0.1:0"]).start()
    try:
        port = logged_port(d.log)
        held = []
        for _ in range(64):  # every slot the daemon has, from one client
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")  # never finished
            held.append(s)
        time.sleep(0.2)
        assert _http(port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 200")
        busy = _http(port, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        assert busy.startswith(b"HTTP/1.1 503") and b"http.max_connections_per_peer" in busy, busy
        # The header timeout frees them: 408 to those that got a slot.
        answers = []
        for s in held:
            try:
                answers.append(s.recv(4096))
            except OSError as e:
                answers.append(repr(e).encode())
            s.close()
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) == 16, answers[:20]
        assert all(a.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")) for a in answers), answers
        ok = _http(port, b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200"), ok[:200]
        # Oversized: said so, not a silent close.
        huge = _http(port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert huge.startswith(b"HTTP/1.1 431"), huge[:100]
        body = _http(port, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000)
        assert body.startswith(b"HTTP/1.1 413"), body[:100]
    finally:
        d.stop()
