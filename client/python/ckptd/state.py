"""Turning a trainer's state into checkpoint tensors and typed metadata, and back.

What goes where:

* ``model`` (a ``state_dict()`` of torch tensors, or a dict of numpy arrays;
  a ``torch.nn.Module`` is taken as its state_dict; dicts may nest, as
  ``{"model": sd, "ema": sd2}``, and their keys join with ".") ->
  ``step_N.gguf``, one tensor per entry, named as in the state dict. Meta
  and sparse tensors are refused, named.
* ``optimizer`` (a torch optimizer, or its ``state_dict()``) ->
  ``step_N.train.gguf``: tensor ``opt.<i>.<slot>`` for each per-parameter
  state tensor (``exp_avg``, ``exp_avg_sq``, ``step``...), where ``i`` indexes
  the string array ``optimizer.param_names`` (the full parameter names), so
  moments are matched by parameter name on restore, not by position; other
  per-parameter values as ``optimizer.state.<i>.<slot>``; the hyperparameters of
  each param group as ``optimizer.group.<g>.<name>`` and the parameters of each
  group as ``optimizer.group.<g>.params`` (indices into param_names);
  ``optimizer.type`` is the optimizer's class name.
* ``extra`` (numbers, strings, bools, None, lists, tuples, dicts, numpy
  arrays and torch tensors, nested) -> ``training.extra_json`` (the
  structure, JSON; tuples come back as tuples), arrays as tensors
  ``extra.<n>``, and each top-level number or string also as a typed key
  ``training.extra.<key>`` for tools. Anything else is refused at the first
  ``maybe_save`` (due or not), naming its key path.
* ``state`` (named objects with ``state_dict()``/``load_state_dict()``:
  every ``torch.optim.lr_scheduler`` scheduler, ``GradScaler``, ...) -> the
  same encoding under ``training.state.<name>``; a bound method of the
  object itself in its state dict (OneCycleLR's ``anneal_func`` in torch
  1.13) is recorded by name and bound to the restoring object again.
* RNG states of torch, numpy and Python's ``random`` -> tensors ``rng.torch``,
  ``rng.numpy``, ``rng.python`` and keys ``training.rng.*``.
* ``training.type`` = "ckptd-python", ``training.iteration_count`` = the step.
"""

from __future__ import annotations

import collections
import inspect
import json
import math
import random
import weakref
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
    sealed: tuple | None = None  # (shm.SealedArena, offset) when its bytes lie there untouched

    @property
    def nbytes(self) -> int:
        return self.array.nbytes


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def to_array(name: str, value) -> tuple[np.ndarray, str, bool]:
    """A host, C-contiguous numpy view of a tensor; (array, dtype name, 0-d)."""
    if _is_torch(value):
        if value.is_meta:
            raise ValueError(f"tensor '{name}' is a meta tensor: it has no data to save "
                             "(materialize the model first, e.g. to_empty() and load)")
        if value.layout != torch.strided:
            raise ValueError(f"tensor '{name}' is {value.layout} (sparse); save it dense "
                             "(.to_dense()) or its components as separate tensors")
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
    names: list[str] = []
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
    kind = type(optimizer).__name__ if hasattr(optimizer, "param_groups") else "state_dict"
    md["optimizer.type"] = Typed("string", kind)
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


