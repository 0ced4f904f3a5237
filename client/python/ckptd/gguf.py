"""A small GGUF v3 reader (no gguf-py needed), the dtype mapping, and XXH3-128.

Dtype mapping (Python side -> GGUF tensor type, and back):

=================  ==========  ===================================================
numpy / torch      GGUF type   read back as
=================  ==========  ===================================================
float32            F32         float32
float16            F16         float16
bfloat16 (torch)   BF16        torch.bfloat16; numpy: uint16 holding the bits
float64            F64         float64
int8               I8          int8
uint8              I8          uint8 (recorded in training.tensor_dtypes)
bool               I8 (0/1)    bool (recorded in training.tensor_dtypes)
int16/int32/int64  I16/I32/I64 same
uint32             I32         uint32 (recorded; the bits are kept)
=================  ==========  ===================================================

Shapes: a row-major shape (d0, ..., dk) is stored as GGUF dims [dk, ..., d0]
(fastest-varying first). A 0-d tensor is stored with dims [1] and its shape
recorded in training.tensor_shapes; GGUF allows 1 to 4 dims and no empty
dimension, so a tensor with more than 4 dims or a zero-size dim is refused
with a ValueError naming it. Non-contiguous tensors are made contiguous
(one copy of that tensor). Tensor names are at most 63 bytes (llama.cpp's
limit); longer names are refused unless a `name_map` shortens them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"GGUF"
MAX_NAME_BYTES = 63
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32

# GGUF tensor type ids.
F32, F16, Q8_0, I8, I16, I32, I64, F64, BF16 = 0, 1, 8, 24, 25, 26, 27, 28, 30

# type id -> (name, block size, bytes per block)
TENSOR_TYPES = {
    F32: ("F32", 1, 4),
    F16: ("F16", 1, 2),
    Q8_0: ("Q8_0", 32, 34),
    I8: ("I8", 1, 1),
    I16: ("I16", 1, 2),
    I32: ("I32", 1, 4),
    I64: ("I64", 1, 8),
    F64: ("F64", 1, 8),
    BF16: ("BF16", 1, 2),
}

# numpy dtype (by name) -> (GGUF type, whether the dtype must be recorded to
# come back as itself).
NUMPY_TO_GGUF = {
    "float32": (F32, False),
    "float16": (F16, False),
    "float64": (F64, False),
    "int8": (I8, False),
    "int16": (I16, False),
    "int32": (I32, False),
    "int64": (I64, False),
    "uint8": (I8, True),
    "bool": (I8, True),
    "uint32": (I32, True),
}
# GGUF type -> numpy dtype used to view its bytes.
GGUF_TO_NUMPY = {
    F32: np.float32,
    F16: np.float16,
    F64: np.float64,
    I8: np.int8,
    I16: np.int16,
    I32: np.int32,
    I64: np.int64,
    BF16: np.uint16,
    Q8_0: np.uint8,
}

KEY_TENSOR_DIGESTS = "ckpt.tensor_digests"
KEY_CONTENT_DIGEST = "ckpt.content_digest"
KEY_MODEL_DIGEST = "ckpt.model_content_digest"
KEY_STEP = "ckpt.step"
KEY_METADATA_DIGEST = "ckpt.metadata_digest"
KEY_SAVE_ID = "ckpt.save_id"
KEY_ROLE = "ckpt.role"
# Keys whose values are patched after the data is hashed: the metadata
# digest covers their keys and type ids, not their values.
DIGEST_SLOTS = frozenset({"general.uuid", KEY_CONTENT_DIGEST, KEY_TENSOR_DIGESTS, KEY_METADATA_DIGEST})
KEY_DTYPES = "training.tensor_dtypes"
KEY_SHAPES = "training.tensor_shapes"

# Metadata value type ids.
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {
    _U8: "<B",
    _I8: "<b",
    _U16: "<H",
    _I16: "<h",
    _U32: "<I",
    _I32: "<i",
    _F32: "<f",
    _BOOL: "<?",
    _U64: "<Q",
    _I64: "<q",
    _F64: "<d",
}


class GgufError(ValueError):
    """A file that is not valid GGUF, or not what ckptd wrote."""


@dataclass
class TensorInfo:
    name: str
    type: int
    ne: list[int]  # GGUF order, fastest-varying first
    offset: int  # relative to the data section
    nbytes: int
    digest: str = ""  # XXH3-128 as 32 hex digits, "" when the file stores none

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major (numpy/torch) shape."""
        return tuple(reversed(self.ne))


@dataclass
class GgufFile:
    path: str
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int
    file_size: int
    by_name: dict[str, TensorInfo] = field(default_factory=dict)
    # ckpt.metadata_digest as computed from the header's bytes ("" without XXH3)
    computed_metadata_digest: str = ""


def tensor_nbytes(ttype: int, ne: list[int]) -> int:
    name, block, size = TENSOR_TYPES[ttype]
    n = 1
    for d in ne:
        n *= d
    if n % block:
        raise GgufError(f"{name} tensor with {n} elements: not a multiple of {block}")
    return n // block * size


