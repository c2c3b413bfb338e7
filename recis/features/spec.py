"""Declarative feature specs and their YAML / JSON / dict config.

A feature is a named chain of ops over one column (or, for sparse features, over a cross of
columns and features). Kinds: 'sparse' (a KeyedJaggedTensor key), 'dense' (a column of the
dense float tensor), 'label', 'passthrough' (the Arrow column as is, e.g. text for a tower),
'image' (PNG / JPEG bytes decoded to a float32 [B, C, H, W] tensor, options in `image:`) and
'tensor' (a fixed-size list column as a float32 [B, *shape] tensor); the last two land in
`Batch.tensors`.

>>> spec = FeatureSpec.from_dict({"name": "user", "kind": "sparse", "column": "user_id",
...                               "ops": [{"op": "hash"}, {"op": "mod", "n": 100}]})
>>> spec.ops
(Hash(seed=0), Mod(n=100))
>>> spec.to_dict()
{'name': 'user', 'kind': 'sparse', 'column': 'user_id', 'ops': [{'op': 'hash'}, {'op': 'mod', 'n': 100}]}
>>> FeatureSpec.from_dict({"name": "x", "kind": "dense", "column": "x", "ops": [{"op": "hash"}]})
Traceback (most recent call last):
...
recis.features.ops.FeatureConfigError: feature 'x': op 'hash' is not allowed in a dense feature (allowed: bucketize, clip, fill_missing, log1p, normalize)
>>> FeatureSpec.from_dict({"name": "img", "kind": "image", "column": "png",
...                        "image": {"channels": 1, "size": [28, 28]}}).to_dict()
{'name': 'img', 'kind': 'image', 'column': 'png', 'image': {'channels': 1, 'size': [28, 28]}}
>>> FeatureSpec.from_dict({"name": "frames", "kind": "tensor", "column": "f", "shape": [4, 0]})
Traceback (most recent call last):
...
recis.features.ops.FeatureConfigError: feature 'frames': shape[1] must be an integer in [1, 2147483648), got 0
"""
import json
import os
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

from recis.config_utils import bounded, check_types
from recis.features.media import ImageOptions
from recis.features.ops import OPS, FeatureConfigError, FillMissing, Op, op_from_dict

__all__ = ["KINDS", "TENSOR_KINDS", "NAN_MODES", "CrossInput", "FeatureSpec", "load_specs", "check_specs", "specs_to_config"]

KINDS = ("sparse", "dense", "label", "passthrough", "image", "tensor")
#: Kinds whose output is a float32 tensor in `Batch.tensors` (no ops, one column).
TENSOR_KINDS = ("image", "tensor")
#: What a non-finite value (NaN, +inf, -inf) in a dense or label feature's column does: raise an
#: error naming the feature, column and row; become a null (then the fill_missing value); or flow on.
NAN_MODES = ("error", "fill", "keep")