class _Encoder:
    """Values into JSON with their arrays as tensors, refusing (naming the key
    path) anything that would not come back as it was. `owner`: the object
    whose own bound methods may appear (recorded by name, bound again to
    the restoring object)."""

    def __init__(self, tensor_prefix: str, owner=None):
        self.prefix = tensor_prefix
        self.owner = owner
        self.arrays: list[Entry] = []

    def encode(self, v, path: str):
        if _is_torch(v) or isinstance(v, np.ndarray):
            name = f"{self.prefix}{len(self.arrays)}"
            self.arrays.append(make_entry(name, v, train=True))
            return {"__tensor__": name}
        if isinstance(v, collections.Counter) or (
                isinstance(v, dict) and not all(isinstance(k, str) for k in v)):
            # MultiStepLR's milestones: a Counter keyed by step.
            for k in v:
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise ValueError(f"{path}: dict key {k!r} cannot be saved faithfully; keys "
                                     "must be strings or numbers")
            tag = "__counter__" if isinstance(v, collections.Counter) else "__items__"
            return {tag: [[k, self.encode(x, f"{path}[{k!r}]")] for k, x in v.items()]}
        if isinstance(v, dict):
            return {k: self.encode(x, f"{path}.{k}") for k, x in v.items()}
        if isinstance(v, tuple):
            return {"__tuple__": [self.encode(x, f"{path}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.encode(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, np.generic):
            return v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if self.owner is not None and getattr(v, "__self__", None) is self.owner:
            return {"__method__": v.__func__.__name__}
        target = v() if isinstance(v, weakref.WeakMethod) else None
        if self.owner is not None and target is not None and target.__self__ is self.owner:
            return {"__weakmethod__": target.__func__.__name__}  # CyclicLR's _scale_fn_ref
        hint = ("; pass the object itself as state={...} (its own methods are bound again on "
                "restore)" if inspect.ismethod(v) or isinstance(v, weakref.WeakMethod) else
                "; use numbers, strings, bools, None, lists, tuples, dicts and arrays")
        raise ValueError(f"{path}: {type(v).__name__} is not saved: it cannot be restored faithfully{hint}")


def _decode(v, tensors: dict[str, np.ndarray], as_torch: bool, owner=None):
    if isinstance(v, dict):
        if set(v) == {"__tensor__"}:
            arr = np.array(tensors[v["__tensor__"]])
            return torch.from_numpy(arr) if as_torch and torch is not None else arr
        if set(v) == {"__tuple__"}:
            return tuple(_decode(x, tensors, as_torch, owner) for x in v["__tuple__"])
        if set(v) == {"__counter__"}:
            return collections.Counter({k: _decode(x, tensors, as_torch, owner) for k, x in v["__counter__"]})
        if set(v) == {"__items__"}:
            return {k: _decode(x, tensors, as_torch, owner) for k, x in v["__items__"]}
        if set(v) & {"__method__", "__weakmethod__"}:
            name = str(v.get("__method__") or v.get("__weakmethod__"))
            if owner is None or not hasattr(owner, name):
                raise ValueError(f"a saved method '{name}' has no object to bind to "
                                 "(restore it through state={...})")
            method = getattr(owner, name)
            return weakref.WeakMethod(method) if "__weakmethod__" in v else method
        return {k: _decode(x, tensors, as_torch, owner) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x, tensors, as_torch, owner) for x in v]
    return v


def extra_entries(extra: dict, out: list[Entry], md: dict[str, Any]):
    enc = _Encoder("extra.")
    encoded = enc.encode(extra, "extra")
    out.extend(enc.arrays)
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
    return _decode(json.loads(raw), tensors, as_torch)


def state_entries(objects: dict, out: list[Entry], md: dict[str, Any]):
    """Named objects with state_dict(): each one's state dict, faithfully."""
    names = sorted(objects)
    for i, name in enumerate(names):
        obj = objects[name]
        if not hasattr(obj, "state_dict") or not hasattr(obj, "load_state_dict"):
            raise ValueError(f"state.{name}: a {type(obj).__name__} has no state_dict() and "
                             "load_state_dict(); pass such objects (schedulers, GradScaler) or "
                             "put plain values in extra")
        enc = _Encoder(f"st.{i}.", owner=obj)
        encoded = enc.encode(obj.state_dict(), f"state.{name}")
        out.extend(enc.arrays)
        md[f"training.state.{i}.json"] = Typed("string", json.dumps(encoded, allow_nan=True))
        md[f"training.state.{i}.type"] = Typed("string", type(obj).__name__)
    if names:
        md["training.state_names"] = Typed("array", names, element="string")


def restore_state(objects: dict, md: dict[str, Any], tensors: dict[str, np.ndarray]):
    """Loads each named object's saved state dict (load_state_dict)."""
    saved = list(md.get("training.state_names", []))
    for name, obj in objects.items():
        if name not in saved:
            raise KeyError(f"this checkpoint holds no state '{name}' (it holds {saved})")
        i = saved.index(name)
        kind = md.get(f"training.state.{i}.type", "")
        if kind and kind != type(obj).__name__:
            raise ValueError(f"state '{name}' was saved from a {kind}; restoring it into a "
                             f"{type(obj).__name__} would not be faithful")
        obj.load_state_dict(_decode(json.loads(md[f"training.state.{i}.json"]), tensors, True, owner=obj))


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
