"""Hostile and malformed requests against a real daemon, table-driven: each
case names the expected gRPC status and a fragment of its message (which
must name the field or setting at fault). After every case the daemon still
answers; after the table nothing was left on disk (no temp files, no
directory for a refused run) and the daemon's memory stayed bounded."""

import contextlib
import os
import re

import grpc
import pytest

from conftest import Daemon, wait_for
import ckptd  # noqa: F401  (puts the generated stubs on the path)
from ckptd.v1 import ckptd_pb2 as pb
from ckptd.v1 import ckptd_pb2_grpc as pb_grpc

F32 = pb.TENSOR_TYPE_F32
GOOD = "good"  # a run opened before the table, with step 10 committed


def entry(key, **value):
    return pb.MetadataEntry(key=key, value=pb.MetadataValue(**value))


def header(run=GOOD, step=20, tensors=(("w", F32, (4,)),), **kw):
    h = pb.SaveHeader(run_id=run, step=step, force=True, **kw)
    for name, ttype, ne in tensors:
        h.tensors.add(name=name, type=ttype, ne=list(ne))
    return h


def stream(h, data=b"\0" * 16):
    msgs = [] if h is None else [pb.SaveRequest(header=h)]
    if data:
        msgs.append(pb.SaveRequest(data=data))
    return iter(msgs)


def save(stub, h, data=b"\0" * 16):
    return stub.Save(stream(h, data), timeout=30)


def open_run(run_id="x", **kw):
    return lambda stub, ctx: stub.OpenRun(pb.OpenRunRequest(run_id=run_id, **kw), timeout=30)


def open_md(*entries):
    return lambda stub, ctx: stub.OpenRun(pb.OpenRunRequest(run_id="md", model_metadata=list(entries)), timeout=30)


def tensors(n):
    return [(f"t{i}", F32, (1,)) for i in range(n)]


def raw(method, *messages):
    """Bytes no client would send, straight onto the wire (a unary call, or a
    client stream when several messages are given)."""
    def call(stub, ctx):
        path = f"/ckptd.v1.Checkpointd/{method}"
        if method in ("Save", "CloseRun"):
            return stub.channel.stream_unary(path)(iter(messages), timeout=30)
        return stub.channel.unary_unary(path)(messages[0], timeout=30)
    return call


NOT_UTF8 = b"\xff\xfe\xc3\x28"  # invalid UTF-8 (a bad start byte, a bad continuation)

