"""The trainer-side client: connect, open a run, save, wait, restore, close."""

from __future__ import annotations

import getpass
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import grpc
import numpy as np

from . import compat, gguf, state
from .reader import Checkpoint
from .shm import ArenaError, ArenaPool, SealedArena, hot_copy, shm_supported
from .v1 import ckptd_pb2 as pb
from .v1 import ckptd_pb2_grpc as pb_grpc
from .values import entries as metadata_entries

if TYPE_CHECKING:
    from .preemption import Preemption

# What the public API takes, named for readers and type checkers (torch has
# no type stubs here, so its objects are Any to a checker):
Model = Any  # a torch.nn.Module, or a mapping of names to tensors or numpy arrays
Optimizer = Any  # a torch.optim.Optimizer, or its state_dict()
Extra = Mapping[str, Any]  # numbers, strings, bools, None, lists, tuples, dicts, arrays
Metrics = Mapping[str, float]
StateObjects = Mapping[str, Any]  # objects with state_dict() and load_state_dict()

state_lib = state  # the module, where a method's `state=` parameter shadows it

log = logging.getLogger("ckptd")

DEFAULT_SOCKET = "unix:./ckpt-runs/ckptd.sock"
# Data message size: 1 MiB keeps the daemon's memory per stream small (it holds a
# few messages in flight); larger messages were not faster on 2 cores.
CHUNK = 1 << 20
SAVE_DATA_TAG = b"\x12"  # SaveRequest field 2 (`data`), length-delimited


def _data_message(chunk: memoryview) -> bytes:
    """A serialized SaveRequest holding only `chunk` as its data, made with
    one copy of the bytes (a protobuf message would take three: into bytes,
    into the message, and out of it)."""
    n = chunk.nbytes
    prefix = bytearray(SAVE_DATA_TAG)
    while True:
        b = n & 0x7F
        n >>= 7
        prefix.append(b | (0x80 if n else 0))
        if not n:
            break
    return b"".join((prefix, chunk))


class _RawSaveStub:
    """Save and CloseRun taking requests already serialized (bytes), so data
    messages are framed by _data_message rather than built as protobuf
    messages."""

    def __init__(self, channel: grpc.Channel):
        def raw(method: str, response: Any) -> Any:
            return channel.stream_unary(f"/ckptd.v1.Checkpointd/{method}",
                                        request_serializer=lambda b: b,
                                        response_deserializer=response.FromString)

        self.Save = raw("Save", pb.SaveResponse)
        self.CloseRun = raw("CloseRun", pb.CloseRunResponse)


class Error(Exception):
    """A refusal or failure from the daemon: `code` is the gRPC status code name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _error(e: grpc.RpcError) -> Error:
    """The Error for a failed call. A Unix socket this user may not open is
    said to be a permission problem (gRPC calls it UNAVAILABLE, as if the
    daemon were not running), and is not retried."""
    details = e.details() or ""
    if e.code() == grpc.StatusCode.UNAVAILABLE and "Permission denied" in details:
        return Error("PERMISSION_DENIED",
                     "permission denied on ckptd's socket: the daemon is there, but this user may not "
                     "connect. Join the socket's group (server.socket_group; `ls -l` the socket shows "
                     f"it), then log in again ({details})")
    return Error(e.code().name, details)


def _rpc(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise _error(e) from None


def _reconnectable(e: Error) -> bool:
    """Whether a failure means the daemon restarted or is unreachable, so that
    reopening the run and sending the call again can help."""
    if e.code in ("UNAVAILABLE", "CANCELLED"):  # the client cancels nothing itself
        return True
    if e.code == "NOT_FOUND":
        return "is not known to this daemon" in e.message
    if e.code == "FAILED_PRECONDITION":
        return "has not been opened since the daemon started" in e.message
    return False


def _lost_registration(e: Exception) -> bool:
    """The daemon no longer knows one of our arenas (it restarted)."""
    return isinstance(e, ArenaError) or (
        isinstance(e, Error) and e.code == "NOT_FOUND" and "is not registered" in e.message)


@dataclass
class SaveResult:
    """What a save did. `state` is "committed", "skipped", "pending" or
    "failed". "pending" is a shared-memory save still being written (see
    Run.wait), or, with `staged`, a multi-rank run's part that is durable on
    this node while its step waits for the other ranks' parts: the step is
    not a checkpoint until every rank's part is durable (then it commits
    everywhere, or aborts everywhere: GetRun's pending_steps, listings)."""

    step: int
    state: str
    reason: str = ""
    file: str = ""
    save_id: int = 0
    stall_s: float = 0.0
    transport: str = ""
    staged: bool = False
    # A pending shm save as sent (header, arena, offsets, final), to send it
    # again to a daemon that restarted before committing it.
    _sent: Any = field(default=None, repr=False, compare=False)


@dataclass
class RestoreInfo:
    step: int
    extra: dict
    metrics: dict[str, float]
    source: str  # "disk" or "memory"
    file: str
    seconds: float = 0.0
    bytes: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    memory_fallbacks: int = 0  # hot restore: tensors read from disk because memory had changed
    # What restore(cast=..., reshape=...) changed, one line per tensor ("" none).
    changes: list[str] = field(default_factory=list)
    # Newer steps restore() refused as damaged before this one, each with why
    # (latest only: a step asked for is never swapped for another).
    skipped: list[str] = field(default_factory=list)
    # The tier that served it: "memory" (the daemon's memory tier), "disk",
    # "peer" (fetched back from a peer daemon's memory first) or "store"
    # (fetched back from the object store first).
    tier: str = "disk"
    # Steps between the highest step the daemon saw the trainer reach
    # (ShouldSave or a save) and this one: the work a resume repeats. None
    # when the daemon does not know (it restarted since).
    steps_lost: int | None = None
    # Why no peer or store gave a newer step (their answers), "" when none
    # was asked or none is configured.
    elsewhere: str = ""


def connect(target: str | None = None, reconnect_timeout: float = 60.0, *, tls: bool = False,
            tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
            token: str | None = None) -> "Client":
    """Connects to the daemon: `target` ("unix:/path", "host:port" or a socket
    path), else $CKPTD_SOCKET, else the dev socket of `make run`.
    `reconnect_timeout`: how long a run's calls keep reconnecting (and
    reopening the run) while the daemon restarts or is unreachable before
    they raise Error("UNAVAILABLE"); 0 = raise at once.
    TLS (a daemon on host:port with server.tls_cert) is on when `tls` or any
    tls_* is given: `tls_ca` the PEM file of the CA that signed the daemon's
    certificate (None = the system's roots), `tls_cert`/`tls_key` this
    client's certificate and key when the daemon requires one. `token`: a
    bearer token for a daemon with server.tokens_file (sent only over TLS)."""
    return Client(target or os.environ.get("CKPTD_SOCKET") or DEFAULT_SOCKET, reconnect_timeout,
                  tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)


