"""Optimizers by name: the one table of the optimizers a job can name.

Two kinds: ``sparse`` optimizers take recis hash tables (`recis.optim.SparseOptimizer`), ``dense``
ones take torch parameters or param groups. The built-ins are derived from their classes: the
sparse ones of `recis.optim.optimizers` by their `kind` (the vocabulary of the C++ kernels,
`recis.vocabulary.OPTIMIZERS`), the dense ones from `torch.optim` by lower-cased class name (without
LBFGS, whose step needs a closure, and SparseAdam, which needs sparse gradients). Plugins add
theirs through the entry-point group ``recis.optimizers``::

    [project.entry-points."recis.optimizers"]
    bogd_ip = "recis_online.oco.optim:BOGDIP"

An entry point names a `torch.optim.Optimizer` subclass; its kind is its class attribute
``optimizer_kind = "sparse" | "dense"``, by default ``sparse`` for a `SparseOptimizer` subclass and
``dense`` otherwise. `register_optimizer` adds one in this process (tests, notebooks). A plugin's
name may not repeat a built-in of the same kind.

>>> sorted(available_optimizers("sparse"))
['adagrad', 'adam', 'adamw', 'ftrl', 'rowwise_adagrad', 'sgd']
>>> load_optimizer("rmsprop", "dense")
<class 'torch.optim.rmsprop.RMSprop'>
>>> available_optimizers()["adam"]
{'sparse': 'recis.optim.optimizers:SparseAdam', 'dense': 'torch.optim.adam:Adam'}
>>> class Halve(torch.optim.SGD):
...     def __init__(self, params, lr=0.5):
...         super().__init__(params, lr=lr)
>>> register_optimizer("halve", Halve)
>>> load_optimizer("halve", "dense") is Halve
True
>>> load_optimizer("halve", "sparse")
Traceback (most recent call last):
...
recis.optim.registry.OptimizerNotFoundError: sparse optimizer name must be one of ['adagrad', 'adam', 'adamw', 'ftrl', 'rowwise_adagrad', 'sgd'] (built-in, registered, or installed in entry-point group 'recis.optimizers'), got 'halve' (a dense optimizer)
>>> unregister_optimizer("halve")
"""
from importlib import metadata
from typing import Dict, Optional, Type, Union

import torch

from recis.optim import optimizers as _sparse_module
from recis.optim.sparse_optimizer import SparseOptimizer
from recis.registry import Registry, target_of
from recis.vocabulary import OPTIMIZERS

__all__ = ["GROUP", "KINDS", "OptimizerNotFoundError", "builtin_optimizers", "optimizer_kind", "available_optimizers",
           "load_optimizer", "register_optimizer", "unregister_optimizer"]

GROUP = "recis.optimizers"
KINDS = ("sparse", "dense")
# torch.optim classes a Trainer cannot drive: LBFGS's step needs a closure; SparseAdam needs sparse gradients.
_NOT_DENSE = ("LBFGS", "SparseAdam")


class OptimizerNotFoundError(ValueError, LookupError):
    """No optimizer of that name and kind is registered (a ValueError: it is a config's value)."""


def _sparse_builtins() -> Dict[str, type]:
    out = {}
    for cls in vars(_sparse_module).values():
        if isinstance(cls, type) and issubclass(cls, SparseOptimizer) and cls.kind:
            if cls.kind not in OPTIMIZERS:
                raise AssertionError(f"{cls.__name__}.kind {cls.kind!r} is not a kernel kind {sorted(OPTIMIZERS)}")
            out[cls.kind] = cls
    return out


def _dense_builtins() -> Dict[str, type]:
    out = {}
    for attr in torch.optim.__all__:
        cls = getattr(torch.optim, attr, None)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer \
                and attr not in _NOT_DENSE:
            out[attr.lower()] = cls
    return out


_BUILTIN: Dict[str, Dict[str, type]] = {"sparse": _sparse_builtins(), "dense": _dense_builtins()}


def builtin_optimizers(kind: str) -> Dict[str, type]:
    """name -> class of the built-in optimizers of `kind` (a copy)."""
    _check_kind(kind)
    return dict(_BUILTIN[kind])


def _check_kind(kind) -> None:
    if kind not in KINDS:
        raise ValueError(f"an optimizer kind must be one of {list(KINDS)}, got {kind!r}")


