"""Row initializers. A new row's values are a pure function of (table seed, id, column).

Each initializer resolves, for a given embedding dim, to one of the C++ generator's kinds:
constant, uniform, normal or truncated normal. Embedding rows have no natural fan-in/fan-out,
so Xavier/Kaiming take them as arguments and default both to the embedding dim.

>>> Uniform(-0.1, 0.1).spec(8)
('uniform', -0.1, 0.1, 0.0)

`init_` fills a dense tensor from the same law, with torch's generator (for a dense twin of a
table, e.g. torchrec's `EmbeddingBagConfig.init_fn`):

>>> w = Uniform(-0.1, 0.1).init_(torch.empty(1000, 8))
>>> bool(w.min() >= -0.1 and w.max() < 0.1)
True
"""
import abc
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from recis.config_utils import bounded, check_types

Spec = Tuple[str, float, float, float]


class Initializer(abc.ABC):
    @abc.abstractmethod
    def spec(self, dim: int) -> Spec:
        """(kind, a, b, c) of the C++ generator for rows of width `dim`."""

    def init_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Fills `tensor` ([rows, dim], in place, under no_grad) with draws from the law of new rows
        of width dim: the same distribution, drawn by torch's generator rather than the
        (seed, id, column) hash that gives a table row its values. Returns `tensor`."""
        kind, a, b, c = self.spec(tensor.shape[-1])
        with torch.no_grad():
            if kind == "constant":
                return tensor.fill_(a)
            if kind == "uniform":
                return tensor.uniform_(a, b)
            if kind == "normal":
                return tensor.normal_(a, b)
            if kind == "truncated_normal":
                return torch.nn.init.trunc_normal_(tensor, a, b, a - c * b, a + c * b)
        raise ValueError(f"{type(self).__name__}: no dense fill for generator kind {kind!r}")


    def __post_init__(self):
        check_types(self, type(self).__name__)


@dataclass(frozen=True)
class Constant(Initializer):
    value: float = bounded(0.0)

    def spec(self, dim: int) -> Spec:
        return ("constant", float(self.value), 0.0, 0.0)


@dataclass(frozen=True)
class Zeros(Initializer):
    def spec(self, dim: int) -> Spec:
        return ("constant", 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Uniform(Initializer):
    low: float = bounded(-0.05)
    high: float = bounded(0.05)

    def __post_init__(self):
        super().__post_init__()
        if not self.low < self.high:
            raise ValueError(f"Uniform needs low < high, got low={self.low}, high={self.high}")

    def spec(self, dim: int) -> Spec:
        return ("uniform", float(self.low), float(self.high), 0.0)


@dataclass(frozen=True)
class Normal(Initializer):
    mean: float = bounded(0.0)
    std: float = bounded(0.01, gt=0)

    def spec(self, dim: int) -> Spec:
        return ("normal", float(self.mean), float(self.std), 0.0)


@dataclass(frozen=True)
class TruncatedNormal(Initializer):
    """Normal resampled outside mean +- `cutoff` std. `std=None` means 1/sqrt(dim)."""

    mean: float = bounded(0.0)
    std: Optional[float] = bounded(None, gt=0)
    cutoff: float = bounded(2.0, gt=0)

    def spec(self, dim: int) -> Spec:
        std = self.std if self.std is not None else 1.0 / math.sqrt(dim)
        return ("truncated_normal", float(self.mean), float(std), float(self.cutoff))


@dataclass(frozen=True)
class _Fans(Initializer):
    gain: float = bounded(1.0, gt=0)
    fan_in: Optional[int] = bounded(None, ge=1)
    fan_out: Optional[int] = bounded(None, ge=1)

    def fans(self, dim: int) -> Tuple[int, int]:
        return (self.fan_in or dim, self.fan_out or dim)


class XavierUniform(_Fans):
    def spec(self, dim: int) -> Spec:
        fi, fo = self.fans(dim)
        bound = self.gain * math.sqrt(6.0 / (fi + fo))
        return ("uniform", -bound, bound, 0.0)


class XavierNormal(_Fans):
    def spec(self, dim: int) -> Spec:
        fi, fo = self.fans(dim)
        return ("normal", 0.0, self.gain * math.sqrt(2.0 / (fi + fo)), 0.0)


class KaimingUniform(_Fans):
    """He initialization (fan-in mode); use gain=sqrt(2) for ReLU."""

    def spec(self, dim: int) -> Spec:
        bound = self.gain * math.sqrt(3.0 / self.fans(dim)[0])
        return ("uniform", -bound, bound, 0.0)


class KaimingNormal(_Fans):
    def spec(self, dim: int) -> Spec:
        return ("normal", 0.0, self.gain / math.sqrt(self.fans(dim)[0]), 0.0)


_BY_NAME = {
    "zeros": Zeros, "constant": Constant, "uniform": Uniform, "normal": Normal,
    "truncated_normal": TruncatedNormal, "xavier_uniform": XavierUniform, "xavier_normal": XavierNormal,
    "kaiming_uniform": KaimingUniform, "kaiming_normal": KaimingNormal,
}


def resolve_initializer(init) -> Initializer:
    """Accepts an Initializer, a name such as "xavier_uniform", a mapping {"name": ..., **arguments}
    (as in YAML configs), or None (truncated normal)."""
    if init is None:
        return TruncatedNormal()
    if isinstance(init, Initializer):
        return init
    if isinstance(init, str) and init in _BY_NAME:
        return _BY_NAME[init]()
    if isinstance(init, dict) and init.get("name") in _BY_NAME:
        args = {k: v for k, v in init.items() if k != "name"}
        try:
            return _BY_NAME[init["name"]](**args)
        except TypeError as e:
            raise ValueError(f"initializer {init!r}: {e}") from None
    raise ValueError(f"unknown initializer {init!r}; use one of {sorted(_BY_NAME)} or an Initializer instance")