# (id, call(stub, ctx), expected code, message fragment). ctx: paths of the test.
CASES = [
    # Requests gRPC cannot decode: INVALID_ARGUMENT naming the method, not INTERNAL ""
    ("undecodable-open-run", raw("OpenRun", b"\x0a\x10abc"), "INVALID_ARGUMENT",
     "request to /ckptd.v1.Checkpointd/OpenRun could not be decoded"),
    ("not-utf8-run-id", raw("OpenRun", b"\x0a\x04" + NOT_UTF8), "INVALID_ARGUMENT", "not valid UTF-8"),
    ("not-utf8-should-save", raw("ShouldSave", b"\x0a\x04" + NOT_UTF8), "INVALID_ARGUMENT",
     "could not be decoded"),
    ("undecodable-save-header", raw("Save", b"\x0a\x06\x0a\x04" + NOT_UTF8), "INVALID_ARGUMENT",
     "could not be decoded"),
    ("garbage-get-run", raw("GetRun", b"\xff" * 32), "INVALID_ARGUMENT", "could not be decoded"),
    # OpenRun: the run id and its directory
    ("run-id-empty", open_run(""), "INVALID_ARGUMENT", "run_id '' must match"),
    ("run-id-dot", open_run("."), "INVALID_ARGUMENT", "must match"),
    ("run-id-dotdot", open_run(".."), "INVALID_ARGUMENT", "must match"),
    ("run-id-slash", open_run("a/b"), "INVALID_ARGUMENT", "must match"),
    ("run-id-too-long", open_run("r" * 129), "INVALID_ARGUMENT", "must match"),
    ("run-id-nul", open_run("a\0b"), "INVALID_ARGUMENT", "run_id 'a\\x00b' must match"),
    ("run-id-space", open_run("a b"), "INVALID_ARGUMENT", "must match"),
    ("run-dir-relative", open_run("x", run_dir="rel/dir"), "INVALID_ARGUMENT", "is relative"),
    ("run-dir-outside", lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="x", run_dir=c["outside"])),
     "PERMISSION_DENIED", "outside the configured roots"),
    ("run-dir-root", lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="x", run_dir=c["root"])),
     "INVALID_ARGUMENT", "itself"),
    ("run-dir-root-slash", lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="x", run_dir=c["root"] + "/")),
     "INVALID_ARGUMENT", "itself"),
    ("run-dir-dotdot", lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="x", run_dir=c["root"] + "/new/../x")),
     "INVALID_ARGUMENT", "'..'"),
    ("run-dir-nul", lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="x", run_dir=c["root"] + "/a\0b")),
     "INVALID_ARGUMENT", "run_dir contains a NUL byte"),
    ("run-dir-of-another-run", lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="evil", run_dir=c["good"])),
     "FAILED_PRECONDITION", "belongs to run 'good'"),
    ("run-dir-inside-another-run",
     lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="evil", run_dir=c["good"] + "/sub")),
     "FAILED_PRECONDITION", "the directory of run 'good'"),
    ("run-dir-in-weights", lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="evil", run_dir=c["good"] + "/weights")),
     "FAILED_PRECONDITION", "the directory of run 'good'"),
    ("run-id-moved", lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id=GOOD, run_dir=c["root"] + "/elsewhere")),
     "FAILED_PRECONDITION", "already lives in"),
    # OpenRun: model metadata
    ("md-key-empty", open_md(entry("", string_value="v")), "INVALID_ARGUMENT", "the key is empty"),
    ("md-key-nul", open_md(entry("a\0b", string_value="v")), "INVALID_ARGUMENT", "control character (byte 0x00"),
    ("md-key-newline", open_md(entry("a\nb", string_value="v")), "INVALID_ARGUMENT", "control character (byte 0x0a"),
    ("md-key-escape", open_md(entry("a\x1b[31m", string_value="v")), "INVALID_ARGUMENT", "control character"),
    ("md-key-reserved", open_md(entry("ckpt.step", u64=1)), "INVALID_ARGUMENT", "written by the daemon"),
    ("md-key-uuid", open_md(entry("general.uuid", string_value="x")), "INVALID_ARGUMENT", "written by the daemon"),
    ("md-key-duplicate", open_md(entry("a", u32=1), entry("a", u32=2)), "INVALID_ARGUMENT", "duplicate metadata key"),
    ("md-value-unset", open_md(pb.MetadataEntry(key="a")), "INVALID_ARGUMENT", "no value set"),
    ("md-nested-array",
     open_md(entry("a", array=pb.ArrayValue(element_type=pb.VALUE_TYPE_ARRAY, items=[]))),
     "INVALID_ARGUMENT", "nested arrays"),
    ("md-array-mixed",
     open_md(entry("a", array=pb.ArrayValue(element_type=pb.VALUE_TYPE_U32,
                                            items=[pb.MetadataValue(string_value="x")]))),
     "INVALID_ARGUMENT", "array element is not"),
    ("md-too-big", open_md(entry("big", string_value="x" * (2 << 20))), "RESOURCE_EXHAUSTED",
     "server.max_metadata_bytes"),
    ("model-tensors-too-many",
     lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="many", model_tensors=[
         pb.TensorDescriptor(name=f"t{i}", type=F32, ne=[1]) for i in range(1001)])),
     "RESOURCE_EXHAUSTED", "server.max_tensors_per_save"),
    ("export-unknown-profile",
     lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="ex", exports=[pb.ExportRequest(profile="no-such")])),
     None, "exports"),
    ("export-bad-name",
     lambda s, c: s.OpenRun(pb.OpenRunRequest(
         run_id="ex", exports=[pb.ExportRequest(name="Bad Name", profile="hf-llama")])),
     "INVALID_ARGUMENT", "exports: name 'Bad Name'"),
    ("export-twice",
     lambda s, c: s.OpenRun(pb.OpenRunRequest(run_id="ex", exports=[pb.ExportRequest(profile="hf-llama"),
                                                                    pb.ExportRequest(profile="hf-llama")])),
     "INVALID_ARGUMENT", "listed twice"),
    # ShouldSave and reads of unknown things
    ("should-save-unknown-run", lambda s, c: s.ShouldSave(pb.ShouldSaveRequest(run_id="nope", step=1)),
     "NOT_FOUND", "run 'nope' is not known to this daemon"),
    ("get-run-unknown", lambda s, c: s.GetRun(pb.GetRunRequest(run_id="nope")), "NOT_FOUND", "'nope'"),
    ("get-checkpoint-unknown-step",
     lambda s, c: s.GetCheckpoint(pb.GetCheckpointRequest(run_id=GOOD, step=999)), "NOT_FOUND", "999"),
    ("pin-without-reason", lambda s, c: s.Pin(pb.PinRequest(run_id=GOOD, step=10)), "INVALID_ARGUMENT", "reason"),
    ("pin-unknown-step", lambda s, c: s.Pin(pb.PinRequest(run_id=GOOD, step=999, reason="r")), "NOT_FOUND", "999"),
    ("list-checkpoints-bad-token",
     lambda s, c: s.ListCheckpoints(pb.ListCheckpointsRequest(run_id=GOOD, page_token="garbage")),
     "INVALID_ARGUMENT", "page_token"),
    ("watch-unknown-run", lambda s, c: list(s.WatchRun(pb.WatchRunRequest(run_id="nope"), timeout=10)),
     "NOT_FOUND", "'nope'"),
    # Save (stream): the header
    ("save-no-header", lambda s, c: save(s, None), "INVALID_ARGUMENT", "first Save message must be a header"),
    ("save-empty-stream", lambda s, c: s.Save(iter([]), timeout=30), "INVALID_ARGUMENT", "must be a header"),
    ("save-unknown-run", lambda s, c: save(s, header(run="nope")), "NOT_FOUND", "'nope' is not known"),
    ("save-no-tensors", lambda s, c: save(s, header(tensors=()), b""), "INVALID_ARGUMENT", "at least one tensor"),
    ("save-name-empty", lambda s, c: save(s, header(tensors=(("", F32, (4,)),))), "INVALID_ARGUMENT",
     "the name is empty"),
    ("save-name-nul", lambda s, c: save(s, header(tensors=(("x\0a", F32, (2,)), ("x\0b", F32, (2,))))),
     "INVALID_ARGUMENT", "tensors[0] 'x\\x00a': the name has a control character"),
    ("save-name-tab", lambda s, c: save(s, header(tensors=(("a\tb", F32, (4,)),))), "INVALID_ARGUMENT",
     "control character (byte 0x09"),
    ("save-name-64-bytes", lambda s, c: save(s, header(tensors=(("n" * 64, F32, (4,)),))), "INVALID_ARGUMENT",
     "ggml allows at most 63"),
    ("save-name-duplicate", lambda s, c: save(s, header(tensors=(("w", F32, (2,)), ("w", F32, (2,))))),
     "INVALID_ARGUMENT", "duplicate tensor name 'w'"),
    ("save-type-unknown", lambda s, c: save(s, header(tensors=(("w", 99, (4,)),))), "INVALID_ARGUMENT",
     "is not one ckptd writes"),
    ("save-group-invalid",
     lambda s, c: save(s, pb.SaveHeader(run_id=GOOD, step=20, force=True,
                                        tensors=[pb.TensorDescriptor(name="w", type=F32, ne=[4], group=7)])),
     "INVALID_ARGUMENT", "group must be MODEL or TRAIN"),
    ("save-five-dims", lambda s, c: save(s, header(tensors=(("w", F32, (1, 1, 1, 1, 4)),))), "INVALID_ARGUMENT",
     "'w'"),
    ("save-size-overflow", lambda s, c: save(s, header(tensors=(("w", F32, (1 << 62, 1 << 62)),))),
     "INVALID_ARGUMENT", "'w'"),
    ("save-q8-not-blocks", lambda s, c: save(s, header(tensors=(("q", pb.TENSOR_TYPE_Q8_0, (33,)),))),
     "INVALID_ARGUMENT", "'q'"),
    ("save-too-few-bytes", lambda s, c: save(s, header(), b"\0" * 8), None, "tensor bytes"),
    ("save-too-many-bytes", lambda s, c: save(s, header(), b"\0" * 64), "INVALID_ARGUMENT", "bytes"),
    ("save-metric-nul", lambda s, c: save(s, header(metrics={"lo\0ss": 1.0})), "INVALID_ARGUMENT",
     "metrics: the name 'lo\\x00ss'"),
    ("save-metric-empty", lambda s, c: save(s, header(metrics={"": 1.0})), "INVALID_ARGUMENT",
     "metrics: the name '' is empty"),
    ("save-train-md-reserved", lambda s, c: save(s, header(train_metadata=[entry("ckpt.role", string_value="x")])),
     "INVALID_ARGUMENT", "train_metadata[0] 'ckpt.role'"),
    ("save-too-many-tensors", lambda s, c: save(s, header(tensors=tensors(1001)), b""), "RESOURCE_EXHAUSTED",
     "server.max_tensors_per_save (1000)"),
    ("save-train-md-too-big",
     lambda s, c: save(s, header(train_metadata=[entry("big", string_value="x" * (2 << 20))])),
     "RESOURCE_EXHAUSTED", "server.max_metadata_bytes"),
    ("save-below-last", lambda s, c: save(s, header(step=5)), "FAILED_PRECONDITION", "below the last committed"),
    ("save-existing-step", lambda s, c: save(s, header(step=10)), "ALREADY_EXISTS", "10"),
    # CloseRun
    ("close-no-header", lambda s, c: s.CloseRun(iter([]), timeout=30), "INVALID_ARGUMENT", "header"),
    ("close-unknown-run", lambda s, c: s.CloseRun(iter([pb.SaveRequest(header=pb.SaveHeader(run_id="nope"))])),
     "NOT_FOUND", "'nope'"),
    # SaveShared / SavePointers / WaitSaved
    ("shared-unknown-run",
     lambda s, c: s.SaveShared(pb.SaveSharedRequest(header=header(run="nope"),
                                                    locations=[pb.TensorLocation(arena_id=1)])),
     "NOT_FOUND", "run 'nope' is not known to this daemon"),
    ("shared-locations-mismatch",
     lambda s, c: s.SaveShared(pb.SaveSharedRequest(header=header(), locations=[])),
     "INVALID_ARGUMENT", "locations: 0 given for 1 tensors"),
    ("shared-unknown-arena",
     lambda s, c: s.SaveShared(pb.SaveSharedRequest(header=header(), locations=[pb.TensorLocation(arena_id=424242)])),
     "NOT_FOUND", "locations[0]: arena 424242 is not registered"),
    ("shared-name-nul",
     lambda s, c: s.SaveShared(pb.SaveSharedRequest(header=header(tensors=(("x\0", F32, (4,)),)),
                                                    locations=[pb.TensorLocation(arena_id=1)])),
     "INVALID_ARGUMENT", "control character"),
    ("pointers-unknown-run",
     lambda s, c: s.SavePointers(pb.SavePointersRequest(header=header(run="nope"), addresses=[4096])),
     "NOT_FOUND", "'nope' is not known"),
    ("pointers-unknown-attachment",
     lambda s, c: s.SavePointers(pb.SavePointersRequest(header=header(), attachment_id=77, addresses=[4096])),
     "NOT_FOUND", "attachment 77"),
    ("wait-unknown-save", lambda s, c: s.WaitSaved(pb.WaitSavedRequest(run_id=GOOD, save_id=1)),
     "NOT_FOUND", "save 1"),
    ("wait-lost-step", lambda s, c: s.WaitSaved(pb.WaitSavedRequest(run_id=GOOD, save_id=1, step=11)),
     "NOT_FOUND", "step 11 is not committed"),
    ("wait-timeout-too-long",
     lambda s, c: s.WaitSaved(pb.WaitSavedRequest(run_id=GOOD, save_id=1, timeout_seconds=601)),
     "INVALID_ARGUMENT", "timeout_seconds"),
]