def optimizer_kind(cls) -> str:
    """'sparse' or 'dense': the class's `optimizer_kind`, else sparse for a SparseOptimizer
    subclass and dense for any other torch.optim.Optimizer subclass."""
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"an optimizer must be a torch.optim.Optimizer subclass, got {cls!r}")
    default = "sparse" if issubclass(cls, SparseOptimizer) else "dense"
    kind = getattr(cls, "optimizer_kind", default)
    if kind not in KINDS:
        raise TypeError(f"{cls.__qualname__}.optimizer_kind must be one of {list(KINDS)}, got {kind!r}")
    if issubclass(cls, SparseOptimizer) and kind != "sparse":
        raise TypeError(f"{cls.__qualname__} is a recis.optim.SparseOptimizer (it takes hash tables), so its "
                        f"optimizer_kind must be 'sparse', got {kind!r}")
    return kind


def _check(name: str, cls, source: Optional[str]) -> None:
    where = f"entry point {name!r} ({source})" if source is not None else f"optimizer {name!r}"
    try:
        kind = optimizer_kind(cls)
    except TypeError as e:
        raise TypeError(f"{where}: {e}") from None
    if name in _BUILTIN[kind]:
        raise ValueError(f"{where} would replace the built-in {kind} optimizer {name!r} "
                         f"({target_of(_BUILTIN[kind][name])}); choose another name")


_REGISTRY = Registry(GROUP, "optimizer", OptimizerNotFoundError, _check)


def _extensions() -> Dict[str, Union[type, metadata.EntryPoint]]:
    """Entry points, shadowed by in-process registrations of the same name."""
    out: Dict[str, Union[type, metadata.EntryPoint]] = dict(_REGISTRY.entry_points())
    out.update(_REGISTRY.local)
    return out


def _resolve(obj) -> type:
    return _REGISTRY.load_entry_point(obj) if isinstance(obj, metadata.EntryPoint) else obj


def available_optimizers(kind: Optional[str] = None) -> Union[Dict[str, str], Dict[str, Dict[str, str]]]:
    """With `kind`: name -> 'module:attribute' of every optimizer of that kind (built-in, installed,
    registered; the installed ones are imported to learn their kind). Without: name -> {kind:
    'module:attribute'}, as a name may be both a sparse and a dense optimizer (adam)."""
    kinds = KINDS if kind is None else (kind,)
    for k in kinds:
        _check_kind(k)
    table: Dict[str, Dict[str, str]] = {}
    for k in kinds:
        for name, cls in _BUILTIN[k].items():
            table.setdefault(name, {})[k] = target_of(cls)
    for name, obj in _extensions().items():
        cls = _resolve(obj)
        k = optimizer_kind(cls)
        if k in kinds:
            table.setdefault(name, {})[k] = obj.value if isinstance(obj, metadata.EntryPoint) else target_of(cls)
    if kind is not None:
        return {name: targets[kind] for name, targets in sorted(table.items())}
    return dict(sorted(table.items()))


def load_optimizer(name: str, kind: str, where: Optional[str] = None) -> Type[torch.optim.Optimizer]:
    """The optimizer class of `kind` named `name`; an unknown name is an OptimizerNotFoundError
    that lists the names of that kind (`where`, e.g. 'optim.dense', names the config key)."""
    _check_kind(kind)
    if isinstance(name, str) and name in _BUILTIN[kind]:
        return _BUILTIN[kind][name]
    other = None
    extensions = _extensions() if isinstance(name, str) else {}
    if name in extensions:
        cls = _resolve(extensions[name])
        found = optimizer_kind(cls)
        if found == kind:
            return cls
        other = found
    elif isinstance(name, str):
        other = next((k for k in KINDS if name in _BUILTIN[k]), None)
    hint = f" (a {other} optimizer)" if other else ""
    raise OptimizerNotFoundError(
        f"{where + '.name' if where else kind + ' optimizer name'} must be one of "
        f"{sorted(available_optimizers(kind))} (built-in, registered, or installed in entry-point group {GROUP!r}), "
        f"got {name!r}{hint}")


def register_optimizer(name: str, cls: Type[torch.optim.Optimizer], kind: Optional[str] = None) -> None:
    """Registers `cls` under `name` for this process (an installed entry point of that name is
    shadowed; a built-in of the same kind is not replaced). `kind`, when given, must be the
    class's own (`optimizer_kind`)."""
    if kind is not None:
        _check_kind(kind)
        if optimizer_kind(cls) != kind:
            raise ValueError(f"optimizer {name!r}: {getattr(cls, '__qualname__', cls)} is a {optimizer_kind(cls)} "
                             f"optimizer, registered as {kind!r} (set its class attribute optimizer_kind)")
    _REGISTRY.register(name, cls)


def unregister_optimizer(name: str) -> None:
    """Drops an in-process registration (the built-ins and installed entry points stay)."""
    _REGISTRY.unregister(name)
