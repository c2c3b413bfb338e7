"""Type and range checks and strict construction for config dataclasses (YAML/JSON input names the bad key).

A field states its rule once, next to its default: its annotation gives the type and
`bounded(...)` the range of its numbers (of each number inside a list or a mapping). The class
calls `check_types(self, section)` first thing in `__post_init__`; a wrong value raises naming
`section.field`, the rule and the value. Integers are never bools or floats; floats are finite
(no NaN, no +/-inf unless the rule says `allow_inf`).

>>> from dataclasses import dataclass
>>> @dataclass
... class C:
...     n: int = bounded(1, ge=1)
...     every: Optional[int] = bounded(None, ge=1)
...     rate: float = bounded(0.5, gt=0, le=1)
...     name: Optional[str] = None
...     def __post_init__(self):
...         check_types(self, "model")
>>> from_mapping(C, {"n": 2}).n
2
>>> from_mapping(C, {"m": 2}, "model")
Traceback (most recent call last):
...
ValueError: unknown key(s) ['m'] in model (known: ['every', 'n', 'name', 'rate'])
>>> C(n="2")
Traceback (most recent call last):
...
TypeError: model.n must be an integer >= 1, got str ('2')
>>> C(every=-5)
Traceback (most recent call last):
...
ValueError: model.every must be an integer >= 1 or null, got -5
>>> C(rate=float("nan"))
Traceback (most recent call last):
...
ValueError: model.rate must be a finite number in (0, 1], got nan
"""
import collections.abc
import dataclasses
import math
import numbers
import typing
from dataclasses import MISSING
from typing import Any, Mapping, Optional, Type, TypeVar, Union

T = TypeVar("T")
RULE = "recis.rule"  # the key of a field's Range in its metadata

__all__ = ["Range", "bounded", "rule_of", "check_types", "check_value", "check_fields", "from_mapping", "is_integer", "is_real"]


def _show_number(x) -> str:
    """2**63 and friends as powers of two, other numbers as Python writes them."""
    if isinstance(x, int) and abs(x) >= 1 << 32 and abs(x) & (abs(x) - 1) == 0:
        return f"{'-' if x < 0 else ''}2**{abs(x).bit_length() - 1}"
    return repr(x)


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds on a number: ge (>=), gt (>), le (<=), lt (<); None leaves a side open.
    `allow_inf` lets a float be +/-inf (NaN never passes)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    allow_inf: bool = False

    def __post_init__(self):
        if self.ge is not None and self.gt is not None or self.le is not None and self.lt is not None:
            raise ValueError("a Range takes at most one lower (ge, gt) and one upper (le, lt) bound")

    @property
    def low(self):
        return self.ge if self.ge is not None else self.gt

    @property
    def high(self):
        return self.le if self.le is not None else self.lt

    def admits(self, x) -> bool:
        """Whether the number x lies in the range (NaN never does)."""
        if isinstance(x, float) and (math.isnan(x) or (math.isinf(x) and not self.allow_inf)):
            return False
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def describe(self) -> str:
        """'>= 1', '> 0', 'in [0, 1)', ... ('' for no bounds).

        >>> Range(ge=0, lt=1).describe(), Range(gt=0).describe(), Range(ge=-2**63, lt=2**64).describe()
        ('in [0, 1)', '> 0', 'in [-2**63, 2**64)')
        """
        low, high = self.low, self.high
        if low is not None and high is not None:
            return (f"in {'[' if self.ge is not None else '('}{_show_number(low)}, {_show_number(high)}"
                    f"{']' if self.le is not None else ')'}")
        if low is not None:
            return f"{'>=' if self.ge is not None else '>'} {_show_number(low)}"
        if high is not None:
            return f"{'<=' if self.le is not None else '<'} {_show_number(high)}"
        return ""


_ANY = Range()


def bounded(default=MISSING, *, default_factory=MISSING, ge=None, gt=None, le=None, lt=None,
            allow_inf: bool = False, **field_options):
    """A dataclass field whose numbers must lie in a range (enforced by `check_types`). With no
    bounds it states that any finite number is valid (every numeric config field says which)."""
    metadata = dict(field_options.pop("metadata", None) or {})
    metadata[RULE] = Range(ge, gt, le, lt, allow_inf)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata, **field_options)


def rule_of(f: dataclasses.Field) -> Optional[Range]:
    """The Range a field declares with `bounded`, or None."""
    return f.metadata.get(RULE)


