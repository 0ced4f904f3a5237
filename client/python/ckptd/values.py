"""GGUF-typed metadata values from Python values.

llama.cpp checks a key's GGUF type exactly (``llama.block_count`` must be a
u32, ``llama.attention.layer_norm_rms_epsilon`` an f32), so the mapping for
model metadata follows its conventions:

==============================  =========================================
Python                          GGUF type
==============================  =========================================
bool                            bool
int, 0 <= x < 2**32             u32
int, negative, fits 32 bits     i32
other int                       i64 (u64 above 2**63 - 1)
float                           f32
str                             string
list/tuple of one of the above  array of that type (all items alike)
numpy scalar                    its own width (np.float64 -> f64, ...)
``ckptd.Typed("f64", x)``       exactly the type named
==============================  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TYPES = ("u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64")
_NUMPY = {
    "uint8": "u8",
    "int8": "i8",
    "uint16": "u16",
    "int16": "i16",
    "uint32": "u32",
    "int32": "i32",
    "float32": "f32",
    "bool": "bool",
    "uint64": "u64",
    "int64": "i64",
    "float64": "f64",
}


@dataclass(frozen=True)
class Typed:
    """A metadata value with an explicit GGUF type, e.g. Typed("f64", 3e-4)."""

    type: str
    value: Any
    element: str = ""  # for "array": the items' type

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"unknown GGUF value type '{self.type}'; one of {', '.join(TYPES)}")
        if self.type == "array" and self.element not in TYPES:
            raise ValueError("Typed('array', ...) needs element= one of " + ", ".join(TYPES))


def infer(value) -> Typed:
    if isinstance(value, Typed):
        return value
    if isinstance(value, np.generic):
        return Typed(_NUMPY.get(value.dtype.name, "f64"), value.item())
    if isinstance(value, bool):
        return Typed("bool", value)
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return Typed("u32", value)
        if -(1 << 31) <= value < 0:
            return Typed("i32", value)
        if value >= 1 << 63:
            return Typed("u64", value)
        return Typed("i64", value)
    if isinstance(value, float):
        return Typed("f32", value)
    if isinstance(value, str):
        return Typed("string", value)
    if isinstance(value, (list, tuple)):
        items = [infer(x) for x in value]
        if not items:
            return Typed("array", [], element="string")
        kinds = {t.type for t in items}
        if len(kinds) != 1:
            # Mixed ints (u32 and i32, say): widen to i64; ints with floats: f32.
            if kinds <= {"u32", "i32", "i64", "u64"}:
                kinds = {"i64"}
            elif kinds <= {"u32", "i32", "i64", "f32"}:
                kinds = {"f32"}
            else:
                raise ValueError(f"array items must share one type, got {sorted(kinds)}")
        return Typed("array", [t.value for t in items], element=kinds.pop())
    raise ValueError(f"a {type(value).__name__} cannot be GGUF metadata")


_FIELD = {
    "u8": "u8",
    "i8": "i8",
    "u16": "u16",
    "i16": "i16",
    "u32": "u32",
    "i32": "i32",
    "f32": "f32",
    "bool": "bool_value",
    "string": "string_value",
    "u64": "u64",
    "i64": "i64",
    "f64": "f64",
}


def to_proto(value, pb):
    """A ckptd.v1.MetadataValue for `value` (inferred, or a Typed)."""
    t = infer(value)
    mv = pb.MetadataValue()
    if t.type == "array":
        mv.array.element_type = TYPES.index(t.element)
        for x in t.value:
            item = mv.array.items.add()
            setattr(item, _FIELD[t.element], x)
    else:
        setattr(mv, _FIELD[t.type], t.value)
    return mv


def entries(metadata: dict | None, pb) -> list:
    out = []
    for k, v in (metadata or {}).items():
        e = pb.MetadataEntry(key=k)
        e.value.CopyFrom(to_proto(v, pb))
        out.append(e)
    return out


def from_proto(mv) -> Any:
    kind = mv.WhichOneof("value")
    if kind == "array":
        return [from_proto(x) for x in mv.array.items]
    return getattr(mv, kind) if kind else None
