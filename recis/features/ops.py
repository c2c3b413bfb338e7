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
import math
from dataclasses import MISSING, dataclass, fields
from typing import ClassVar, Dict, FrozenSet, Optional, Tuple, Type, Union

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


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _seed(op: str, seed) -> int:
    _check(_is_int(seed) and -(2 ** 63) <= seed < U64, op, f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    return seed


@dataclass(frozen=True)
class Op:
    """Base class. `name` is the op's config name; `kinds` the feature kinds that may use it."""

    name: ClassVar[str] = ""
    kinds: ClassVar[FrozenSet[str]] = frozenset()
    reads: ClassVar[FrozenSet[str]] = ANY
    structural: ClassVar[bool] = False  # changes the rows' lengths: needs materialized ids

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

    value: Union[str, int, float]
    name: ClassVar[str] = "fill_missing"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse", "dense", "label"})

    def __post_init__(self):
        _check(isinstance(self.value, (str, int, float)) and not isinstance(self.value, bool), self.name,
               f"value must be a string or a number, got {self.value!r}")

    def out_domain(self, domain: str) -> str:
        if domain != "null":
            return domain
        return "str" if isinstance(self.value, str) else "int" if _is_int(self.value) else "float"


@dataclass(frozen=True)
class Hash(Op):
    """XXH64 of each string (its bytes) or integer (8 little-endian bytes), seeded: int64 ids."""

    seed: int = 0
    name: ClassVar[str] = "hash"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse"})
    reads: ClassVar[FrozenSet[str]] = frozenset({"str", "int", "null"})

    def __post_init__(self):
        _seed(self.name, self.seed)

    def out_domain(self, domain: str) -> str:
        return "int"


@dataclass(frozen=True)
class MultiHash(Op):
    """`num_hashes` ids per value: XXH64 with seeds seed, seed + 1, ..."""

    num_hashes: int
    seed: int = 0
    name: ClassVar[str] = "multi_hash"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse"})
    reads: ClassVar[FrozenSet[str]] = frozenset({"str", "int", "null"})

    def __post_init__(self):
        _check(_is_int(self.num_hashes) and 1 <= self.num_hashes <= 64, self.name,
               f"num_hashes must be an integer in [1, 64], got {self.num_hashes!r}")
        _seed(self.name, self.seed)

    def out_domain(self, domain: str) -> str:
        return "int"


@dataclass(frozen=True)
class Mod(Op):
    """Floor modulo (Python's %): ids in [0, n)."""

    n: int
    name: ClassVar[str] = "mod"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse"})
    reads: ClassVar[FrozenSet[str]] = frozenset({"int", "null"})

    def __post_init__(self):
        _check(_is_int(self.n) and 1 <= self.n < 2 ** 63, self.name, f"n must be an integer in [1, 2**63), got {self.n!r}")


@dataclass(frozen=True)
class Bucketize(Op):
    """Bucket index of each number: how many boundaries are <= it (numpy searchsorted side='right')."""

    boundaries: Tuple[float, ...]
    name: ClassVar[str] = "bucketize"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse", "dense", "label"})
    reads: ClassVar[FrozenSet[str]] = NUMERIC

    def __post_init__(self):
        b = self.boundaries
        _check(isinstance(b, (list, tuple)) and len(b) > 0 and all(_is_number(x) and not math.isnan(x) for x in b),
               self.name, f"boundaries must be a non-empty list of numbers, got {b!r}")
        _check(all(x <= y for x, y in zip(b, b[1:])), self.name, f"boundaries must be sorted, got {list(b)}")
        object.__setattr__(self, "boundaries", tuple(float(x) for x in b))

    def out_domain(self, domain: str) -> str:
        return "int"


@dataclass(frozen=True)
class Truncate(Op):
    """Keeps the first (keep='first') or last max_len ids of each row; with pad_value, shorter
    rows are padded to exactly max_len ids (pads go after the kept ids)."""

    max_len: int
    keep: str = "first"
    pad_value: Optional[int] = None
    name: ClassVar[str] = "truncate"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"sparse"})
    reads: ClassVar[FrozenSet[str]] = frozenset({"int", "null"})
    structural: ClassVar[bool] = True

    def __post_init__(self):
        _check(_is_int(self.max_len) and self.max_len >= 1, self.name,
               f"max_len must be an integer >= 1, got {self.max_len!r}")
        _check(self.keep in ("first", "last"), self.name, f"keep must be 'first' or 'last', got {self.keep!r}")
        _check(self.pad_value is None or (_is_int(self.pad_value) and -(2 ** 63) <= self.pad_value < 2 ** 63),
               self.name, f"pad_value must be an int64 or null, got {self.pad_value!r}")


@dataclass(frozen=True)
class Log1p(Op):
    """log(1 + x). Negatives: negative='sign' gives -log1p(-x) (odd, monotone), 'zero' gives 0."""

    negative: str = "sign"
    name: ClassVar[str] = "log1p"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"dense", "label"})
    reads: ClassVar[FrozenSet[str]] = NUMERIC

    def __post_init__(self):
        _check(self.negative in ("sign", "zero"), self.name,
               f"negative must be 'sign' or 'zero', got {self.negative!r}")

    def out_domain(self, domain: str) -> str:
        return "float"


@dataclass(frozen=True)
class Normalize(Op):
    """(x - mean) / std."""

    mean: float
    std: float
    name: ClassVar[str] = "normalize"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"dense", "label"})
    reads: ClassVar[FrozenSet[str]] = NUMERIC

    def __post_init__(self):
        _check(_is_number(self.mean) and math.isfinite(self.mean), self.name, f"mean must be finite, got {self.mean!r}")
        _check(_is_number(self.std) and math.isfinite(self.std) and self.std > 0, self.name,
               f"std must be a finite number > 0, got {self.std!r}")

    def out_domain(self, domain: str) -> str:
        return "float"


@dataclass(frozen=True)
class Clip(Op):
    """Clamps into [min, max] (either bound may be left out); NaN stays NaN."""

    min: Optional[float] = None
    max: Optional[float] = None
    name: ClassVar[str] = "clip"
    kinds: ClassVar[FrozenSet[str]] = frozenset({"dense", "label"})
    reads: ClassVar[FrozenSet[str]] = NUMERIC

    def __post_init__(self):
        for key in ("min", "max"):
            v = getattr(self, key)
            _check(v is None or (_is_number(v) and not math.isnan(v)), self.name, f"{key} must be a number, got {v!r}")
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
