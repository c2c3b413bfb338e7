"""Nested state (optimizer state_dicts, trainer and IO state) as JSON plus named tensors.

Nothing is pickled: tensors go to a safetensors file and are referenced from the JSON by
name; tuples, dicts with non-string keys and non-finite floats get small tagged objects.

>>> tensors = {}
>>> state = {"step": 3, "betas": (0.9, 0.99), "state": {0: {"m": torch.ones(2)}}, "lr": float("inf")}
>>> doc = encode(state, tensors)
>>> doc["betas"], doc["lr"]
({'$tuple': [0.9, 0.99]}, {'$float': 'inf'})
>>> doc["state"], list(tensors)
({'$dict': [[0, {'m': {'$tensor': 'state/0/m'}}]]}, ['state/0/m'])
>>> decode(json.loads(json.dumps(doc)), tensors)["state"][0]["m"]
tensor([1., 1.])
"""
import json  # noqa: F401  (doctest namespace)
import math
from typing import Any, Dict

import torch


def encode(obj: Any, tensors: Dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-compatible form of `obj`; its tensors are added to `tensors` under path-like names."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, torch.Tensor):
        name, n = path or "tensor", 1
        while name in tensors:
            name, n = f"{path}#{n}", n + 1
        tensors[name] = obj.detach()
        return {"$tensor": name}
    if hasattr(obj, "dtype") and hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return encode(obj.item(), tensors, path)  # numpy scalars
    if isinstance(obj, tuple):
        return {"$tuple": [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        child = (lambda k: f"{path}/{k}" if path else str(k))
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: encode(v, tensors, child(k)) for k, v in obj.items()}
        return {"$dict": [[_key(k, path), encode(v, tensors, child(k))] for k, v in obj.items()]}
    raise TypeError(f"{path or 'state'}: cannot store a {type(obj).__name__} in a checkpoint; use JSON values "
                    "(None, bool, int, float, str), tensors, lists, tuples and dicts")


def _key(k: Any, path: str) -> Any:
    if k is None or isinstance(k, (bool, int, str)):
        return k
    if isinstance(k, float):
        return encode(k, {}, path)
    if isinstance(k, tuple):
        return {"$tuple": [_key(v, path) for v in k]}
    raise TypeError(f"{path or 'state'}: dict key {k!r} of type {type(k).__name__} cannot be stored")


def decode(doc: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode`."""
    if isinstance(doc, list):
        return [decode(v, tensors) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if len(doc) == 1:
        (tag, value), = doc.items()
        if tag == "$tensor":
            if value not in tensors:
                raise KeyError(f"state refers to tensor {value!r}, which the checkpoint's tensor file lacks")
            return tensors[value]
        if tag == "$tuple":
            return tuple(decode(v, tensors) for v in value)
        if tag == "$dict":
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in value}
        if tag == "$float":
            return float(value)
    return {k: decode(v, tensors) for k, v in doc.items()}


def _hashable(k: Any) -> Any:
    return tuple(_hashable(v) for v in k) if isinstance(k, (list, tuple)) else k
