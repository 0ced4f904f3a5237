"""Whether a saved tensor may be restored into a destination, and how.

A restore gives back exactly what was saved or refuses: the saved dtype and
shape must equal the destination's. Two explicit options relax that, and
every use of them is reported (RestoreInfo.changes, one log line each):

- ``cast=True``: a floating-point tensor may land in another floating-point
  dtype among float16, bfloat16, float32 and float64. Widening is exact;
  narrowing rounds to nearest, ties to even (torch's ``Tensor.to``,
  numpy's ``astype``), and values beyond float16's range become inf.
  Integers, booleans and quantized (Q8_0) tensors are never cast.
- ``reshape=True``: the bytes may land in a destination of another shape
  with the same number of elements (row-major order kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import gguf

FLOATS = ("float16", "bfloat16", "float32", "float64")

# GGUF type -> the dtype it was saved from, when no hint says otherwise.
_GGUF_DTYPE = {
    gguf.F32: "float32",
    gguf.F16: "float16",
    gguf.BF16: "bfloat16",
    gguf.F64: "float64",
    gguf.I8: "int8",
    gguf.I16: "int16",
    gguf.I32: "int32",
    gguf.I64: "int64",
    gguf.Q8_0: "q8_0",
}


class RestoreMismatch(ValueError):
    """A checkpoint's tensor and its destination differ in dtype or shape."""


def saved_dtype(info: gguf.TensorInfo, hint: str | None) -> str:
    """The dtype a tensor was saved from: its recorded hint (bool, uint8,
    uint32), else the one its GGUF type holds."""
    if hint:
        return hint
    return _GGUF_DTYPE.get(info.type, f"ggml type {info.type}")


def saved_shape(info: gguf.TensorInfo, zero_d: bool) -> tuple[int, ...]:
    return () if zero_d else info.shape


def dtype_name(t) -> str:
    """A destination's dtype as numpy names it ("bfloat16" for torch's)."""
    dt = getattr(t, "dtype", None)
    if dt is not None and not isinstance(dt, np.dtype):  # torch
        return str(dt).replace("torch.", "")
    return np.asarray(t).dtype.name


@dataclass
class Plan:
    src_dtype: str = ""
    cast: bool = False  # the bytes need a dtype conversion
    reshape: bool = False
    note: str = ""  # what was changed, for RestoreInfo.changes


def plan(name: str, src_dtype: str, src_shape: tuple, dst_dtype: str, dst_shape: tuple,
         cast: bool, reshape: bool) -> Plan:
    """How `name` goes from the checkpoint into its destination, or
    RestoreMismatch naming both dtypes and shapes and the option that would
    allow it (if one would)."""
    p = Plan(src_dtype=src_dtype)
    notes = []
    src_shape, dst_shape = tuple(src_shape), tuple(dst_shape)
    if src_dtype != dst_dtype:
        if not (cast and src_dtype in FLOATS and dst_dtype in FLOATS):
            hint = ("; restore(cast=True) converts between float16, bfloat16, float32 and float64"
                    if src_dtype in FLOATS and dst_dtype in FLOATS else
                    "; no option converts it: give the model the saved dtype")
            raise RestoreMismatch(
                f"tensor '{name}': the checkpoint holds {src_dtype} {list(src_shape)}, the "
                f"destination is {dst_dtype} {list(dst_shape)}{hint}")
        p.cast = True
        narrowing = FLOATS.index(dst_dtype) < FLOATS.index(src_dtype) or {src_dtype, dst_dtype} == {
            "float16", "bfloat16"}
        notes.append(f"{src_dtype} -> {dst_dtype}"
                     + (" (rounded to nearest, ties to even)" if narrowing else " (exact)"))
    if src_shape != dst_shape:
        same_count = int(np.prod(src_shape, dtype=np.int64)) == int(np.prod(dst_shape, dtype=np.int64))
        if not (reshape and same_count):
            hint = ("; restore(reshape=True) keeps the elements in row-major order"
                    if same_count else "; the element counts differ")
            raise RestoreMismatch(
                f"tensor '{name}': the checkpoint holds {src_dtype} {list(src_shape)}, the "
                f"destination is {dst_dtype} {list(dst_shape)}{hint}")
        p.reshape = True
        notes.append(f"{list(src_shape)} -> {list(dst_shape)} (reshaped, row-major order)")
    if notes:
        p.note = f"tensor '{name}': " + "; ".join(notes)
    return p


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) as float32: exact."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 bits, rounded to nearest, ties to even (NaN kept a NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def convert_numpy(raw: np.ndarray, src_dtype: str, dst_dtype: str) -> np.ndarray:
    """`raw` (the saved bytes viewed as the saved dtype; bfloat16 as uint16
    bits) converted to `dst_dtype` (bfloat16 as uint16 bits)."""
    x = bf16_to_float32(raw) if src_dtype == "bfloat16" else raw
    if dst_dtype == "bfloat16":
        return float32_to_bf16(x.astype(np.float32))
    return x.astype(np.dtype(dst_dtype))