@contextlib.contextmanager
def _daemon(tmp, config: str):
    """A daemon with `config` (TOML text) and a raw stub on it."""
    cfg = tmp / "ckptd.toml"
    cfg.write_text(config)
    d = Daemon(tmp, ["--config", str(cfg)]).start()
    ch = grpc.insecure_channel(d.target)
    try:
        grpc.channel_ready_future(ch).result(timeout=30)
        stub = pb_grpc.CheckpointdStub(ch)
        stub.channel = ch  # for raw bytes
        yield d, stub
    finally:
        ch.close()
        d.stop()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    with _daemon(tmp, "[server]\nmax_tensors_per_save = 1000\nmax_metadata_bytes = 1048576\n") as (d, stub):
        stub.OpenRun(pb.OpenRunRequest(run_id=GOOD))
        stub.Save(stream(header(step=10)))
        ctx = {"root": os.path.realpath(d.root), "good": os.path.realpath(os.path.join(d.root, GOOD)),
               "outside": str(tmp / "outside")}
        os.makedirs(ctx["outside"], exist_ok=True)
        yield d, stub, ctx


def test_the_table_has_sixty_cases_or_more():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_clear_status(hostile, case):
    d, stub, ctx = hostile
    _, call, code, fragment = case
    with pytest.raises(grpc.RpcError) as err:
        call(stub, ctx)
    got = err.value.code().name
    if code is not None:
        assert got == code, f"{got}: {err.value.details()}"
    assert got not in ("INTERNAL", "UNKNOWN"), err.value.details()
    assert fragment in (err.value.details() or ""), f"{got}: {err.value.details()!r}"
    # What the client sent comes back escaped, never as raw control characters.
    assert not any(ord(ch) < 32 for ch in err.value.details()), repr(err.value.details())
    if os.environ.get("HOSTILE_PRINT"):
        print(f"\n{case[0]}: {got}: {err.value.details()}")
    stub.ListRuns(pb.ListRunsRequest(), timeout=10)  # alive


