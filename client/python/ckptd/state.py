"""Turning a trainer's state into checkpoint tensors and typed metadata, and back.

What goes where:

* ``model`` (a ``state_dict()`` of torch tensors, or a dict of numpy arrays;
  a ``torch.nn.Module`` is taken as its state_dict) -> ``step_N.gguf``, one
  tensor per entry, named as in the state dict.
* ``optimizer`` (a torch optimizer, or its ``state_dict()``) ->
  ``step_N.train.gguf``: tensor ``opt.<i>.<slot>`` for each per-parameter
  state tensor (``exp_avg``, ``exp_avg_sq``, ``step``...), where ``i`` indexes
  the string array ``optimizer.param_names`` (the full parameter names), so
  moments are matched by parameter name on restore, not by position; other
  per-parameter values as ``optimizer.state.<i>.<slot>``; the hyperparameters of
  each param group as ``optimizer.group.<g>.<name>`` and the parameters of each
  group as ``optimizer.group.<g>.params`` (indices into param_names);
  ``optimizer.type`` is the optimizer's class name.
* ``extra`` (numbers, strings, bools, None, lists, dicts, numpy arrays and
  torch tensors) -> ``training.extra_json`` (the structure, JSON; tuples come
  back as lists), arrays as tensors ``extra.<n>``, and each top-level
  number or string also as a typed key ``training.extra.<key>`` for tools.
* RNG states of torch, numpy and Python's ``random`` -> tensors ``rng.torch``,
  ``rng.numpy``, ``rng.python`` and keys ``training.rng.*``.
* ``training.type`` = "ckptd-python", ``training.iteration_count`` = the step.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import gguf
from .values import Typed

try:  # torch is optional
    import torch
except ImportError:  # pragma: no cover - exercised where torch is absent
    torch = None


@dataclass
class Entry:
    """One tensor to save: its name, file, GGUF type/dims and contiguous bytes."""

    name: str
    train: bool
    ggml_type: int
    ne: list[int]
    array: np.ndarray  # C-contiguous, bytes exactly as they go to the file
    dtype_hint: str = ""  # recorded when the dtype does not follow from the GGUF type
    zero_d: bool = False

    @property
    def nbytes(self) -> int:
        return self.array.nbytes


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def to_array(name: str, value) -> tuple[np.ndarray, str, bool]:
    """A host, C-contiguous numpy view of a tensor; (array, dtype name, 0-d)."""
    if _is_torch(value):
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if not t.is_contiguous():
            t = t.contiguous()
        zero_d = t.dim() == 0
        if zero_d:
            t = t.reshape(1)
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16), "bfloat16", zero_d
        if t.dtype == torch.bool:
            return t.view(torch.int8).numpy().view(np.bool_), "bool", zero_d
        arr = t.numpy()
        return arr, arr.dtype.name, zero_d
    arr = np.asarray(value)
    zero_d = arr.ndim == 0
    arr = np.ascontiguousarray(arr.reshape(1) if zero_d else arr)
    return arr, arr.dtype.name, zero_d


def make_entry(name: str, value, train: bool, name_map: Callable[[str], str] | None = None) -> Entry:
    if name_map is not None:
        name = name_map(name)
    if len(name.encode()) > gguf.MAX_NAME_BYTES:
        raise ValueError(
            f"tensor name '{name}' is {len(name.encode())} bytes; GGUF allows "
            f"{gguf.MAX_NAME_BYTES}: pass name_map= to shorten it"
        )
    arr, dtype, zero_d = to_array(name, value)
    if dtype == "bfloat16":
        ggml, hint = gguf.BF16, False
    elif dtype in gguf.NUMPY_TO_GGUF:
        ggml, hint = gguf.NUMPY_TO_GGUF[dtype]
    else:
        raise ValueError(
            f"tensor '{name}' has dtype {dtype}, which GGUF cannot hold; supported: "
            "float32, float16, bfloat16, float64, int8, uint8, int16, int32, uint32, int64, bool"
        )
    if arr.ndim > gguf.MAX_DIMS:
        raise ValueError(f"tensor '{name}' has {arr.ndim} dims; GGUF allows at most {gguf.MAX_DIMS}")
    if arr.size == 0:
        raise ValueError(f"tensor '{name}' has shape {arr.shape}: GGUF cannot hold an empty tensor")
    return Entry(name, train, ggml, list(reversed(arr.shape)), arr, dtype if hint else "", zero_d)


# --- optimizer -------------------------------------------------------------


def _param_names(model, optimizer) -> list[str] | None:
    """Parameter names in the optimizer's flat index order, when knowable."""
    if model is None or torch is None or not hasattr(optimizer, "param_groups"):
        return None
    if not isinstance(model, torch.nn.Module):
        return None
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = []
    for g in optimizer.param_groups:
        for p in g["params"]:
            names.append(by_id.get(id(p), f"param.{len(names)}"))
    return names