def _read_pem(what: str, path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Error("INVALID_ARGUMENT", f"{what}: cannot read {path}: {e.strerror}") from None


class Client:
    def __init__(self, target: str, reconnect_timeout: float = 60.0, *, tls: bool = False,
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, token: str | None = None):
        if "://" not in target and not target.startswith("unix:") and (
            target.startswith("/") or target.startswith(".")
        ):
            target = "unix:" + target
        self.target = target
        self.local = target.startswith("unix:")
        self.reconnect_timeout = reconnect_timeout
        # A local sidecar: after a restart, reconnect within ~250 ms rather
        # than gRPC's one-second-and-growing backoff.
        opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 250)]
        if not (tls or tls_ca or tls_cert):
            if token:
                raise Error("INVALID_ARGUMENT",
                            "a bearer token is sent only over TLS: pass tls=True (and tls_ca) too")
            self.channel = grpc.insecure_channel(target, options=opts)
        else:
            if bool(tls_cert) != bool(tls_key):
                raise Error("INVALID_ARGUMENT", "tls_cert and tls_key go together")
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_pem("tls_ca", tls_ca),
                private_key=_read_pem("tls_key", tls_key),
                certificate_chain=_read_pem("tls_cert", tls_cert))
            if token:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.access_token_call_credentials(token))
            self.channel = grpc.secure_channel(target, creds, options=opts)
        self.stub = pb_grpc.CheckpointdStub(self.channel)
        self.raw_save_stub = _RawSaveStub(self.channel)

    def open_run(self, run_id: str, metadata: dict | None = None,
                 schedule: Mapping[str, Any] | pb.Schedule | None = None,
                 retention: Mapping[str, Any] | pb.RetentionPolicy | None = None,
                 base_model: str | None = None, run_dir: str = "", seed: int | None = None,
                 transport: str = "auto", name_map: Callable[[str], str] | None = None,
                 threads: int = 4, exports: list | None = None, model: Model = None,
                 tier: Mapping[str, Any] | pb.TierOptions | None = None,
                 multi_rank: Mapping[str, Any] | pb.MultiRank | None = None, optimizer: Optimizer = None,
                 seal_frozen: bool = False) -> "Run":
        """Opens (or resumes) a run. `schedule`/`retention`: dicts with the
        proto's field names ({"every_steps": 500}) or the messages; `metadata`:
        GGUF-typed model metadata (see ckptd.values); `transport`: "auto"
        (shared memory when the daemon is local), "shm" or "stream".
        `exports`: inference files written with every checkpoint, each a
        profile name ("hf-llama-q8_0"), a path to a profile .toml, or a dict
        {"name": ..., "profile": ...}; with `model` (a module or state_dict)
        the daemon checks the exports against its tensors now, not at the
        first save. `tier`: how this run uses the daemon's object-storage
        tier, a dict ({"local_only": True}, {"prefix": "team-a/ckpt",
        "remote_retention": "same"}) or a TierOptions message. `multi_rank`:
        this process is one rank of a run trained by several, a dict
        ({"world_size": 3, "rank": 1}, optionally "part_timeout_seconds",
        "total_tensors", "slices": [{"name", "full_ne", "dim", "offset"}])
        or a MultiRank message: each save writes this rank's part, and the
        step shows in listings and restores once every rank's part is
        durable (the daemons agree through the object-storage tier).
        With `model` (and `optimizer`) given, a shared-memory run sets up
        its arena now (Run.reserve): the first save costs what later ones do.
        `seal_frozen` (shared memory, a torch module): at the first save,
        the module's frozen parameters (requires_grad=False, on the CPU) move
        once into memory sealed against writes that their tensors then map
        copy-on-write; later saves neither copy nor hash them. A parameter
        written in place afterwards is seen at the next save and saved from
        its new bytes (staged like any other tensor from then on)."""
        req = pb.OpenRunRequest(run_id=run_id, run_dir=run_dir, base_model_uuid=base_model or "")
        for e in exports or []:
            req.exports.append(_export_request(e))
        if model is not None and exports:
            sd = model.state_dict() if hasattr(model, "state_dict") and not isinstance(model, dict) else model
            for name, t in sd.items():
                e = state.make_entry(name, t, train=False, name_map=name_map)
                req.model_tensors.add(name=e.name, type=e.ggml_type, ne=e.ne)
        req.model_metadata.extend(metadata_entries(metadata, pb))
        req.provenance.CopyFrom(_provenance(seed))
        if schedule is not None:
            if not isinstance(schedule, pb.Schedule):
                # final_on_close defaults to true, as in the daemon's config.
                schedule = pb.Schedule(**{"final_on_close": True, **schedule})  # type: ignore[arg-type]
            req.schedule.CopyFrom(schedule)
        if tier is not None:
            req.tier.CopyFrom(tier if isinstance(tier, pb.TierOptions) else pb.TierOptions(**tier))
        if multi_rank is not None:
            if not isinstance(multi_rank, pb.MultiRank):
                multi_rank = dict(multi_rank)
                slices = [pb.ShardSlice(**sl) for sl in multi_rank.pop("slices", [])]
                multi_rank = pb.MultiRank(slices=slices, **multi_rank)
            req.multi_rank.CopyFrom(multi_rank)
        if retention is not None:
            req.retention.CopyFrom(
                retention if isinstance(retention, pb.RetentionPolicy) else pb.RetentionPolicy(**retention)
            )
        resp = self._open(req)
        run = Run(self, resp, transport, name_map, threads)
        run._seal_frozen = seal_frozen
        run._open_request = req
        if model is not None:
            run.reserve(model=model, optimizer=optimizer)
        return run

    def _open(self, req):
        """OpenRun. Where the daemon's Unix socket exists, a daemon is starting,
        restarting or too busy to answer yet: it is waited for, up to
        reconnect_timeout, as a run's calls wait. No socket (no daemon) or a
        TCP target fails at once."""
        deadline = time.monotonic() + self.reconnect_timeout
        try:
            return _rpc(self.stub.OpenRun, req)
        except Error as e:
            if e.code != "UNAVAILABLE" or not (self.local and os.path.exists(self.target[len("unix:"):])):
                raise
            last = e
        while time.monotonic() < deadline:
            try:
                # Waits for the channel to connect (gRPC retries it) rather than failing fast.
                return self.stub.OpenRun(req, wait_for_ready=True, timeout=max(0.05, deadline - time.monotonic()))
            except grpc.RpcError as e:
                last = _error(e)
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED and not _reconnectable(last):
                    raise last from None
            time.sleep(0.02)
        raise Error("UNAVAILABLE", f"the daemon at {self.target} did not answer within {self.reconnect_timeout:g} s "
                                   f"(reconnect_timeout); last error: {last}")

    def lineage(self, uuid: str = "", run_id: str = "") -> pb.Lineage:
        """The ancestors and descendants of a file (by general.uuid) or a run;
        neither: everything the daemon knows. A ckptd.v1.Lineage message."""
        return _rpc(self.stub.GetLineage, pb.LineageRequest(uuid=uuid, run_id=run_id))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _export_request(e) -> "pb.ExportRequest":
    """A profile name, a .toml path (parsed here, sent as the definition) or a dict."""
    if isinstance(e, dict):
        e = dict(e)
        profile = e.pop("profile", "")
        req = pb.ExportRequest(name=e.pop("name", ""))
        if e:
            raise ValueError(f"export {e}: only 'name' and 'profile' are known")
        if str(profile).endswith(".toml"):
            req.definition.CopyFrom(load_profile(profile))
        else:
            req.profile = profile
        return req
    if str(e).endswith(".toml"):
        return pb.ExportRequest(definition=load_profile(e))
    return pb.ExportRequest(profile=str(e))


