"""Reading checkpoints back: ``Checkpoint`` (verified reads into caller
memory), ``load`` and ``load_metadata``.

A Checkpoint opens ``step_N.gguf`` and its ``step_N.train.gguf`` when there
is one, and before reading any data checks that each file's tensor table
gives its stored content digest and that the training-state file was written
with this model file. ``read_into`` reads a tensor's bytes straight into an
existing buffer (``os.preadv`` in pieces, several in flight: the reads
release the GIL) and checks its XXH3-128 digest; a mismatch raises
``DigestMismatch`` naming the tensor. Pieces are read with O_DIRECT into
page-aligned bounce buffers (mapped once per Checkpoint) and copied out,
past the page cache, whose fill and copy were the largest cost of a cold
read; where the filesystem refuses O_DIRECT (tmpfs before Linux 6.6, some
FUSE filesystems) they are read buffered.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Collection

import numpy as np

from . import compat, gguf

log = logging.getLogger("ckptd")

PIECE = 8 << 20
ALIGN = 4096  # O_DIRECT offsets, lengths and buffers: a multiple of any device's block


class DigestMismatch(gguf.GgufError):
    """A tensor's bytes do not match the digest stored with them."""


def _content_digest(f: gguf.GgufFile) -> str:
    """ckpt.content_digest recomputed from the tensor table and stored digests."""
    stream = bytearray()
    for t in f.tensors:
        name = t.name.encode()
        stream += struct.pack("<Q", len(name)) + name
        stream += struct.pack("<II", t.type, len(t.ne)) + struct.pack(f"<{len(t.ne)}Q", *t.ne)
        stream += struct.pack("<Q", t.nbytes)
        d = int(t.digest, 16)
        stream += struct.pack("<QQ", d & ((1 << 64) - 1), d >> 64)
    return "xxh3-128:" + gguf.hasher.hexdigest(bytes(stream))


def _one_bit_apart(a: str, b: str) -> bool:
    x, y = a.encode(errors="surrogateescape"), b.encode()
    return len(x) == len(y) and sum(bin(p ^ q).count("1") for p, q in zip(x, y)) == 1


def check_metadata(f: gguf.GgufFile) -> bool:
    """Checks ckpt.metadata_digest against the header as the file holds it:
    True when covered and equal, False for a file from before ckptd recorded
    one; GgufError when it differs (or a key one bit from its name stands
    where it should be)."""
    stored = f.metadata.get(gguf.KEY_METADATA_DIGEST)
    if stored is None:
        for key in f.metadata:
            if _one_bit_apart(key, gguf.KEY_METADATA_DIGEST):
                raise gguf.GgufError(f"{f.path}: metadata key {key!r} is one bit away from "
                                     f"{gguf.KEY_METADATA_DIGEST}: the header is damaged")
        return False
    if stored != f.computed_metadata_digest:
        raise gguf.GgufError(
            f"{f.path}: metadata digest mismatch: stored {stored}, computed "
            f"{f.computed_metadata_digest} (a metadata value or the tensor table was changed)")
    return True


def train_mismatch(train: gguf.GgufFile, model: gguf.GgufFile) -> str:
    """Why `train` is not the training-state file saved with `model` ("" when
    it is): its model content digest, step and save id must all be the model
    file's."""
    tied = train.metadata.get(gguf.KEY_MODEL_DIGEST)
    mine = model.metadata.get(gguf.KEY_CONTENT_DIGEST)
    if tied != mine:
        return f"it was written with model content {tied}, the model file has {mine}"
    step, model_step = train.metadata.get(gguf.KEY_STEP), model.metadata.get(gguf.KEY_STEP)
    if step is not None and step != model_step:
        return f"it is step {step}'s training state, the model file is step {model_step}"
    save, model_save = train.metadata.get(gguf.KEY_SAVE_ID, ""), model.metadata.get(gguf.KEY_SAVE_ID, "")
    if save != model_save:
        return (f"it belongs to save {save or '(none)'}, the model file to save {model_save or '(none)'} "
                "(equal tensors, another save)")
    return ""


_STEP_NAME = re.compile(r"step_(\d+)(-\d{5}-of-\d{5})?(\.train)?\.gguf")


