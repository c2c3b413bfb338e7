"""The feature ops: validated frozen dataclasses, one per op, and their config form.

Each op knows which value domains it reads ('str', 'int', 'float', 'null' for an all-null
column) and which domain it produces; the engine runs the kernels.

>>> op_from_dict({"op": "mod", "n": 1000})
Mod(n=1000)
>>> Mod(1000).to_dict()
{'op': 'mod', 'n': 1000}
>>> op_from_dict({"op": "mod", "m": 3})
Traceback (most recent call last):
...
recis.features.ops.FeatureConfigError: op 'mod': unknown key 'm' (allowed: n)
"""
from dataclasses import MISSING, dataclass, fields
from typing import ClassVar, Dict, FrozenSet, Optional, Tuple, Type, Union

from recis.config_utils import bounded, check_types

__all__ = ["FeatureConfigError", "Op", "FillMissing", "Hash", "MultiHash", "Mod", "Bucketize", "Truncate", "Log1p",
           "Normalize", "Clip", "OPS", "op_from_dict"]

U64 = 2 ** 64
ANY = frozenset({"str", "int", "float", "null"})
NUMERIC = frozenset({"int", "float", "null"})


class FeatureConfigError(ValueError):
    """A feature spec or config is invalid; the message names the feature, op and key."""


def _check(cond: bool, op: str, msg: str):
    if not cond:
        raise FeatureConfigError(f"op '{op}': {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Op:
    """Base class. `name` is the op's config name; `kinds` the feature kinds that may use it."""

    name: ClassVar[str] = ""
    kinds: ClassVar[FrozenSet[str]] = frozenset()
    reads: ClassVar[FrozenSet[str]] = ANY
    structural: ClassVar[bool] = False  # changes the rows' lengths: needs materialized ids

    def __post_init__(self):
        check_types(self, f"op '{self.name}'", sep=": ", error=FeatureConfigError)
        self._validate()

    def _validate(self):
        """What the field annotations and their `bounded` rules do not say."""

    def out_domain(self, domain: str) -> str:
        return domain

    def to_dict(self) -> Dict:
        out = {"op": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.default is MISSING or value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class FillMissing(Op):
    """Null values become `value` (a string, int or float matching the column)."""

    value: Union[str, int, float] = bounded(allow_inf=True)
    name: ClassVar[str] = "fill_missing"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse", "dense", "label"})

    def out_domain(self, domain: str) -> str:
        if domain != "null":
            return domain
        return "str" if isinstance(self.value, str) else "int" if _is_int(self.value) else "float"


@dataclass(frozen=True)
class Hash(Op):
    """XXH64 of each string (its bytes) or integer (8 little-endian bytes), seeded: int64 ids."""

    seed: int = bounded(0, ge=-(2 ** 63), lt=U64)
    name: ClassVar[str] = "hash"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse"})
    reads: ClassVar[FrozenSet[str]] = frozenset({"str", "int", "null"})

    def out_domain(self, domain: str) -> str:
        return "int"


@dataclass(frozen=True)
class MultiHash(Op):
    """`num_hashes` ids per value: XXH64 with seeds seed, seed + 1, ..."""

    num_hashes: int = bounded(ge=1, le=64)
    seed: int = bounded(0, ge=-(2 ** 63), lt=U64)
    name: ClassVar[str] = "multi_hash"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse"})
    reads: ClassVar[FrozenSet[str]] = frozenset({"str", "int", "null"})

    def out_domain(self, domain: str) -> str:
        return "int"


@dataclass(frozen=True)
class Mod(Op):
    """Floor modulo (Python's %): ids in [0, n)."""

    n: int = bounded(ge=1, lt=2 ** 63)
    name: ClassVar[str] = "mod"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse"})
    reads: ClassVar[FrozenSet[str]] = frozenset({"int", "null"})


@dataclass(frozen=True)
class Bucketize(Op):
    """Bucket index of each number: how many boundaries are <= it (numpy searchsorted side='right')."""

    boundaries: Tuple[float, ...] = bounded(allow_inf=True)
    name: ClassVar[str] = "bucketize"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse", "dense", "label"})
    reads: ClassVar[FrozenSet[str]] = NUMERIC

    def _validate(self):
        b = self.boundaries
        _check(len(b) > 0, self.name, f"boundaries must be a non-empty list of numbers, got {b!r}")
        _check(all(x <= y for x, y in zip(b, b[1:])), self.name, f"boundaries must be sorted, got {list(b)}")
        object.__setattr__(self, "boundaries", tuple(float(x) for x in b))

    def out_domain(self, domain: str) -> str:
        return "int"


@dataclass(frozen=True)
class Truncate(Op):
    """Keeps the first (keep='first') or last max_len ids of each row; with pad_value, shorter
    rows are padded to exactly max_len ids (pads go after the kept ids)."""

    max_len: int = bounded(ge=1)
    keep: str = "first"
    pad_value: Optional[int] = bounded(None, ge=-(2 ** 63), lt=2 ** 63)
    name: ClassVar[str] = "truncate"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse"})
    reads: ClassVar[FrozenSet[str]] = frozenset({"int", "null"})
    structural: ClassVar[bool] = True

    def _validate(self):
        _check(self.keep in ("first", "last"), self.name, f"keep must be 'first' or 'last', got {self.keep!r}")


@dataclass(frozen=True)
class Log1p(Op):
    """log(1 + x). Negatives: negative='sign' gives -log1p(-x) (odd, monotone), 'zero' gives 0."""

    negative: str = "sign"
    name: ClassVar[str] = "log1p"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"dense", "label"})
    reads: ClassVar[FrozenSet[str]] = NUMERIC

    def _validate(self):
        _check(self.negative in ("sign", "zero"), self.name,
               f"negative must be 'sign' or 'zero', got {self.negative!r}")

    def out_domain(self, domain: str) -> str:
        return "float"