def load_profile(path) -> "pb.ExportProfile":
    """Reads an export profile .toml into the ExportProfile message."""
    import tomllib

    from google.protobuf import json_format

    with open(path, "rb") as f:
        data = tomllib.load(f)
    for m in data.get("metadata", []):
        if "value" in m and not isinstance(m["value"], str):
            v = m["value"]
            m["value"] = ("true" if v else "false") if isinstance(v, bool) else repr(v)
    return json_format.ParseDict(data, pb.ExportProfile())


def _git_commit() -> tuple[str, str]:
    """The commit of the git repository that holds the trainer's entry script
    (__main__.__file__), not of the working directory (which may be anyone's
    checkout), and what it was taken from: (commit, source) where source is
    the script's path, or why there is no commit."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if not script:
        return "", "no entry script (interactive, python -c or an embedded interpreter)"
    script = os.path.abspath(script)
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(script), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as e:
        return "", f"git could not be run for {script}: {e}"
    if out.returncode != 0:
        return "", f"{script} is in no git repository"
    return out.stdout.strip(), script


def _provenance(seed: int | None) -> pb.Provenance:
    commit, source = _git_commit()
    p = pb.Provenance(
        git_commit=commit,
        command_line=" ".join([sys.executable] + sys.argv),
        host=socket.gethostname(),
        client_pid=os.getpid(),
    )
    if seed is not None:
        p.seed = seed
    p.framework_versions["python"] = platform.python_version()
    p.framework_versions["numpy"] = np.__version__
    if state.torch is not None:
        p.framework_versions["torch"] = state.torch.__version__
    # Which repository git_commit is of, or why it is empty.
    p.extra["git_commit_source"] = source
    try:
        p.extra["user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    return p


def _flat(sd, prefix: str = "", out=None) -> dict:
    """A model's tensors by name; nested dicts ({"model": sd, "ema": sd2})
    joined with "." ("model.fc.weight"). A name made twice is refused."""
    out = {} if out is None else out
    for k, v in (sd or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            _flat(v, name + ".", out)
            continue
        if name in out:
            raise ValueError(f"model: the nested dicts make the name '{name}' twice")
        out[name] = v
    return out


def _state_dict(model) -> dict:
    return model.state_dict() if hasattr(model, "state_dict") and not isinstance(model, dict) else (model or {})


class _Installed:
    """Run.preemptible()'s context manager."""

    def __init__(self, preemption: Preemption):
        self.preemption = preemption

    def __enter__(self) -> "Run":
        self.preemption.install()
        return self.preemption.run

    def __exit__(self, *exc: object) -> None:
        self.preemption.uninstall()