def check_named_step(f: gguf.GgufFile, model: bool = True):
    """A checkpoint file's name and its ckpt.step agree (and, with `model`,
    it is a model file)."""
    if model and f.metadata.get(gguf.KEY_ROLE) == "train":
        raise gguf.GgufError(f"{f.path} is a training-state file (ckpt.role = train); open its step_N.gguf")
    m = _STEP_NAME.fullmatch(os.path.basename(f.path))
    step = f.metadata.get(gguf.KEY_STEP)
    if m and step is not None and int(m.group(1)) != step:
        raise gguf.GgufError(f"{f.path}: its header says step {step} ({gguf.KEY_STEP}), its name says "
                             f"step {m.group(1)}; it is not that step's checkpoint")


def _check_table(f: gguf.GgufFile, verify: bool):
    if not verify:
        return
    check_metadata(f)
    if not f.tensors:
        return
    if any(not t.digest for t in f.tensors):
        raise gguf.GgufError(
            f"{f.path} stores no per-tensor digests ({gguf.KEY_TENSOR_DIGESTS}): not a ckptd "
            "checkpoint; open it with verify=False to read it unchecked"
        )
    stored = f.metadata.get(gguf.KEY_CONTENT_DIGEST)
    if stored is not None and gguf.hasher.available and _content_digest(f) != stored:
        raise gguf.GgufError(
            f"{f.path}: the tensor table does not match the stored content digest {stored} "
            "(names, types or shapes were changed)"
        )


def train_path_for(model_path: str, md: dict) -> str:
    step = md.get(gguf.KEY_STEP)
    if step is None:
        return ""
    p = os.path.join(os.path.dirname(model_path), f"step_{step}.train.gguf")
    return p if os.path.exists(p) else ""