def is_integer(value) -> bool:
    """An int (numpy's too), never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int or a float (numpy's too), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# --- what a value must be, in words ---------------------------------------------------------------
_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans"), type(None): ("null", "nulls")}
_SEQUENCES = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def _describe(tp, rule: Optional[Range], plural: bool = False) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        members = typing.get_args(tp)
        parts = [_describe(m, rule, plural) for m in members if m is not type(None)
                 and not (m is int and float in members)]  # a number includes the integers
        return " or ".join(parts) + (" or null" if type(None) in members else "")
    if origin in _SEQUENCES or tp in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = _describe(args[0], rule, True) if len(set(args)) == 1 else "values"
        return f"{'lists' if plural else 'a list'} of {inner}"
    if origin in _MAPPINGS or tp is dict:
        args = typing.get_args(tp)
        inner = f"{_describe(args[0], None, True)} to {_describe(args[1], rule, True)}" if args else "names to values"
        return f"{'mappings' if plural else 'a mapping'} of {inner}"
    if tp in _NOUNS:
        noun = _NOUNS[tp][plural]
        if tp in (int, float):
            rule = rule or _ANY
            if tp is float and not rule.allow_inf:
                noun = ("finite " if plural else "a finite ") + noun.split(" ")[-1]
            text = rule.describe()
            return f"{noun} {text}" if text else noun
        return noun
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return name if plural else f"a {name}"


def _show(value, type_error: bool) -> str:
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{type(value).__name__} ({text})" if type_error else text


# --- the check --------------------------------------------------------------------------------------
def _shallow(tp, value) -> bool:
    """Whether value has the outer type of tp (elements are checked separately)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if origin is Union:
        return any(_shallow(m, value) for m in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return is_integer(value)
    if tp is float:
        return is_real(value)
    if origin in _SEQUENCES or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in _MAPPINGS or tp is dict:
        return isinstance(value, Mapping)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # annotations we do not model are left to the class's own checks


def _find(tp, value, rule: Optional[Range], path: str, top: bool):
    """The first problem as (path, the type to describe, is it a type error, the bad value), or None."""
    origin = typing.get_origin(tp)
    if origin is Union:
        for m in typing.get_args(tp):
            if _shallow(m, value):
                bad = _find(m, value, rule, path, top)
                return None if bad is None else (bad[0], tp if bad[0] == path else bad[1], bad[2], bad[3])
        return path, tp, True, value
    if not _shallow(tp, value):
        # classes inside containers are left to the class (e.g. raw items it parses itself)
        if not top and isinstance(tp, type) and tp not in _NOUNS:
            return None
        return path, tp, True, value
    if tp is int or tp is float:
        if not (rule or _ANY).admits(value):
            return path, tp, False, value
        return None
    if origin in _SEQUENCES:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis or origin is not tuple:
            items = [(args[0] if args else Any, v) for v in value]
        elif len(value) != len(args):
            return path, tp, False, value
        else:
            items = list(zip(args, value))
        for i, (t, v) in enumerate(items):
            bad = _find(t, v, rule, f"{path}[{i}]", False)
            if bad is not None:
                return bad
        return None
    if origin in _MAPPINGS:
        key_t, value_t = typing.get_args(tp) or (Any, Any)
        for k, v in value.items():
            bad = _find(key_t, k, None, f"{path} key {k!r}", False) or _find(value_t, v, rule, f"{path}.{k}", False)
            if bad is not None:
                return bad
    return None


def check_value(path: str, value, tp=Any, rule: Optional[Range] = None, error: Optional[Type[Exception]] = None):
    """Raises when `value` is not of type `tp` (TypeError) or a number in it breaks `rule`
    (ValueError); `error` replaces both classes. The message names `path`.

    >>> check_value("optim.dense.lr", "fast", float, Range(ge=0))
    Traceback (most recent call last):
    ...
    TypeError: optim.dense.lr must be a finite number >= 0, got str ('fast')
    >>> check_value("distributed.expected_rows", {"user": -3}, typing.Dict[str, int], Range(ge=0))
    Traceback (most recent call last):
    ...
    ValueError: distributed.expected_rows.user must be an integer >= 0, got -3
    """
    bad = _find(tp, value, rule, path, True)
    if bad is None:
        return
    where, what, type_error, shown = bad
    raise (error or (TypeError if type_error else ValueError))(
        f"{where} must be {_describe(what, rule)}, got {_show(shown, type_error)}")


def check_types(obj, where: str, *, sep: str = ".", error: Optional[Type[Exception]] = None) -> None:
    """Checks every field of a dataclass against its annotation and its `bounded` rule; raises
    naming `where{sep}field` (TypeError for a wrong type, ValueError for a number out of range;
    `error` replaces both)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{where}{sep}{f.name}" if where else f.name
        check_value(path, getattr(obj, f.name), hints.get(f.name, Any), rule_of(f), error)


def check_fields(cls, values: Mapping[str, Any], where: str) -> None:
    """Checks the given values of some of a dataclass's fields (before constructing it), naming
    `where.key`; keys that are not fields are left to the caller."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values:
            check_value(f"{where}.{f.name}", values[f.name], hints.get(f.name, Any), rule_of(f))


def from_mapping(cls: Type[T], values: Optional[Mapping[str, Any]], where: Optional[str] = None) -> T:
    """cls(**values), refusing unknown keys and mistyped values with the key named."""
    where = where or cls.__name__
    if values is not None and not isinstance(values, Mapping):
        raise TypeError(f"{where} must be a mapping of options, got {type(values).__name__} ({values!r})")
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where} (known: {sorted(known)})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}")
    check_fields(cls, values, where)  # named as the caller spells them, before the class's own checks
    obj = cls(**values)
    check_types(obj, where)
    return obj