def test_after_the_table_nothing_is_left_and_memory_is_bounded(hostile):
    d, stub, _ = hostile
    assert d.proc.poll() is None
    runs = sorted(os.listdir(d.root))
    assert [r for r in runs if not r.startswith("ckptd")] == [GOOD], runs
    leftovers = [os.path.join(dp, f) for dp, _, fs in os.walk(d.root) for f in fs if ".tmp-" in f]
    assert leftovers == []
    weights = sorted(os.listdir(os.path.join(d.root, GOOD, "weights")))
    assert weights == ["latest", "step_10.gguf"], weights
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", open(f"/proc/{d.proc.pid}/status").read()).group(1)) << 10
    assert rss < 256 << 20, f"daemon RSS {rss >> 20} MiB after the hostile table"


def test_dashboards_and_stalled_saves_cannot_starve_a_trainer(tmp_path):
    """With 16 server threads: 60 WatchRun streams held open (more than
    there are threads: a watch holds none) and 12 Save streams that go quiet
    after their header. Beyond their caps (max_watch_streams = 50; half the
    threads for saves) streams are refused at once, naming the setting; a
    trainer's ShouldSave and shared-memory save still go through, and every
    held watch sees its commit."""
    import threading

    import torch

    with _daemon(tmp_path, "[server]\nmax_threads = 16\nmax_watch_streams = 50\n") as (d, stub):
        stub.OpenRun(pb.OpenRunRequest(run_id="busy"))
        stub.OpenRun(pb.OpenRunRequest(run_id="trainer"))
        watchers = [stub.WatchRun(pb.WatchRunRequest(run_id="trainer")) for _ in range(60)]
        quiet = threading.Event()

        def stalled(i):
            yield pb.SaveRequest(header=header(run="busy", step=100 + i))
            quiet.wait(60)

        saves = [stub.Save.future(stalled(i)) for i in range(12)]
        # Refusals come at once (by the clock's measure on a loaded machine:
        # waited for); the admitted streams stay open.
        wait_for(lambda: sum(w.done() for w in watchers) >= 60 - 50, 30, "10 watches refused")
        refused_watch = [(w.code().name, w.details()) for w in watchers if w.done()]
        held = [w for w in watchers if not w.done()]
        # The trainer, meanwhile: ShouldSave and a save over shared memory.
        trainer = ckptd.connect(d.target).open_run("trainer", schedule={"every_steps": 1})
        assert trainer.should_save(1)
        r = trainer.save(1, model={"w": torch.ones(1000)})
        trainer.wait()
        assert r.state == "committed", r
        # Every held watch gets the commit.
        seen = [next(w) for w in held]
        assert all(e.step == 1 for e in seen), seen
        quiet.set()
        refused_save = []
        for f in saves:
            try:
                f.result(timeout=60)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused_save.append(e.details())
        for w in watchers:
            w.cancel()
        assert len(refused_watch) == 60 - 50, refused_watch
        assert len(held) == 50
        assert all(c == "RESOURCE_EXHAUSTED" and "server.max_watch_streams" in m for c, m in refused_watch)
        assert len(refused_save) == 12 - 8, refused_save
        assert all("server.max_save_streams" in m for m in refused_save)


