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

Keys llama.cpp reads with one fixed type (``LLAMA_KEYS`` below: the
``tokenizer.ggml.*`` keys, ``<arch>.`` hyperparameters such as
``rope.freq_base``) are written with that type whatever Python type holds
them, when the value fits it: a token-type list of ints becomes an i32
array, ``rope.freq_base = 10000`` an f32, a numpy int64 count a u32. A
value that does not fit (a negative token id, a float token type) is
refused with a ValueError naming the key. ``Typed`` still names a type
exactly.
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


# The GGUF type llama.cpp's loader reads each key as (it refuses any other:
# "invalid gguf type for tokenizer.ggml.token_type"). Keys of an
# architecture are listed without their "<arch>." prefix.
LLAMA_KEYS = {
    "general.architecture": "string",
    "general.name": "string",
    "tokenizer.ggml.model": "string",
    "tokenizer.ggml.pre": "string",
    "tokenizer.chat_template": "string",
    "tokenizer.ggml.tokens": ("array", "string"),
    "tokenizer.ggml.merges": ("array", "string"),
    "tokenizer.ggml.token_type": ("array", "i32"),
    "tokenizer.ggml.scores": ("array", "f32"),
    "tokenizer.ggml.precompiled_charsmap": ("array", "u8"),
    **{f"tokenizer.ggml.{t}_token_id": "u32" for t in (
        "bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask",
        "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")},
    **{f"tokenizer.ggml.{f}": "bool" for f in (
        "add_bos_token", "add_eos_token", "add_space_prefix", "remove_extra_whitespaces")},
}
ARCH_KEYS = {
    **{k: "u32" for k in (
        "vocab_size", "context_length", "embedding_length", "block_count", "feed_forward_length",
        "expert_count", "expert_used_count", "attention.head_count", "attention.head_count_kv",
        "attention.key_length", "attention.value_length", "rope.dimension_count",
        "rope.scaling.original_context_length")},
    **{k: "f32" for k in (
        "attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base",
        "rope.scale_linear", "rope.scaling.factor")},
    "rope.scaling.type": "string",
    "rope.scaling.finetuned": "bool",
}
_RANGE = {"u8": (0, 1 << 8), "i32": (-(1 << 31), 1 << 31), "u32": (0, 1 << 32)}


def llama_type(key: str, architecture: str | None = None):
    """The type llama.cpp reads `key` as ("u32", ("array", "i32")...), or None."""
    if key in LLAMA_KEYS:
        return LLAMA_KEYS[key]
    arch, _, rest = key.partition(".")
    if rest in ARCH_KEYS and (architecture is None or arch == architecture):
        return ARCH_KEYS[rest]
    return None


def _scalar_as(key: str, x, t: str):
    if isinstance(x, np.generic):
        x = x.item()
    if t == "string":
        if isinstance(x, str):
            return x
    elif t == "bool":
        if isinstance(x, bool):
            return x
    elif t == "f32":
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return float(x)
    elif isinstance(x, int) and not isinstance(x, bool):
        lo, hi = _RANGE[t]
        if lo <= x < hi:
            return x
    raise ValueError(f"metadata '{key}': {x!r} is not a {t}, the type llama.cpp reads this key as "
                     "(it refuses the file otherwise)")


def coerce(key: str, value, architecture: str | None = None):
    """`value` as the Typed llama.cpp requires for `key`, or as given."""
    t = llama_type(key, architecture)
    if t is None or isinstance(value, Typed):
        return value
    if isinstance(t, tuple):
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise ValueError(f"metadata '{key}': llama.cpp reads it as an array of {t[1]}")
        return Typed("array", [_scalar_as(key, x, t[1]) for x in value], element=t[1])
    return Typed(t, _scalar_as(key, value, t))


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
    md = metadata or {}
    arch = md.get("general.architecture")
    out = []
    for k, v in md.items():
        e = pb.MetadataEntry(key=k)
        e.value.CopyFrom(to_proto(coerce(k, v, arch if isinstance(arch, str) else None), pb))
        out.append(e)
    return out


def from_proto(mv) -> Any:
    kind = mv.WhichOneof("value")
    if kind == "array":
        return [from_proto(x) for x in mv.array.items]
    return getattr(mv, kind) if kind else None