def _hyper_value(key: str, v):
    if isinstance(v, bool):
        return Typed("bool", v)
    if isinstance(v, int):
        return Typed("i64", v)
    if isinstance(v, float):
        return Typed("f64", v)
    if isinstance(v, str):
        return Typed("string", v)
    if isinstance(v, (tuple, list)) and v and all(isinstance(x, (int, float)) for x in v):
        return Typed("array", [float(x) for x in v], element="f64")
    return None  # None, callables...: not saved


def optimizer_entries(optimizer, model, out: list[Entry], md: dict[str, Any]):
    sd = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    names = _param_names(model, optimizer)
    n_params = sum(len(g["params"]) for g in sd["param_groups"])
    if names is None:
        names = [f"param.{i}" for i in range(n_params)]
    # state_dict() numbers parameters 0..n-1 across groups, in group order.
    index_of = {}
    k = 0
    for g in sd["param_groups"]:
        for p in g["params"]:
            index_of[p] = k
            k += 1
    md["optimizer.type"] = Typed("string", type(optimizer).__name__ if hasattr(optimizer, "param_groups") else "state_dict")
    md["optimizer.param_names"] = Typed("array", names, element="string")
    for gi, g in enumerate(sd["param_groups"]):
        md[f"optimizer.group.{gi}.params"] = Typed("array", [index_of[p] for p in g["params"]], element="u32")
        for key, v in g.items():
            if key == "params":
                continue
            tv = _hyper_value(key, v)
            if tv is not None:
                md[f"optimizer.group.{gi}.{key}"] = tv
    for p, slots in sd["state"].items():
        i = index_of.get(p, p)
        for slot, v in slots.items():
            if _is_torch(v) or isinstance(v, np.ndarray):
                out.append(make_entry(f"opt.{i}.{slot}", v, train=True))
            else:
                tv = _hyper_value(slot, v)
                if tv is not None:
                    md[f"optimizer.state.{i}.{slot}"] = tv


def restore_optimizer(optimizer, model, tensors: dict[str, np.ndarray], md: dict[str, Any]):
    """Loads moments by parameter name into `optimizer` (load_state_dict)."""
    saved_names = md.get("optimizer.param_names")
    if saved_names is None:
        raise ValueError("this checkpoint holds no optimizer state (no optimizer.param_names)")
    current = _param_names(model, optimizer) or [f"param.{i}" for i in range(len(saved_names))]
    saved_index = {n: i for i, n in enumerate(saved_names)}
    if not set(current) & set(saved_index):
        if all(n.startswith("param.") for n in saved_names) and len(saved_names) == len(current):
            # Saved without a module (positional names): match by position.
            saved_index = {n: i for i, n in enumerate(current)}
        else:
            raise ValueError(
                "no parameter of the optimizer matches a saved one by name (saved: "
                f"{saved_names[:3]}..., now: {current[:3]}...): pass the same model to restore()")
    cur_sd = optimizer.state_dict()
    state = {}
    for cur_i, name in enumerate(current):
        si = saved_index.get(name)
        if si is None:
            continue
        slots = {}
        prefix = f"opt.{si}."
        for tname, arr in tensors.items():
            if tname.startswith(prefix):
                slots[tname[len(prefix) :]] = arr
        mprefix = f"optimizer.state.{si}."
        for key, v in md.items():
            if key.startswith(mprefix):
                slots[key[len(mprefix) :]] = v
        if slots:
            state[cur_i] = slots
    groups = []
    for gi, g in enumerate(cur_sd["param_groups"]):
        ng = dict(g)
        for key in g:
            if key == "params":
                continue
            v = md.get(f"optimizer.group.{gi}.{key}")
            if v is None:
                continue
            ng[key] = tuple(v) if isinstance(v, list) else v  # betas are tuples
        groups.append(ng)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --- RNG ---------------------------------------------------------------------