@dataclass(frozen=True)
class Normalize(Op):
    """(x - mean) / std."""

    mean: float = bounded()
    std: float = bounded(gt=0)
    name: ClassVar[str] = "normalize"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"dense", "label"})
    reads: ClassVar[FrozenSet[str]] = NUMERIC

    def out_domain(self, domain: str) -> str:
        return "float"


@dataclass(frozen=True)
class Clip(Op):
    """Clamps into [min, max] (either bound may be left out); NaN stays NaN."""

    min: Optional[float] = bounded(None, allow_inf=True)
    max: Optional[float] = bounded(None, allow_inf=True)
    name: ClassVar[str] = "clip"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"dense", "label"})
    reads: ClassVar[FrozenSet[str]] = NUMERIC

    def _validate(self):
        _check(self.min is not None or self.max is not None, self.name, "needs min, max or both")
        _check(self.min is None or self.max is None or self.min <= self.max, self.name,
               f"min ({self.min}) must be <= max ({self.max})")

    def out_domain(self, domain: str) -> str:
        return "float"


OPS: Dict[str, Type[Op]] = {cls.name: cls for cls in (FillMissing, Hash, MultiHash, Mod, Bucketize, Truncate, Log1p,
                                                      Normalize, Clip)}


def op_from_dict(d) -> Op:
    """An op from its config form {"op": name, **params}; unknown names or keys raise."""
    if isinstance(d, str):
        d = {"op": d}
    if not isinstance(d, dict) or "op" not in d:
        raise FeatureConfigError(f"an op must be a mapping with an 'op' key, got {d!r}")
    name = d["op"]
    if name not in OPS:
        raise FeatureConfigError(f"unknown op {name!r} (known: {', '.join(sorted(OPS))})")
    cls = OPS[name]
    allowed = [f.name for f in fields(cls)]
    for key in d:
        if key != "op" and key not in allowed:
            raise FeatureConfigError(f"op '{name}': unknown key {key!r} (allowed: {', '.join(allowed) or 'none'})")
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
    if missing:
        raise FeatureConfigError(f"op '{name}': missing key {missing[0]!r}")
    return cls(**{k: v for k, v in d.items() if k != "op"})