class _Cursor:
    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise GgufError(f"{self.path}: truncated header at byte {self.pos}")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(b)

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise GgufError(f"{self.path}: string of {n} bytes at byte {self.pos}")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == _STR:
            return self.string()
        if vtype == _ARR:
            etype = self.unpack("<I")
            n = self.unpack("<Q")
            if n > 1 << 24 or etype == _ARR:
                raise GgufError(f"{self.path}: bad array at byte {self.pos}")
            if etype in _SCALAR:
                fmt = _SCALAR[etype]
                size = struct.calcsize(fmt)
                raw = self.take(size * n)
                return list(struct.unpack("<" + fmt[1:] * n, raw))
            return [self.value(etype) for _ in range(n)]
        raise GgufError(f"{self.path}: unknown value type {vtype} at byte {self.pos}")


def read_header(path: str) -> GgufFile:
    """Parses the header and tensor table of a GGUF file (reads the header only)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GgufError(f"{path}: {size} bytes is too small for GGUF")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _parse(m, path, size)


def _parse(buf, path: str, size: int) -> GgufFile:
    c = _Cursor(buf, path)
    if c.take(4) != MAGIC:
        raise GgufError(f"{path}: not a GGUF file (bad magic)")
    version = c.unpack("<I")
    if version != 3:
        raise GgufError(f"{path}: GGUF version {version}; only 3 is supported")
    n_tensors, n_kv = c.unpack("<Q"), c.unpack("<Q")
    if n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise GgufError(f"{path}: implausible counts ({n_tensors} tensors, {n_kv} keys)")
    # What the metadata digest covers, as the file holds it: the fixed
    # header, every key/value (a digest slot's value left out) and the
    # tensor table.
    covered = [bytes(buf[0:24])]
    md: dict[str, Any] = {}
    for _ in range(n_kv):
        start = c.pos
        key = c.string()
        vtype = c.unpack("<I")
        typed = c.pos
        md[key] = c.value(vtype)
        covered.append(bytes(buf[start:typed if key in DIGEST_SLOTS else c.pos]))
    table = c.pos
    tensors = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.unpack("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GgufError(f"{path}: tensor '{name}' has {n_dims} dims")
        ne = [c.unpack("<Q") for _ in range(n_dims)]
        ttype = c.unpack("<I")
        if ttype not in TENSOR_TYPES:
            raise GgufError(f"{path}: tensor '{name}' has unsupported type {ttype}")
        offset = c.unpack("<Q")
        tensors.append(TensorInfo(name, ttype, ne, offset, tensor_nbytes(ttype, ne)))
    covered.append(bytes(buf[table:c.pos]))
    alignment = int(md.get("general.alignment", DEFAULT_ALIGNMENT))
    data_offset = (c.pos + alignment - 1) // alignment * alignment
    digests = md.get(KEY_TENSOR_DIGESTS)
    if isinstance(digests, list) and len(digests) == len(tensors):
        for t, d in zip(tensors, digests):
            t.digest = d
    for t in tensors:
        if data_offset + t.offset + t.nbytes > size:
            raise GgufError(f"{path}: tensor '{t.name}' runs past the end of the file")
    g = GgufFile(path, version, md, tensors, alignment, data_offset, size)
    g.by_name = {t.name: t for t in tensors}
    if hasher.available:
        g.computed_metadata_digest = "xxh3-128:" + hasher.hexdigest(b"".join(covered))
    return g


# --- XXH3-128 ----------------------------------------------------------------


class _Hasher:
    """XXH3-128 through python3-xxhash, or libxxhash through ctypes."""

    def __init__(self):
        self._mod = None
        self._lib = None
        try:
            import xxhash  # Debian's python3-xxhash

            self._mod = xxhash
        except ImportError:
            name = ctypes.util.find_library("xxhash") or "libxxhash.so.0"
            try:
                lib = ctypes.CDLL(name)

                class _H128(ctypes.Structure):
                    _fields_ = [("low", ctypes.c_uint64), ("high", ctypes.c_uint64)]

                lib.XXH3_128bits.restype = _H128
                lib.XXH3_128bits.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
                self._lib = lib
            except OSError:
                pass

    @property
    def available(self) -> bool:
        return self._mod is not None or self._lib is not None

    def hexdigest(self, buf) -> str:
        """XXH3-128 of a buffer (bytes, memoryview or numpy array) as 32 hex digits."""
        if self._mod is not None:
            return self._mod.xxh3_128(buf).hexdigest()
        if self._lib is None:
            raise RuntimeError("no XXH3 available: install python3-xxhash or libxxhash0")
        arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
        ptr = arr.ctypes.data if arr.size else None
        h = self._lib.XXH3_128bits(ptr, arr.nbytes)
        return f"{h.high:016x}{h.low:016x}"


hasher = _Hasher()