class Run:
    """One training run. Not thread-safe: one trainer thread uses it."""

    def __init__(self, client: Client, opened: pb.OpenRunResponse, transport: str,
                 name_map: Callable[[str], str] | None, threads: int):
        self.client = client
        self.opened = opened
        self.id = opened.run.run_id
        self._elsewhere = ""  # the daemon's answer on newer steps elsewhere, at the last restore
        self._fetched: dict[int, str] = {}  # steps this client had fetched back: their tier
        self.name_map = name_map
        self.threads = threads
        self._auto = transport == "auto"
        self._pool: ArenaPool | None = None
        if self._use_shm(transport):
            try:
                self._pool = ArenaPool(opened.arena_socket, opened.arena_token)
            except PermissionError as e:  # the arena socket's permissions (server.socket_mode/group)
                if not self._auto:
                    raise
                self._shm_refused(e)
        self.transport = "shm" if self._pool else "stream"
        log.info("ckptd: run %s saves over %s (%s)", self.id, self.transport, client.target)
        self._pending: list[SaveResult] = []
        # Failed saves found while waiting for an arena, reported by the next wait().
        self._failed_unreported: list[SaveResult] = []
        self.closed = False
        self._open_request: pb.OpenRunRequest | None = None  # set by Client.open_run: how to reopen it
        self._preemption: Preemption | None = None  # when installed
        self._checked = False  # the first maybe_save checked what it was given
        self.reconnects = 0
        self._resent_at = 0  # reconnects when lost saves were last sent again
        self._seal_frozen = False  # open_run(seal_frozen=...)
        self._sealed: SealedArena | None = None  # the frozen parameters, once sealed
        self._sealed_names: set[str] = set()

    # -- surviving daemon restarts -----------------------------------------

    def _reopen(self, cause: Error, deadline: float):
        """Reconnects and reopens the run (and registers the arenas again)
        after `cause`, until `deadline` (time.monotonic)."""
        last = cause
        while True:
            if time.monotonic() >= deadline:
                raise Error("UNAVAILABLE", f"run {self.id!r}: the daemon at {self.client.target} has not come back "
                                           f"within {self.client.reconnect_timeout:g} s (reconnect_timeout); "
                                           f"last error: {last}")
            try:
                if self._open_request is None:  # opened elsewhere: the daemon restores its settings
                    grpc.channel_ready_future(self.client.channel).result(timeout=min(1.0, deadline - time.monotonic()))
                else:
                    self.opened = self.client.stub.OpenRun(self._open_request, wait_for_ready=True,
                                                           timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                if self._pool is not None:
                    self._pool.resync(self.opened.arena_socket, self.opened.arena_token)
                self.reconnects += 1
                log.info("ckptd: run %s: reconnected to the daemon (%s)", self.id, cause)
                return
            except grpc.FutureTimeoutError:
                continue
            except grpc.RpcError as e:
                last = _error(e)
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED and not _reconnectable(last):
                    raise last from None
            except (OSError, ArenaError) as e:  # the arena socket is not back yet
                last = Error("UNAVAILABLE", str(e))
            time.sleep(0.02)

    def _call(self, name: str, make_request, on_retry_error=None, stub: Any = None):
        """Calls stub.`name` (the client's stub by default) with
        make_request() (a new request each attempt, so streams can be sent
        again), reopening the run while the failure is a restarted or
        unreachable daemon. `on_retry_error(e)` may turn a failure of a
        resent call into an answer."""
        deadline = None
        attempt = 0
        while True:
            try:
                return _rpc(getattr(stub or self.client.stub, name), make_request())
            except Error as e:
                if attempt > 0 and on_retry_error is not None:
                    answer = on_retry_error(e)
                    if answer is not None:
                        return answer
                if not _reconnectable(e) or self.client.reconnect_timeout <= 0:
                    raise
                if deadline is None:
                    deadline = time.monotonic() + self.client.reconnect_timeout
                self._reopen(e, deadline)
                attempt += 1

    def _shm_refused(self, why):
        """The daemon will not take this process's arenas (its uid is not in
        shm.allowed_uids, or it may not open the arena socket): with
        transport="auto", save over the stream instead, as the C++
        Checkpointer does, and say so once."""
        log.warning("ckptd: run %s: the daemon refuses this process shared memory (%s); saving over "
                    "the stream instead (add this uid to [shm] allowed_uids, or pass "
                    "transport=\"stream\" to silence this)", self.id, why)
        if self._pool is not None:
            self._pool.close()
        self._pool = None
        self.transport = "stream"

    def _use_shm(self, transport: str) -> bool:
        if transport not in ("auto", "shm", "stream"):
            raise ValueError(f"transport must be 'auto', 'shm' or 'stream', not {transport!r}")
        if transport == "stream":
            return False
        ok = self.client.local and bool(self.opened.arena_socket) and shm_supported()
        if transport == "shm" and not ok:
            raise Error("FAILED_PRECONDITION",
                        "shared-memory saves need a local daemon with [shm] enabled and Linux memfds")
        return ok

    @property
    def resumed(self) -> bool:
        return self.opened.resumed

    def should_save(self, step: int) -> bool:
        return self._call("ShouldSave", lambda: pb.ShouldSaveRequest(run_id=self.id, step=step)).due

    # -- saving -------------------------------------------------------------

    def reserve(self, model: Model = None, optimizer: Optimizer = None, extra: Extra | None = None,
                state: StateObjects | None = None) -> int:
        """Sets up the shared-memory arena a save of this state needs, now:
        created, registered with the daemon and its pages populated, so the
        first save stalls no longer than the next ones (without it the first
        pays for every page). Also checks, as the first maybe_save does,
        that everything given saves and restores faithfully. Returns the
        bytes reserved (0 over the stream, which needs none)."""
        entries, _ = self._collect(model, optimizer, extra, state)
        self._checked = True
        if self._pool is None:
            return 0
        _, need = ArenaPool.layout(entries)
        try:
            return self._pool.reserve(need)
        except ArenaError as e:
            if e.code != "PERMISSION_DENIED" or not self._auto:
                raise
            self._shm_refused(e)
            return 0

    def preemptible(self, grace: float = 30.0, signals: Iterable[int] = (signal.SIGTERM,),
                    exit_code: int = 143) -> _Installed:
        """A context manager: inside it, SIGTERM makes the next maybe_save or
        save (the step boundary) save its step, wait for the commit and exit
        with `exit_code`; without a boundary within `grace` seconds the
        process exits unsaved, saying so (ckptd/preemption.py)."""
        from .preemption import Preemption

        return _Installed(Preemption(self, grace, signals, exit_code))

    def _preempted(self, step, model, optimizer, extra, metrics, state_objs):
        """At a step boundary after SIGTERM: the preemption save, then exit."""
        assert self._preemption is not None
        self._preemption.save_and_exit(
            step, lambda: self._save(step, model, optimizer, extra, metrics, True, True, False, state_objs))

    def maybe_save(self, step: int, model: Model = None, optimizer: Optimizer = None, extra: Extra | None = None,
                   metrics: Metrics | None = None, state: StateObjects | None = None) -> SaveResult:
        """Saves if the run's schedule says `step` is due (one cheap RPC otherwise).
        The first call checks that everything given can be saved and
        restored faithfully, due or not (the error names the key path).
        After a preemption signal (preemptible(), on_preemption()) it saves
        `step` whatever the schedule and exits."""
        if self._preemption is not None and self._preemption.pending:
            self._preempted(step, model, optimizer, extra, metrics, state)
        if not self._checked:
            self._collect(model, optimizer, extra, state)  # refuses now, not an interval later
            self._checked = True
        due = self._call("ShouldSave", lambda: pb.ShouldSaveRequest(run_id=self.id, step=step))
        if not due.due:
            return SaveResult(step, "skipped", due.reason, transport=self.transport)
        return self.save(step, model, optimizer, extra, metrics, force=False, state=state)

    def save(self, step: int, model: Model = None, optimizer: Optimizer = None, extra: Extra | None = None,
             metrics: Metrics | None = None, force: bool = True, overwrite: bool = False, _final: bool = False,
             state: StateObjects | None = None) -> SaveResult:
        """Saves now. Over shared memory it returns once the tensors are
        copied into an arena (state "pending"; the daemon writes in the
        background, see wait()); over the stream, once committed.
        `state`: named objects saved by their state_dict() (learning-rate
        schedulers, GradScaler), restored with restore(state=...)."""
        if self._preemption is not None and self._preemption.pending and not _final:
            self._preempted(step, model, optimizer, extra, metrics, state)
        return self._save(step, model, optimizer, extra, metrics, force, overwrite, _final, state)

    def _seal(self, model):
        """The first save with seal_frozen: the module's frozen CPU
        parameters into a SealedArena, each parameter's data then a
        copy-on-write view of it (same values, dtype and shape)."""
        torch = state.torch
        if self._sealed is not None or self._pool is None or torch is None:
            return
        if not isinstance(model, torch.nn.Module):
            return
        frozen = [(n, p) for n, p in model.named_parameters()
                  if not p.requires_grad and p.device.type == "cpu" and p.is_contiguous() and p.numel() > 0
                  and p.dtype != torch.bool]
        if not frozen:
            return
        tensors = [p.detach() for _, p in frozen]
        arrays = [t.reshape(-1).view(torch.uint8).numpy() for t in tensors]
        sealed = self._pool.seal(arrays)
        for (_, p), view in zip(frozen, sealed.tensor_views(tensors)):
            p.data = view
        self._sealed = sealed
        self._sealed_names = {n for n, _ in frozen}
        log.info("ckptd: run %s: %d frozen parameters (%d bytes) sealed in shared memory", self.id,
                 len(frozen), sum(a.nbytes for a in arrays))

    def _save(self, step: int, model=None, optimizer=None, extra=None, metrics=None, force: bool = True,
              overwrite: bool = False, _final: bool = False, state_objs=None) -> SaveResult:
        if self._seal_frozen:
            self._seal(model)
        header, entries = self._header(step, model, optimizer, extra, metrics, force, overwrite, state_objs)
        if self._pool is not None:
            try:
                return self._save_shared(header, entries, _final)
            except ArenaError as e:
                if e.code != "PERMISSION_DENIED" or not self._auto or self._pool.arenas:
                    raise
                self._shm_refused(e)
        return self._save_stream(header, entries)

    def _header(self, step, model, optimizer, extra, metrics, force=False, overwrite=False, state_objs=None):
        """The SaveHeader of a save and the tensors whose bytes follow it."""
        entries, train_md = self._collect(model, optimizer, extra, state_objs)
        header = pb.SaveHeader(run_id=self.id, step=step, force=force, overwrite=overwrite)
        for k, v in state.finite_metrics(metrics).items():
            header.metrics[k] = v
        for e in entries:
            header.tensors.add(name=e.name, type=e.ggml_type, ne=e.ne,
                               group=pb.TENSOR_GROUP_TRAIN if e.train else pb.TENSOR_GROUP_MODEL)
        header.train_metadata.extend(metadata_entries(train_md, pb))
        return header, entries

    def _collect(self, model, optimizer, extra, state_objs=None):
        out: list[state.Entry] = []
        md: dict[str, Any] = {}
        written = self._sealed.written_pages() if self._sealed is not None else None
        for name, t in _flat(_state_dict(model)).items():
            e = state.make_entry(name, t, train=False, name_map=self.name_map)
            if self._sealed is not None and name in self._sealed_names:
                off = self._sealed.region(e.array.ctypes.data, e.nbytes, written)
                e.sealed = None if off is None else (self._sealed, off)
            out.append(e)
        if optimizer is not None:
            state.optimizer_entries(optimizer, model, out, md)
        state.extra_entries(extra or {}, out, md)
        state.state_entries(state_objs or {}, out, md)
        state.rng_entries(out, md)
        names = [e.name for e in out]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tensor names {sorted(dup)} occur twice; rename (name_map=) to save both")
        from .values import Typed

        md["training.type"] = Typed("string", "ckptd-python")
        hints = [f"{e.name}:{e.dtype_hint}" for e in out if e.dtype_hint]
        if hints:
            md[gguf.KEY_DTYPES] = Typed("array", hints, element="string")
        zero_d = [f"{e.name}:()" for e in out if e.zero_d]
        if zero_d:
            md[gguf.KEY_SHAPES] = Typed("array", zero_d, element="string")
        return out, md

    def _save_stream(self, header, entries, closing: bool = False):
        raw = self.client.raw_save_stub

        def requests():
            yield pb.SaveRequest(header=header).SerializeToString()
            for e in entries:
                mv = memoryview(e.array).cast("B")
                for a in range(0, mv.nbytes, CHUNK):
                    yield _data_message(mv[a : a + CHUNK])

        if closing:
            return self._call("CloseRun", requests, stub=raw)

        def already_committed(e: Error):
            # Sent again after a lost answer: the daemon had committed it.
            if e.code != "ALREADY_EXISTS" or header.overwrite:
                return None
            try:
                d = _rpc(self.client.stub.GetCheckpoint, pb.GetCheckpointRequest(run_id=self.id, step=header.step))
            except Error:
                return None
            stored = {t.tensor.name: (t.tensor.type, list(t.tensor.ne)) for t in [*d.tensors, *d.train_tensors]}
            sent = {t.name: (t.type, list(t.ne)) for t in header.tensors}
            if stored != sent:
                return None
            if d.info.pending:
                return pb.SaveResponse(result=pb.SaveResponse.RESULT_STAGED, checkpoint=d.info,
                                       reason="staged before the connection was lost (found when sent again)")
            return pb.SaveResponse(result=pb.SaveResponse.RESULT_COMMITTED, checkpoint=d.info,
                                   reason="committed before the connection was lost (found when sent again)")

        t0 = time.perf_counter()
        resp = self._call("Save", requests, already_committed, stub=raw)
        stall = time.perf_counter() - t0
        if resp.result == pb.SaveResponse.RESULT_SKIPPED:
            return SaveResult(header.step, "skipped", resp.reason, stall_s=stall, transport="stream")
        if resp.result == pb.SaveResponse.RESULT_STAGED:
            return SaveResult(header.step, "pending", _staged_reason(header.step, resp.reason),
                              resp.checkpoint.file, stall_s=stall, transport="stream", staged=True)
        return SaveResult(header.step, "committed", resp.reason, resp.checkpoint.file, stall_s=stall,
                          transport="stream")

    def _save_shared(self, header, entries, final: bool):
        assert self._pool is not None
        t0 = time.perf_counter()
        try:
            arena, offsets = self._pool.stage(entries, self._wait_one, self.threads, self._settled)
        except (OSError, ArenaError) as e:  # a new arena met a restarted daemon's closed socket
            if self.client.reconnect_timeout <= 0 or getattr(e, "code", "") == "PERMISSION_DENIED":
                raise
            self._reopen(Error("UNAVAILABLE", f"arena socket: {e}"), time.monotonic() + self.client.reconnect_timeout)
            arena, offsets = self._pool.stage(entries, self._wait_one, self.threads, self._settled)
        stall = time.perf_counter() - t0
        try:
            if self._resent_at != self.reconnects:  # reconnected since: lost saves go first
                self._resend_lost()
            resp = self._send_shared(header, arena, offsets, final, stall, fresh=True)
        except Error:
            arena.busy = None
            raise
        if resp.result == pb.SaveSharedResponse.RESULT_SKIPPED:
            arena.busy = None
            return SaveResult(header.step, "skipped", resp.reason, stall_s=stall, transport="shm")
        r = SaveResult(header.step, "pending", resp.reason, save_id=resp.save_id, stall_s=stall, transport="shm",
                       _sent=(header, arena, offsets, final))
        arena.busy = r
        self._pending.append(r)
        return r

    def _send_shared(self, header, arena, offsets, final: bool, stall: float = 0.0, fresh: bool = False):
        """SaveShared for a staged arena, registered again and sent again
        while the daemon restarts; a `fresh` save waits for the lost pending
        ones to be sent again first (a run's steps go in increasing order)."""
        deadline = None
        while True:
            req = pb.SaveSharedRequest(header=header, trainer_stall_s=stall, final_snapshot=final)
            for off in offsets:
                if isinstance(off, tuple):  # in a SealedArena (its id changes when registered again)
                    req.locations.add(arena_id=off[0].id, offset=off[1])
                else:
                    req.locations.add(arena_id=arena.id, offset=off)
            try:
                return _rpc(self.client.stub.SaveShared, req)
            except Error as e:
                if not (_reconnectable(e) or _lost_registration(e)) or self.client.reconnect_timeout <= 0:
                    raise
                if deadline is None:
                    deadline = time.monotonic() + self.client.reconnect_timeout
                self._reopen(e, deadline)
                if fresh:
                    self._resend_lost()

    def _resend_lost(self):
        """Sends again, in step order, every pending shm save the (restarted)
        daemon does not know; its bytes are still in its arena."""
        self._resent_at = self.reconnects
        for r in sorted(self._pending, key=lambda r: r.step):
            try:
                self._call("WaitSaved", lambda: pb.WaitSavedRequest(run_id=self.id, save_id=r.save_id,
                                                                    step=r.step, timeout_seconds=0))
                continue  # known: queued, or committed before the restart
            except Error as e:
                if e.code != "NOT_FOUND":
                    raise
            header, arena, offsets, final = r._sent
            header.force = True  # accepted once: the schedule does not apply again
            resp = self._send_shared(header, arena, offsets, final)
            if resp.result == pb.SaveSharedResponse.RESULT_SKIPPED:
                r.state, r.reason = "skipped", resp.reason
                self._pending.remove(r)
                arena.busy = None
                continue
            log.info("ckptd: run %s: step %d was lost when the daemon restarted; sent again from its arena",
                     self.id, r.step)
            r.save_id = resp.save_id

    def _settled(self, r: SaveResult) -> bool:
        """Whether the save using an arena is done (asked without waiting):
        then its arena can be reused instead of another one created."""
        try:
            resp = self._call("WaitSaved", lambda: pb.WaitSavedRequest(
                run_id=self.id, save_id=r.save_id, step=r.step, timeout_seconds=0))
        except Error as e:
            if e.code == "NOT_FOUND":
                return False  # lost in a daemon restart: the waiting path sends it again
            raise
        return self._record(r, resp)

    def _record(self, r: SaveResult, resp) -> bool:
        """Records a finished save's outcome from its WaitSaved answer and
        frees its arena; False while it is still pending."""
        if resp.state == pb.WaitSavedResponse.STATE_COMMITTED:
            r.state, r.file = "committed", resp.checkpoint.file
        elif resp.state == pb.WaitSavedResponse.STATE_STAGED:
            r.state, r.file, r.staged = "pending", resp.checkpoint.file, True
            r.reason = _staged_reason(r.step, r.reason)
        elif resp.state == pb.WaitSavedResponse.STATE_FAILED:
            r.state, r.reason = "failed", resp.error
        else:
            return False
        self._release(r)
        return True

    def _release(self, r: SaveResult):
        """A save that is done: no longer pending (a failure kept for the
        next wait()), its arena free again."""
        if r in self._pending:
            self._pending.remove(r)
            if r.state == "failed":
                self._failed_unreported.append(r)
        for a in self._pool.arenas if self._pool else []:
            if a.busy is r:
                a.busy = None

    def _wait_one(self, r: SaveResult, timeout: float = 600.0):
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            asked = time.monotonic()
            try:
                resp = self._call("WaitSaved", lambda: pb.WaitSavedRequest(
                    run_id=self.id, save_id=r.save_id, step=r.step, timeout_seconds=min(left, 600)))
            except Error as e:
                if e.code != "NOT_FOUND" or r._sent is None:
                    raise
                self._resend_lost()
                if r.state == "skipped":
                    self._release(r)
                    return r
                continue
            if self._record(r, resp):
                return r
            if left <= 0:
                raise Error("DEADLINE_EXCEEDED", f"save {r.save_id} (step {r.step}) still pending after {timeout}s")
            if time.monotonic() - asked < min(left, 0.05):
                time.sleep(0.05)  # answered without waiting: the daemon's waiters are all busy

    def wait(self, timeout: float = 600.0) -> list[SaveResult]:
        """Waits until every pending save is committed (a multi-rank run's
        part: staged, durable on this node, see SaveResult) or failed;
        raises Error for a failed one (after waiting for all)."""
        done = [self._wait_one(r, timeout) for r in list(self._pending)]
        # Failures found meanwhile (while a save waited for an arena) too.
        failed, self._failed_unreported = self._failed_unreported, []
        failed.sort(key=lambda r: r.step)
        if failed:
            raise Error("ABORTED", "; ".join(f"step {r.step}: {r.reason}" for r in failed))
        return done

    def close(self, final_state: dict | None = None, step: int | None = None,
              **kwargs: Any) -> SaveResult | None:
        """Writes the final snapshot (when `final_state` = dict(step=..., model=...,
        optimizer=..., extra=..., metrics=...) or keyword arguments are given),
        waits for every save and marks the run finished. Returns the final
        snapshot's SaveResult, None without one."""
        if self.closed:
            return None
        if self._preemption is not None and self._preemption.pending:
            self._preemption._cancel()  # the final snapshot is the step boundary
        if final_state is not None and not isinstance(final_state, dict):
            raise TypeError("close() takes the final state as keywords, as save() does: "
                            "run.close(step=..., model=..., optimizer=..., extra=..., metrics=...) "
                            "(or the same as one dict)")
        known = {"step", "model", "optimizer", "extra", "metrics", "state"}
        if final_state and not set(final_state) <= known:
            raise TypeError(f"close() got a dict with {sorted(set(final_state) - known)[:3]}...: "
                            "pass the final state as close(step=..., model=model.state_dict(), "
                            "optimizer=..., ...), not the state dict itself")
        fs = dict(final_state or {}, **kwargs)
        if step is not None:
            fs["step"] = step
        if fs and "step" not in fs:
            raise TypeError("close() with a final state needs its step: run.close(step=..., model=...)")
        result = None
        if fs and self._pool is not None:
            r = self.save(fs.pop("step"), force=True, overwrite=True, _final=True, **fs)
            self.wait()
            result = r
            if r.state == "skipped":
                log.info("ckptd: run %s: final snapshot skipped: %s", self.id, r.reason)
            self._call("CloseRun", lambda: iter([pb.SaveRequest(header=pb.SaveHeader(run_id=self.id))]))
        elif fs:
            self.wait()
            header, entries = self._header(fs["step"], fs.get("model"), fs.get("optimizer"), fs.get("extra"),
                                           fs.get("metrics"), state_objs=fs.get("state"))
            resp = self._save_stream(header, entries, closing=True)
            staged = resp.final_save.result == pb.SaveResponse.RESULT_STAGED
            result = SaveResult(fs["step"], "pending" if staged else "committed",
                                _staged_reason(fs["step"], "") if staged else "",
                                resp.final_save.checkpoint.file, transport="stream", staged=staged)
        else:
            self.wait()
            self._call("CloseRun", lambda: iter([pb.SaveRequest(header=pb.SaveHeader(run_id=self.id))]))
        self.closed = True
        if self._pool is not None:
            self._pool.close()
        return result

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # an exception: keep what is queued, do not mark the run finished
            try:
                self.wait()
            finally:
                if self._pool is not None:
                    self._pool.close()

    # -- restoring ----------------------------------------------------------

    def latest(self) -> tuple[int, str] | None:
        info = self._call("GetRun", lambda: pb.GetRunRequest(run_id=self.id))
        return (info.last_step, info.latest_file) if info.HasField("last_step") else None

    def _fetch_remote(self, step: int | None, newer_than: int | None = None):
        """Asks the daemon to bring the step (None: the newest a peer or the
        store holds, above `newer_than`) back from its peers' memory or its
        object store into the run directory; None when it has neither
        (FAILED_PRECONDITION) or none has such a step, with the daemon's
        account of what each holds kept in self._elsewhere."""
        req = pb.FetchRemoteRequest(run_id=self.id)
        if step is not None:
            req.step = step
        if newer_than is not None:
            req.newer_than = newer_than
        try:
            return _rpc(self.client.stub.FetchRemote, req)
        except Error as e:
            if e.code in ("FAILED_PRECONDITION", "NOT_FOUND", "UNIMPLEMENTED"):
                self._elsewhere = e.message if e.code == "NOT_FOUND" else ""
                return None
            raise

    def open_checkpoint(self, step: int | None = None, verify: bool = True, hot: bool = True,
                        remote: bool = True) -> Checkpoint | None:
        """The run's latest (or `step`'s) checkpoint opened for reading; None
        when there is none. Reads come from the daemon's in-memory copy when it
        holds one of that step (hot restore; `hot`). With `remote`, a step not
        on the daemon's disk is first fetched from its object store ([tier.s3])
        when it has one: a trainer on a new node restores."""
        info = _rpc(self.client.stub.GetRun, pb.GetRunRequest(run_id=self.id))
        tier = self._fetched.pop(step, None) if step is not None else None
        if step is None:
            self._elsewhere = ""
            local = [info.last_step] if info.HasField("last_step") else []
            local += [info.memory_step] if info.HasField("memory_step") else []
            newest = max(local) if local else None
            # A peer's memory or the store may hold a newer step than this node.
            fetched = self._fetch_remote(None, newer_than=newest) if remote else None
            if fetched is not None:
                step, tier = fetched.step, _fetched_tier(fetched)
                self._fetched[step] = tier
            elif newest is None:
                return None
            else:
                step = newest
        try:
            detail = _rpc(self.client.stub.GetCheckpoint, pb.GetCheckpointRequest(run_id=self.id, step=step))
        except Error as e:
            fetched = self._fetch_remote(step) if e.code == "NOT_FOUND" and remote else None
            if fetched is None:
                raise
            detail = _rpc(self.client.stub.GetCheckpoint, pb.GetCheckpointRequest(run_id=self.id, step=step))
            tier = self._fetched[step] = _fetched_tier(fetched)
        tier = tier or ("memory" if detail.info.location == "memory" else "disk")
        memory = None
        # Only with digests checked: a live trainer may be reusing that arena.
        if hot and verify and self.client.local and info.HasField("in_memory") and info.in_memory.step == step:
            memory = hot_copy(self.id, info.in_memory)
        c = Checkpoint(detail.info.file, detail.info.train_file or "", verify=verify,
                       threads=self.threads, memory=memory)
        if c.step != step:
            c.close()
            raise gguf.GgufError(f"asked run {self.id!r} for step {step}, but {detail.info.file} holds step "
                                 f"{c.step} (its {gguf.KEY_STEP})")
        c.tier = tier
        c.elsewhere = self._elsewhere
        c.steps_lost = info.last_seen_step - step if info.HasField("last_seen_step") else None
        return c

    def restore(self, model: Model = None, optimizer: Optimizer = None, step: int | None = None,
                verify: bool = True, as_torch: bool = True, hot: bool = True, remote: bool = True, *,
                cast: bool = False, reshape: bool = False, state: StateObjects | None = None,
                fall_back: bool = True, attempt: str | None = None,
                agree_timeout: float = 300.0) -> RestoreInfo | None:
        """Restores `step`, or with none the newest intact step: when the
        latest is damaged (a digest fails, a file does not belong to its
        step), each older step is tried in turn, what was refused and why is
        logged and kept in RestoreInfo.skipped; when no step is intact the
        newest step's error is raised. `fall_back=False` (or verify=False) restores
        the latest or raises. The rest: _restore_step.

        A rank of a multi-rank run with `attempt` (default: $CKPTD_RESTORE_ATTEMPT,
        else torchrun's "$TORCHELASTIC_RUN_ID:$TORCHELASTIC_RESTART_COUNT"): the ranks
        agree, through the daemons' object store, on the newest step every rank can
        get its part of from some tier, and each restores that step (brought from a
        peer or the store when its node lacks it), or raises; never an older one of
        its own. `attempt` is the same on every rank of one restart and new for each
        restart; the wait for the other ranks is `agree_timeout` seconds. A
        multi-rank run with memory steps (memory_every_steps) needs it: its
        ranks' newest steps differ after a node is lost."""
        kw: dict[str, Any] = dict(verify=verify, as_torch=as_torch, hot=hot, remote=remote, cast=cast,
                                  reshape=reshape, state=state)
        if step is None:
            agreed = self._agree(attempt, agree_timeout)
            if agreed is _NOTHING_ANYWHERE:
                return None
            if agreed is not None:
                kw["remote"] = False
                return self._restore_step(model, optimizer, agreed, **kw)
        if step is not None or not verify or not fall_back:
            return self._restore_step(model, optimizer, step, **kw)
        skipped: list[str] = []
        first: gguf.GgufError | None = None
        steps = self._local_steps_newest_first()
        self._elsewhere = ""
        if remote:
            # A peer's memory or the store may hold a newer step than this node.
            fetched = self._fetch_remote(None, newer_than=steps[0] if steps else None)
            if fetched is not None:
                self._fetched[fetched.step] = _fetched_tier(fetched)
                steps.insert(0, fetched.step)
            kw["remote"] = False  # asked once: what is listed is here now
        for s in steps or [None]:  # type: ignore[list-item]
            try:
                info = self._restore_step(model, optimizer, s, **kw)
            except gguf.GgufError as e:  # damage; a mismatch with the model is not
                if s is None:
                    raise
                first = first or e
                skipped.append(f"step {s}: {e}")
                log.error("restore of run %s: step %s refused, trying the one before: %s", self.id, s, e)
                continue
            if info is not None and skipped:
                info.skipped = skipped
                log.warning("restore of run %s: restored step %s; newer steps were damaged: %s",
                            self.id, info.step, "; ".join(skipped))
            return info
        # None intact: the newest step's refusal, as restore(step=latest) gives it.
        log.error("restore of run %s: no intact checkpoint: %s", self.id, "; ".join(skipped))
        assert first is not None
        raise first

    def _agree(self, attempt: str | None, timeout: float):
        """For a multi-rank run: the step every rank restores (see restore),
        here on this node, or _NOTHING_ANYWHERE for a new run (no rank holds
        a step); None for a single-rank run, or a multi-rank one without
        memory steps and no attempt id (its committed steps are every rank's
        already)."""
        info = _rpc(self.client.stub.GetRun, pb.GetRunRequest(run_id=self.id))
        if info.world_size <= 1:
            return None
        if attempt is None:
            attempt = os.environ.get("CKPTD_RESTORE_ATTEMPT")
        if attempt is None and "TORCHELASTIC_RESTART_COUNT" in os.environ:
            attempt = (f"{os.environ.get('TORCHELASTIC_RUN_ID', 'torchelastic')}:"
                       f"{os.environ['TORCHELASTIC_RESTART_COUNT']}")
        if attempt is None:
            if info.schedule.memory_every_steps > 0:
                raise ValueError(
                    f"run {self.id!r} is rank {info.rank} of {info.world_size} with memory steps, so its "
                    "ranks must agree on the step they restore: pass attempt=... (the same on every rank "
                    "of this restart, new for each restart), set CKPTD_RESTORE_ATTEMPT, or run under torchrun")
            return None
        req = pb.FetchRemoteRequest(run_id=self.id, agree_attempt=attempt, agree_timeout_seconds=timeout)
        try:
            fetched = _rpc(self.client.stub.FetchRemote, req, timeout=timeout + 60)
        except Error as e:
            if e.code == "NOT_FOUND" and _NO_STEP_ANYWHERE in e.message:
                return _NOTHING_ANYWHERE
            raise
        if fetched.fetched_from:
            self._fetched[fetched.step] = _fetched_tier(fetched)
        log.info("restore of run %s (rank %d of %d, attempt %s): the ranks agreed on step %d%s", self.id,
                 info.rank, info.world_size, attempt, fetched.step,
                 f", fetched from {fetched.fetched_from}" if fetched.fetched_from else "")
        return fetched.step

    def _local_steps_newest_first(self) -> list[int]:
        steps: list[int] = []
        token = ""
        while True:
            page = _rpc(self.client.stub.ListCheckpoints,
                        pb.ListCheckpointsRequest(run_id=self.id, page_size=1000, page_token=token))
            steps += [c.step for c in page.checkpoints if not c.pending]
            token = page.next_page_token
            if not token:
                return sorted(steps, reverse=True)

    def _restore_step(self, model=None, optimizer=None, step: int | None = None, verify: bool = True,
                      as_torch: bool = True, hot: bool = True, remote: bool = True, *,
                      cast: bool = False, reshape: bool = False, state=None) -> RestoreInfo | None:
        """Reads the run's latest (or `step`'s) checkpoint into the existing
        tensors of `model` (a module or a state dict), in place; restores the
        optimizer's moments by parameter name and the RNG states. Reads the
        daemon's in-memory copy when it keeps one (hot restore; `hot`).
        Returns None when the run has no checkpoint yet.

        Each tensor's saved dtype and shape must equal its destination's, or
        ckptd.RestoreMismatch names the tensor, both dtypes and both shapes
        before anything is read. `cast=True` converts between float16,
        bfloat16, float32 and float64 (narrowing rounds to nearest, ties to
        even); `reshape=True` accepts another shape with as many elements.
        What they changed is in RestoreInfo.changes and the log. `state`:
        the objects save(state=...) was given (schedulers, GradScaler),
        loaded with their saved state dicts."""
        t0 = time.perf_counter()
        ckpt = self.open_checkpoint(step, verify, hot, remote)
        if ckpt is None:
            return None
        with ckpt:
            sd = _flat(_state_dict(model))
            # Every tensor checked against its destination before a byte is read.
            plans = _restore_plans(ckpt, sd, self.name_map, cast, reshape)
            changes = [p.note for _, _, _, p in plans if p.note]
            for line in changes:
                log.warning("restore of run %s step %s: %s", self.id, ckpt.step, line)
            # Tensors in parallel (reads and digest checks release the GIL), each
            # read in pieces by a second pool, so one huge tensor is not serial.
            with ThreadPoolExecutor(self.threads) as tensors, ThreadPoolExecutor(self.threads) as pieces:
                jobs = [tensors.submit(_read_into_tensor, ckpt, name, t, info, p, pieces)
                        for name, t, info, p in plans]
                for j in jobs:
                    j.result()
            train_names = [t.name for t in ckpt.train.tensors] if ckpt.train else []
            lib = "torch" if state_lib.torch else "numpy"
            small = ckpt.read_all(lib, names=set(train_names)) if train_names else {}
            md = ckpt.train_metadata
            if optimizer is not None:
                state_lib.restore_optimizer(optimizer, model, small, md)
            state_lib.restore_rng(small, md)
            if state:
                state_lib.restore_state(state, md, small)
            extra = state_lib.decode_extra(md, small, as_torch)
            if ckpt.step is None:
                raise gguf.GgufError(f"{ckpt.model.path}: no {gguf.KEY_STEP}: not a checkpoint ckptd wrote")
            return RestoreInfo(
                step=ckpt.step,
                extra=extra,
                metrics={k[len("ckpt.metrics."):]: v for k, v in ckpt.metadata.items()
                         if k.startswith("ckpt.metrics.")},
                source=ckpt.source,
                file=ckpt.model.path,
                seconds=time.perf_counter() - t0,
                bytes=ckpt.bytes_read,
                metadata=dict(ckpt.metadata),
                memory_fallbacks=ckpt.memory_fallbacks,
                changes=changes,
                tier=ckpt.tier,
                steps_lost=ckpt.steps_lost,
                elsewhere=ckpt.elsewhere,
            )


def _staged_reason(step: int, reason: str) -> str:
    what = (f"this rank's part of step {step} is durable on this node; the step is not a checkpoint "
            "until every rank's part is")
    return f"{what} ({reason})" if reason else what


# The daemon's words when every rank of a restart reported and none holds a
# step (tier/restore_agreement.h): a new run, nothing to restore.
_NO_STEP_ANYWHERE = "no rank holds a step of the run"
_NOTHING_ANYWHERE = object()


def _fetched_tier(info) -> str:
    return "peer" if info.fetched_from.startswith("peer") else "store"


def _restore_plans(ckpt: Checkpoint, sd: dict, name_map, cast: bool, reshape: bool):
    """(checkpoint name, destination, tensor info, compat.Plan) for every
    tensor of `sd`, or the first mismatch raised (nothing read yet)."""
    dtypes, zero_d = ckpt.hints()
    out = []
    for key, t in sd.items():
        name = name_map(key) if name_map else key
        found = ckpt.find(name)
        if found is None:
            raise KeyError(f"checkpoint {ckpt.model.path} has no tensor '{name}' (the model has it)")
        info = found[1]
        src_dtype = compat.saved_dtype(info, dtypes.get(name))
        label = name if name == key else f"{name}' (the model's '{key}"
        p = compat.plan(label, src_dtype, compat.saved_shape(info, name in zero_d),
                        compat.dtype_name(t), tuple(t.shape), cast, reshape)
        out.append((name, t, info, p))
    return out


def _read_into_tensor(ckpt: Checkpoint, name: str, t, info, p, pool):
    """Reads `name` into `t` as `p` (compat.Plan) says: its bytes straight
    into the destination's memory, or through a host copy of the saved
    dtype, converted, for a cast."""
    if p.cast:
        raw = np.empty(info.nbytes, dtype=np.uint8)
        ckpt.read_into(name, raw, pool)
        src = raw.view(np.uint16 if p.src_dtype == "bfloat16" else np.dtype(p.src_dtype))
        if state._is_torch(t):
            torch = state.torch
            host = (torch.from_numpy(src.view(np.int16)).view(torch.bfloat16)
                    if p.src_dtype == "bfloat16" else torch.from_numpy(src))
            with torch.no_grad():
                t.copy_(host.reshape(t.shape).to(t.dtype))  # round to nearest, ties to even
            return
        arr = np.asarray(t)
        out = compat.convert_numpy(src, p.src_dtype, arr.dtype.name)
        arr[...] = out.reshape(arr.shape)
        return
    if state._is_torch(t):
        torch = state.torch
        with torch.no_grad():
            if t.device.type == "cpu" and t.is_contiguous():
                host = t
            else:
                host = torch.empty(t.shape, dtype=t.dtype)
            flat = host.reshape(-1) if host.dim() else host.reshape(1)
            buf = flat.view(torch.uint8).numpy()
            ckpt.read_into(name, buf, pool)
            if host is not t:
                t.copy_(host)
        return
    arr = np.asarray(t)
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"tensor '{name}': restore needs a writable C-contiguous array")
    ckpt.read_into(name, arr.reshape(-1).view(np.uint8), pool)
