"""Type checks and strict construction for config dataclasses (YAML/JSON input names the bad key).

>>> from dataclasses import dataclass
>>> @dataclass
... class C:
...     n: int = 1
...     name: Optional[str] = None
...     def __post_init__(self):
...         check_types(self, "model")
>>> from_mapping(C, {"n": 2}).n
2
>>> from_mapping(C, {"m": 2}, "model")
Traceback (most recent call last):
...
ValueError: unknown key(s) ['m'] in model (known: ['n', 'name'])
>>> check_types(C(n="2"), "model")
Traceback (most recent call last):
...
TypeError: model.n must be int, got str ('2')
"""
import dataclasses
import typing
from typing import Any, Mapping, Optional, Type, TypeVar, Union

T = TypeVar("T")


def _accepts(tp, value) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if origin is Union:
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, typing.Mapping) or tp is dict:
        return isinstance(value, Mapping)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # annotations we do not model are left to the class's own checks


def _name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_types(obj, where: str) -> None:
    """Raises TypeError naming `where.field` when a field's value does not match its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _accepts(hints.get(f.name, Any), value):
            raise TypeError(f"{where}.{f.name} must be {_name(hints[f.name])}, got {type(value).__name__} ({value!r})")


def from_mapping(cls: Type[T], values: Optional[Mapping[str, Any]], where: Optional[str] = None) -> T:
    """cls(**values), refusing unknown keys and mistyped values with the key named."""
    where = where or cls.__name__
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where} (known: {sorted(known)})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}")
    obj = cls(**values)  # classes call check_types first thing in __post_init__
    check_types(obj, where)
    return obj