@dataclass(frozen=True)
class CrossInput:
    """One input of a cross: a feature's output ids or a raw column (hashed with seed 0).

    source='auto' means the sparse feature of that name if there is one, else the column."""

    name: str
    source: str = "auto"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise FeatureConfigError(f"a cross input must be a non-empty name, got {self.name!r}")
        if self.source not in ("auto", "column", "feature"):
            raise FeatureConfigError(f"cross input {self.name!r}: source must be auto, column or feature, "
                                     f"got {self.source!r}")

    @classmethod
    def parse(cls, item) -> "CrossInput":
        if isinstance(item, CrossInput):
            return item
        if isinstance(item, str):
            return cls(item)
        if isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ("column", "feature"):
            source, name = next(iter(item.items()))
            return cls(name, source)
        raise FeatureConfigError(f"a cross input is a name, {{column: name}} or {{feature: name}}, got {item!r}")

    def to_config(self):
        return self.name if self.source == "auto" else {self.source: self.name}


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name, kind, source (column or cross) and op chain, validated."""

    name: str
    kind: str
    column: Optional[str] = None
    cross: Optional[Tuple[CrossInput, ...]] = None
    ops: Tuple[Op, ...] = ()
    cross_cap: int = bounded(256, ge=1, lt=2 ** 64)  # most ids a row's cross may produce (the product is cut)
    cross_seed: int = bounded(0, ge=0, lt=2 ** 64)
    nan: str = "error"  # dense and label: what a non-finite input value (NaN, +/-inf) does
    image: Optional[ImageOptions] = None  # image: decoding options (default: ImageOptions())
    shape: Optional[Tuple[int, ...]] = bounded(None, ge=1, lt=2 ** 31)  # tensor: the per-row shape

    def __post_init__(self):
        where = f"feature {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise FeatureConfigError(f"a feature needs a non-empty string name, got {self.name!r}")
        if self.kind not in KINDS:
            raise FeatureConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.column is not None and (not isinstance(self.column, str) or not self.column):
            raise FeatureConfigError(f"{where}: column must be a non-empty string, got {self.column!r}")
        if isinstance(self.image, dict):
            object.__setattr__(self, "image", _wrap(where, ImageOptions.from_dict, self.image))
        check_types(self, where, sep=": ", error=FeatureConfigError)
        self._check_tensor_kinds(where)
        if self.cross is not None:
            if self.kind != "sparse":
                raise FeatureConfigError(f"{where}: only sparse features can cross, this one is {self.kind}")
            if not isinstance(self.cross, (list, tuple)) or len(self.cross) < 2:
                raise FeatureConfigError(f"{where}: cross needs a list of at least 2 inputs, got {self.cross!r}")
            if len(self.cross) > 16:
                raise FeatureConfigError(f"{where}: cross takes at most 16 inputs, got {len(self.cross)}")
            object.__setattr__(self, "cross", tuple(_wrap(where, CrossInput.parse, c) for c in self.cross))
        if (self.column is None) == (self.cross is None):
            raise FeatureConfigError(f"{where}: give exactly one of column and cross")
        ops = tuple(_wrap(where, op_from_dict, o) if not isinstance(o, Op) else o for o in self.ops)
        for o in ops:
            if self.kind not in o.kinds:
                allowed = sorted(n for n, cls in OPS.items() if self.kind in cls.kinds)
                article = "an" if self.kind == "image" else "a"
                raise FeatureConfigError(f"{where}: op '{o.name}' is not allowed in {article} {self.kind} feature "
                                         f"(allowed: {', '.join(allowed) or 'none'})")
        object.__setattr__(self, "ops", ops)
        if self.nan not in NAN_MODES:
            raise FeatureConfigError(f"{where}: nan must be one of {', '.join(NAN_MODES)}, got {self.nan!r}")
        if self.nan != "error" and self.kind not in ("dense", "label"):
            raise FeatureConfigError(f"{where}: nan applies to dense and label features, this one is {self.kind}")
        if self.nan == "fill" and not any(isinstance(o, FillMissing) for o in ops):
            raise FeatureConfigError(f"{where}: nan: fill needs a fill_missing op (its value replaces NaN and "
                                     "+/-inf, as it replaces nulls)")

    def _check_tensor_kinds(self, where: str):
        if self.image is not None and self.kind != "image":
            raise FeatureConfigError(f"{where}: image options apply to image features, this one is {self.kind}")
        if self.shape is not None and self.kind != "tensor":
            raise FeatureConfigError(f"{where}: shape applies to tensor features, this one is {self.kind}")
        if self.kind not in TENSOR_KINDS:
            return
        if self.column is None or self.cross is not None:
            raise FeatureConfigError(f"{where}: {'an' if self.kind == 'image' else 'a'} {self.kind} feature reads "
                                     "one column: give column (and no cross)")
        if self.kind == "image" and self.image is None:
            object.__setattr__(self, "image", ImageOptions())
        if self.kind == "tensor":
            if self.shape is None or len(self.shape) == 0:
                raise FeatureConfigError(f"{where}: a tensor feature needs shape: [d1, d2, ...] (the shape of one "
                                         f"row; the column holds prod(shape) numbers per row)")
            object.__setattr__(self, "shape", tuple(self.shape))

    @classmethod
    def from_dict(cls, d: Dict) -> "FeatureSpec":
        if not isinstance(d, dict):
            raise FeatureConfigError(f"a feature must be a mapping, got {d!r}")
        name = d.get("name", "?")
        allowed = [f.name for f in fields(cls)]
        for key in d:
            if key not in allowed:
                raise FeatureConfigError(f"feature {name!r}: unknown key {key!r} (allowed: {', '.join(allowed)})")
        for key in ("name", "kind"):
            if key not in d:
                raise FeatureConfigError(f"feature {name!r}: missing key {key!r}")
        return cls(**d)

    def to_dict(self) -> Dict:
        out = {"name": self.name, "kind": self.kind}
        if self.column is not None:
            out["column"] = self.column
        if self.cross is not None:
            out["cross"] = [c.to_config() for c in self.cross]
            if self.cross_cap != 256:
                out["cross_cap"] = self.cross_cap
            if self.cross_seed != 0:
                out["cross_seed"] = self.cross_seed
        if self.ops:
            out["ops"] = [o.to_dict() for o in self.ops]
        if self.nan != "error":
            out["nan"] = self.nan
        if self.image is not None and self.image != ImageOptions():
            out["image"] = self.image.to_dict()
        if self.shape is not None:
            out["shape"] = list(self.shape)
        return out


def _wrap(where: str, fn, arg):
    try:
        return fn(arg)
    except FeatureConfigError as e:
        raise FeatureConfigError(f"{where}: {e}") from None


def check_specs(specs: Sequence[FeatureSpec]) -> None:
    """Cross-feature checks: unique names, cross references that exist, are sparse and do not cycle."""
    by_name: Dict[str, FeatureSpec] = {}
    for s in specs:
        if not isinstance(s, FeatureSpec):
            raise FeatureConfigError(f"expected FeatureSpec objects, got {type(s).__name__}")
        if s.name in by_name:
            raise FeatureConfigError(f"feature {s.name!r} is defined twice")
        by_name[s.name] = s
    for s in specs:
        for c in s.cross or ():
            if c.source == "feature" and c.name not in by_name:
                raise FeatureConfigError(f"feature {s.name!r}: cross input {{feature: {c.name}}} is not a feature")
            target = by_name.get(c.name) if c.source != "column" else None
            if c.source == "feature" and target.kind != "sparse":
                raise FeatureConfigError(f"feature {s.name!r}: cross input {c.name!r} is a {target.kind} feature, "
                                         "only sparse features can be crossed")
    state: Dict[str, int] = {}

    def visit(name: str, path: List[str]):
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise FeatureConfigError(f"crosses form a cycle: {' -> '.join(path + [name])}")
        state[name] = 1
        for c in by_name[name].cross or ():
            if c.source != "column" and c.name in by_name and by_name[c.name].kind == "sparse":
                visit(c.name, path + [name])
        state[name] = 2

    for s in specs:
        visit(s.name, [])


def load_specs(source: Union[str, os.PathLike, Dict, Sequence]) -> List[FeatureSpec]:
    """Feature specs from a YAML / JSON file path, a {"features": [...]} dict or a list of dicts."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".json"):
            source = json.loads(text)
        else:
            import yaml
            source = yaml.safe_load(text)
    if isinstance(source, dict):
        unknown = [k for k in source if k != "features"]
        if unknown:
            raise FeatureConfigError(f"unknown top-level key {unknown[0]!r} in the feature config (allowed: features)")
        if "features" not in source:
            raise FeatureConfigError("the feature config needs a 'features' list")
        source = source["features"]
    if not isinstance(source, (list, tuple)):
        raise FeatureConfigError(f"'features' must be a list of feature mappings, got {type(source).__name__}")
    specs = [s if isinstance(s, FeatureSpec) else FeatureSpec.from_dict(s) for s in source]
    check_specs(specs)
    return specs


def specs_to_config(specs: Sequence[FeatureSpec]) -> Dict:
    """The config dict that load_specs reads back into the same specs."""
    return {"features": [s.to_dict() for s in specs]}