def test_the_memory_budget_bounds_run_settings_and_save_headers(tmp_path):
    """server.memory_budget_bytes = 8 MiB; metadata counts 3x its size. Two
    runs with 1 MiB of metadata fit, a third is refused naming the budget
    (and leaves no directory); reopening a run does not grow the total; a
    save whose header carries 2 MiB more does not fit while the runs hold
    theirs, and fits once one is reopened with less."""
    def md(n):
        return [entry("general.description", string_value="x" * n)]

    with _daemon(tmp_path, "[server]\nmemory_budget_bytes = 8388608\n") as (d, stub):
        for run in ("big-0", "big-1"):
            stub.OpenRun(pb.OpenRunRequest(run_id=run, model_metadata=md(1 << 20)), timeout=30)
        with pytest.raises(grpc.RpcError) as e:
            stub.OpenRun(pb.OpenRunRequest(run_id="big-2", model_metadata=md(1 << 20)), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.memory_budget_bytes" in e.value.details() and "big-2" in e.value.details()
        assert not os.path.exists(os.path.join(d.root, "big-2"))
        for _ in range(5):  # reopening replaces what the run held
            stub.OpenRun(pb.OpenRunRequest(run_id="big-0", model_metadata=md(1 << 20)), timeout=30)
        h = header(run="big-0", step=1)
        h.tensors.add(name="adam.m", type=F32, ne=[4], group=pb.TENSOR_GROUP_TRAIN)
        h.train_metadata.append(entry("trainer.notes", string_value="y" * (3 << 19)))  # 1.5 MiB
        with pytest.raises(grpc.RpcError) as e:
            stub.Save(stream(h, b"\0" * 32), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the save of run 'big-0' step 1" in e.value.details(), e.value.details()
        assert "server.memory_budget_bytes" in e.value.details()
        stub.OpenRun(pb.OpenRunRequest(run_id="big-1"), timeout=30)  # gives back 3 MiB
        assert stub.Save(stream(h, b"\0" * 32), timeout=30).result == pb.SaveResponse.RESULT_COMMITTED


def test_idle_runs_give_their_settings_memory_back_and_a_save_reads_them_back(tmp_path):
    """server.unload_idle_runs_seconds = 1, budget 8 MiB. Two runs holding
    1 MiB of metadata each (3 MiB charged each) go idle and leave memory, so
    two more such runs fit; the first's next save reads its settings back from
    the run directory: the checkpoint carries the model metadata and the
    trainer provenance it was opened with."""
    import time

    import ckptd.gguf

    def md(n):
        return [entry("general.description", string_value="x" * n)]

    config = "[server]\nmemory_budget_bytes = 8388608\nunload_idle_runs_seconds = 1\n"
    with _daemon(tmp_path, config) as (d, stub):
        for run in ("big-0", "big-1"):
            stub.OpenRun(pb.OpenRunRequest(
                run_id=run, model_metadata=md(1 << 20),
                provenance=pb.Provenance(git_commit="idle-test")), timeout=30)
        assert save(stub, header(run="big-0", step=1)).result == pb.SaveResponse.RESULT_COMMITTED

        def logged(what):
            return re.findall(what, open(d.log).read())

        deadline = time.monotonic() + 30
        while len(set(logged(r"run settings unloaded run=(big-\d)"))) < 2:
            assert time.monotonic() < deadline, open(d.log).read()[-3000:]
            time.sleep(0.1)
        for run in ("big-2", "big-3"):  # 4 x 3 MiB would not fit
            stub.OpenRun(pb.OpenRunRequest(run_id=run, model_metadata=md(1 << 20)), timeout=30)
        assert save(stub, header(run="big-0", step=2)).result == pb.SaveResponse.RESULT_COMMITTED
        h = ckptd.gguf.read_header(os.path.join(d.root, "big-0", "weights", "step_2.gguf"))
        assert h.metadata["general.description"] == "x" * (1 << 20)
        assert h.metadata["ckpt.trainer.git_commit"] == "idle-test"
        assert logged(r"run settings reloaded run=big-0")


def test_a_watch_ends_by_itself_and_says_how_to_resume(tmp_path):
    with _daemon(tmp_path, "[server]\nwatch_max_seconds = 1\n") as (_, stub):
        stub.OpenRun(pb.OpenRunRequest(run_id="w"))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.WatchRun(pb.WatchRunRequest(run_id="w"), timeout=30))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "server.watch_max_seconds" in err.value.details()
        assert "since_step" in err.value.details()