def rng_entries(out: list[Entry], md: dict[str, Any]):
    if torch is not None:
        out.append(make_entry("rng.torch", torch.get_rng_state(), train=True))
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out.append(make_entry("rng.numpy", np.asarray(keys, dtype=np.uint32), train=True))
    md["training.rng.numpy.algorithm"] = Typed("string", name)
    md["training.rng.numpy.pos"] = Typed("i64", int(pos))
    md["training.rng.numpy.has_gauss"] = Typed("i64", int(has_gauss))
    md["training.rng.numpy.cached_gaussian"] = Typed("f64", float(cached))
    version, internal, gauss_next = random.getstate()
    out.append(make_entry("rng.python", np.asarray(internal, dtype=np.int64), train=True))
    md["training.rng.python.version"] = Typed("i64", version)
    if gauss_next is not None:
        md["training.rng.python.gauss_next"] = Typed("f64", gauss_next)


def restore_rng(tensors: dict[str, np.ndarray], md: dict[str, Any]):
    if torch is not None and "rng.torch" in tensors:
        torch.set_rng_state(torch.from_numpy(np.array(tensors["rng.torch"], dtype=np.uint8)))
    if "rng.numpy" in tensors:
        np.random.set_state(
            (
                md.get("training.rng.numpy.algorithm", "MT19937"),
                np.array(tensors["rng.numpy"], dtype=np.uint32),
                int(md.get("training.rng.numpy.pos", 624)),
                int(md.get("training.rng.numpy.has_gauss", 0)),
                float(md.get("training.rng.numpy.cached_gaussian", 0.0)),
            )
        )
    if "rng.python" in tensors:
        internal = tuple(int(x) for x in tensors["rng.python"])
        random.setstate(
            (
                int(md.get("training.rng.python.version", 3)),
                internal,
                md.get("training.rng.python.gauss_next"),
            )
        )


# --- extra -------------------------------------------------------------------


def extra_entries(extra: dict, out: list[Entry], md: dict[str, Any]):
    arrays: list[Entry] = []

    def encode(v):
        if _is_torch(v) or isinstance(v, np.ndarray):
            name = f"extra.{len(arrays)}"
            arrays.append(make_entry(name, v, train=True))
            return {"__tensor__": name}
        if isinstance(v, dict):
            for k in v:
                if not isinstance(k, str):
                    raise ValueError(f"extra: dict keys must be strings, got {k!r}")
            return {k: encode(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [encode(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise ValueError(
            f"extra: {type(v).__name__} is not saved; use numbers, strings, bools, None, "
            "lists, dicts and arrays"
        )

    encoded = encode(extra)
    out.extend(arrays)
    md["training.extra_json"] = Typed("string", json.dumps(encoded, allow_nan=True))
    for k, v in extra.items():
        if isinstance(v, bool):
            md[f"training.extra.{k}"] = Typed("bool", v)
        elif isinstance(v, int) and -(1 << 63) <= v < (1 << 63):
            md[f"training.extra.{k}"] = Typed("i64", v)
        elif isinstance(v, float):
            md[f"training.extra.{k}"] = Typed("f64", v)
        elif isinstance(v, str):
            md[f"training.extra.{k}"] = Typed("string", v)


def decode_extra(md: dict[str, Any], tensors: dict[str, np.ndarray], as_torch: bool) -> dict:
    raw = md.get("training.extra_json")
    if raw is None:
        return {}

    def decode(v):
        if isinstance(v, dict):
            if set(v) == {"__tensor__"}:
                arr = np.array(tensors[v["__tensor__"]])
                return torch.from_numpy(arr) if as_torch and torch is not None else arr
            return {k: decode(x) for k, x in v.items()}
        if isinstance(v, list):
            return [decode(x) for x in v]
        return v

    return decode(json.loads(raw))


def finite_metrics(metrics: dict | None) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        if _is_torch(v):
            v = v.item()
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"metric '{k}' is {f}; metrics must be finite")
        out[k] = f
    return out