class Checkpoint:
    """One checkpoint (model file + optional training-state file), opened for reading."""

    def __init__(self, model_path: str, train_path: str | None = None, verify: bool = True,
                 threads: int = 4, memory: tuple[Any, dict[str, int]] | None = None):
        self.verify = verify and gguf.hasher.available
        self.threads = threads
        self.source = "disk"
        self.tier = "disk"  # set by Run.open_checkpoint: the tier that holds it
        self.steps_lost: int | None = None
        self.elsewhere = ""
        self.model = gguf.read_header(model_path)
        _check_table(self.model, self.verify)
        check_named_step(self.model)
        if train_path is None:
            train_path = train_path_for(model_path, self.model.metadata)
        self.train = None
        if train_path:
            self.train = gguf.read_header(train_path)
            _check_table(self.train, self.verify)
            why = train_mismatch(self.train, self.model)
            if why:
                raise gguf.GgufError(
                    f"training-state file {train_path} is not the one saved with {model_path}: {why}; "
                    "they are not one checkpoint"
                )
        self._fds: dict[str, int] = {}
        self._direct_fds: dict[str, int | None] = {}
        self._buffers: list[mmap.mmap] = []  # free bounce buffers, PIECE + ALIGN bytes each
        self._all_buffers: list[mmap.mmap] = []
        self._memory = memory  # hot restore: (mmap, {name: offset})
        if memory is not None:
            self.source = "memory"
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.memory_fallbacks = 0  # tensors read from disk because memory had changed

    # -- facts --------------------------------------------------------------

    @property
    def step(self) -> int | None:
        return self.model.metadata.get(gguf.KEY_STEP)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.model.metadata

    @property
    def train_metadata(self) -> dict[str, Any]:
        return self.train.metadata if self.train else {}

    def files(self) -> list[gguf.GgufFile]:
        return [f for f in (self.model, self.train) if f is not None]

    def tensors(self) -> list[gguf.TensorInfo]:
        return [t for f in self.files() for t in f.tensors]

    def find(self, name: str) -> tuple[gguf.GgufFile, gguf.TensorInfo] | None:
        for f in self.files():
            t = f.by_name.get(name)
            if t is not None:
                return f, t
        return None

    def hints(self) -> tuple[dict[str, str], set[str]]:
        """(dtype by tensor name, names of 0-d tensors) recorded at save time."""
        md = self.train_metadata or self.metadata
        dtypes = dict(s.split(":", 1) for s in md.get(gguf.KEY_DTYPES, []))
        shapes = {s.split(":", 1)[0] for s in md.get(gguf.KEY_SHAPES, [])}
        return dtypes, shapes

    # -- reads --------------------------------------------------------------

    def _fd(self, path: str) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._fds[path] = fd
            return fd

    def _direct_fd(self, path: str) -> int | None:
        """An O_DIRECT descriptor of `path`, or None where the filesystem has none."""
        with self._lock:
            if path not in self._direct_fds:
                try:
                    self._direct_fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
                except OSError:
                    self._direct_fds[path] = None
            return self._direct_fds[path]

    def _take_buffer(self) -> mmap.mmap:
        with self._lock:
            if self._buffers:
                return self._buffers.pop()
        buf = mmap.mmap(-1, PIECE + ALIGN)
        with self._lock:
            self._all_buffers.append(buf)
        return buf

    def _give_buffer(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._buffers.append(buf)

    def read_into(self, name: str, dst: Any, pool: ThreadPoolExecutor | None = None) -> None:
        """Reads tensor `name` into `dst` (a writable buffer of exactly its size)."""
        found = self.find(name)
        if found is None:
            raise KeyError(f"no tensor '{name}' in {self.model.path}")
        f, t = found
        view = memoryview(dst).cast("B")
        if view.nbytes != t.nbytes:
            raise ValueError(f"tensor '{name}' has {t.nbytes} bytes; the destination has {view.nbytes}")
        if self._memory is not None and name in self._memory[1]:
            mm, offsets = self._memory
            off = offsets[name]
            if off + t.nbytes <= len(mm):
                np.frombuffer(view, dtype=np.uint8)[:] = np.frombuffer(mm, dtype=np.uint8, count=t.nbytes, offset=off)
                if not self.verify or gguf.hasher.hexdigest(view) == t.digest:
                    self._count(t.nbytes)
                    return
            # The arena was reused since the commit: this tensor comes from disk.
            with self._lock:
                self.memory_fallbacks += 1
        direct = self._direct_fd(f.path)
        fd = self._fd(f.path) if direct is None else direct
        base = f.data_offset + t.offset
        pieces = [(a, min(t.nbytes, a + PIECE)) for a in range(0, t.nbytes, PIECE)]
        ends_inside = f"{f.path}: the file ends inside tensor '{name}'"

        def read_buffered(piece):
            a, b = piece
            got = 0
            while a + got < b:
                n = os.preadv(fd, [view[a + got : b]], base + a + got)
                if n == 0:
                    raise gguf.GgufError(ends_inside)
                got += n

        def read_direct(piece, direct: int):
            a, b = piece
            start = (base + a) // ALIGN * ALIGN
            skip = base + a - start
            need = skip + (b - a)
            length = (need + ALIGN - 1) // ALIGN * ALIGN
            buf = self._take_buffer()
            try:
                with memoryview(buf) as mv:
                    got = 0
                    while got < need:
                        n = os.preadv(direct, [mv[got:length]], start + got)
                        if n == 0 or (n % ALIGN and got + n < need):
                            raise gguf.GgufError(ends_inside)  # a short read is the file's end
                        got += n
                np.copyto(np.frombuffer(view[a:b], dtype=np.uint8),
                          np.frombuffer(buf, dtype=np.uint8, count=b - a, offset=skip))
            finally:
                self._give_buffer(buf)

        def read(piece):
            return read_buffered(piece) if direct is None else read_direct(piece, direct)

        if pool is not None and len(pieces) > 1:
            list(pool.map(read, pieces))
        else:
            for p in pieces:
                read(p)
        if self.verify:
            got = gguf.hasher.hexdigest(view)
            if got != t.digest:
                raise DigestMismatch(
                    f"tensor '{name}' in {f.path} does not match its digest: stored {t.digest}, "
                    f"read {got}"
                )
        self._count(t.nbytes)

    def _count(self, n: int):
        with self._lock:
            self.bytes_read += n

    def read_all(self, as_: str = "numpy", names: Collection[str] | None = None) -> dict[str, Any]:
        """Every tensor (or `names`) as new arrays, dtypes and 0-d shapes as saved."""
        dtypes, zero_d = self.hints()
        out = {}
        with ThreadPoolExecutor(self.threads) as pool:
            for t in self.tensors():
                if names is not None and t.name not in names:
                    continue
                arr = np.empty(t.nbytes, dtype=np.uint8)
                self.read_into(t.name, arr, pool)
                out[t.name] = _typed(arr, t, dtypes.get(t.name), t.name in zero_d, as_)
        return out

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            for dfd in self._direct_fds.values():
                if dfd is not None:
                    os.close(dfd)
            self._direct_fds.clear()
            for buf in self._all_buffers:
                buf.close()
            self._all_buffers.clear()
            self._buffers.clear()
        if self._memory is not None:
            try:
                self._memory[0].close()
            except BufferError:
                pass  # arrays still view it; freed with them
            self._memory = None

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _typed(raw: np.ndarray, t: gguf.TensorInfo, hint: str | None, zero_d: bool, as_: str):
    shape = () if zero_d else t.shape
    if hint == "bool":
        arr = raw.view(np.bool_)
    elif hint in ("uint8", "uint32"):
        arr = raw.view(np.dtype(hint))
    else:
        arr = raw.view(gguf.GGUF_TO_NUMPY[t.type])
    arr = arr.reshape(shape)
    if as_ == "numpy":
        return arr
    if as_ != "torch":
        raise ValueError(f"as_ must be 'numpy' or 'torch', not {as_!r}")
    import torch

    if t.type == gguf.BF16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    if hint == "uint32":
        return torch.from_numpy(arr.view(np.int32))  # torch has no uint32: same bits
    return torch.from_numpy(arr)


def load(path: str, as_: str = "numpy", verify: bool = True, *, like: dict | None = None,
         cast: bool = False, reshape: bool = False) -> dict[str, Any]:
    """Tensors of a GGUF file by name, in their saved dtypes and shapes.
    numpy arrays are views of a private memory map (no full copy; writing to
    one does not touch the file). With verify (the default) the metadata
    digest and every tensor's digest are checked first, and a training-state
    file beside it must be the one saved with it; verify=False reads a GGUF
    file ckptd did not write. Dtypes and 0-d shapes recorded in the training-state file
    beside it are applied.

    `like` (a state dict, e.g. ``model.state_dict()``) holds the destinations
    the tensors are meant for: each of its tensors must be in the file with
    the same dtype and shape, or compat.RestoreMismatch names the tensor and
    both dtypes and shapes (the rule restore() follows); `cast` and
    `reshape` relax it as they do for restore(), and what they changed is
    logged. Without `like` nothing is compared."""
    f = gguf.read_header(path)
    verify = verify and gguf.hasher.available
    _check_table(f, verify)
    check_named_step(f, model=False)
    hints_src = f.metadata
    # A model file's dtypes and 0-d shapes are in its training-state file (an
    # export's tensors have other names: its own metadata is all it has).
    if gguf.KEY_DTYPES not in hints_src and f.metadata.get(gguf.KEY_ROLE, "model") == "model":
        tp = train_path_for(path, f.metadata)
        if tp:
            train = gguf.read_header(tp)
            if verify:
                check_metadata(train)
                why = train_mismatch(train, f)
                if why:
                    raise gguf.GgufError(f"{tp} holds {path}'s dtypes and shapes but is not saved with it: "
                                         f"{why}")
            hints_src = train.metadata
    dtypes = dict(s.split(":", 1) for s in hints_src.get(gguf.KEY_DTYPES, []))
    zero_d = {s.split(":", 1)[0] for s in hints_src.get(gguf.KEY_SHAPES, [])}
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for t in f.tensors:
        raw = np.frombuffer(mm, dtype=np.uint8, count=t.nbytes, offset=f.data_offset + t.offset)
        if verify:
            if not t.digest:
                raise gguf.GgufError(f"{path} stores no digest for tensor '{t.name}'")
            if gguf.hasher.hexdigest(raw) != t.digest:
                raise DigestMismatch(f"tensor '{t.name}' in {path} does not match its digest")
        out[t.name] = _typed(raw, t, dtypes.get(t.name), t.name in zero_d, as_)
    if like is not None:
        _conform(path, f, out, like, dtypes, zero_d, as_, cast, reshape)
    return out


def _conform(path, f, out, like, dtypes, zero_d, as_, cast, reshape):
    """Checks `out` against the destinations in `like` (all before changing
    anything) and applies the casts and reshapes the options allow."""
    infos = {t.name: t for t in f.tensors}
    plans = []
    for name, dst in like.items():
        if name not in infos:
            raise KeyError(f"{path} has no tensor '{name}' (the destination has it)")
        info = infos[name]
        p = compat.plan(name, compat.saved_dtype(info, dtypes.get(name)),
                        compat.saved_shape(info, name in zero_d), compat.dtype_name(dst),
                        tuple(dst.shape), cast, reshape)
        plans.append((name, dst, p))
    for name, dst, p in plans:
        if p.note:
            log.warning("load of %s: %s", path, p.note)
        a = out[name]
        if p.cast:
            if as_ == "torch":
                a = a.to(dst.dtype)  # round to nearest, ties to even
            else:
                a = compat.convert_numpy(a, p.src_dtype, compat.dtype_name(dst))
        out[name] = a.reshape(tuple(dst.shape)) if p.reshape else a


def load_metadata(path: str) -> dict[str, Any]:
    """Every metadata key of a GGUF file (reads the header only)."""
    return gguf.read_header(path).metadata


def _split_parts(first_part: str) -> list[str]:
    """The paths of a multi-rank step's parts, from its first one."""
    d, base = os.path.split(first_part)
    if not base.endswith("-00001-of-" + base[-10:-5] + ".gguf") or not base[-10:-5].isdigit():
        raise gguf.GgufError(f"{first_part} is not the first part of a multi-rank step "
                             "(step_N-00001-of-WWWWW.gguf)")
    world, stem = int(base[-10:-5]), base[: -len("-00001-of-00000.gguf")]
    return [os.path.join(d, f"{stem}-{r + 1:05d}-of-{world:05d}.gguf") for r in range(world)]


def load_step(first_part: str, as_: str = "numpy", verify: bool = True,
              select: dict[str, tuple[int, int, int]] | None = None) -> dict[str, Any]:
    """A multi-rank step's model tensors, from all of its parts
    (step_N-00001-of-WWWWW.gguf and the others beside it): whole tensors as
    their rank saved them, row-sharded ones (ckpt.shard.* keys) reassembled
    from every rank's slice; each part's digests checked (verify). This is a
    restore at world size 1. `select` restores at another world size: for
    the named tensors, only {name: (dim, offset, length)} of the whole
    tensor (dim in GGUF order, as multi_rank slices declare it)."""
    whole: dict[str, np.ndarray] = {}
    sliced: dict[str, list] = {}
    for path in _split_parts(first_part):
        md = gguf.read_header(path).metadata
        for name, arr in load(path, verify=verify).items():
            key = f"ckpt.shard.{name}."
            if key + "dim" not in md:
                if name in whole or name in sliced:
                    raise gguf.GgufError(f"tensor '{name}' is held whole by more than one part ({path})")
                whole[name] = arr
                continue
            full = list(md[key + "full_ne"])
            sliced.setdefault(name, []).append((md[key + "offset"], md[key + "dim"], full, arr))
    for name, pieces in sliced.items():
        pieces.sort(key=lambda p: p[0])
        dim, full = pieces[0][1], pieces[0][2]
        axis = len(full) - 1 - dim
        at = 0
        for offset, d, f, arr in pieces:
            if d != dim or f != full:
                raise gguf.GgufError(f"tensor '{name}': the parts disagree on its full shape or dimension")
            if offset != at:
                raise gguf.GgufError(f"tensor '{name}': its slices {'leave a gap' if offset > at else 'overlap'} "
                                     f"at {min(offset, at)} along dim {dim}")
            at += arr.shape[axis]
        if at != full[dim]:
            raise gguf.GgufError(f"tensor '{name}': its slices cover {at} of {full[dim]} along dim {dim}")
        whole[name] = np.concatenate([p[3] for p in pieces], axis=axis)
    for name, (dim, offset, length) in (select or {}).items():
        arr = whole[name]
        axis = arr.ndim - 1 - dim
        if offset + length > arr.shape[axis]:
            raise ValueError(f"select['{name}']: {offset}+{length} is past its {arr.shape[axis]} along dim {dim}")
        whole[name] = np.ascontiguousarray(np.take(arr, range(offset, offset + length), axis=axis))
    if as_ == "torch":
        import torch
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in whole.items()}
    return whole
