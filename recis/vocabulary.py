"""The one vocabulary of the table engine: every name the C++ and Triton kernels know by a code.

- `OPTIMIZERS`: each sparse optimizer kind's code, its slot layout (slot names, width per row
  as a function of the embedding dim, initial values) and its hyperparameter layout (the ordered
  names of the `hyper` float list the kernels read); `OPTIM_KINDS` is name -> code.
- `COMBINERS` (None: one output row per value), `LOOKUP_MODES`, `MISSING_MODES`, `INIT_KINDS`,
  `EVICT_POLICIES`: name -> code.

Everything else derives from these: recis._ops, the optimizer classes and registry, the
state-dict slot kind, the Triton kernels. The C++ core exports its own definitions
(`recis._C.vocabulary()`, built from its enums); `check_native` compares them at import and
names the item that differs.

>>> OPTIMIZERS["adam"].slot_width(4), OPTIMIZERS["adam"].hyper
(8, ('lr', 'beta1', 'beta2', 'eps', 'weight_decay', 'step'))
>>> OPTIMIZERS["ftrl"].slot_init(2, {"initial_accumulator_value": 0.1})
[0.0, 0.0, 0.1, 0.1]
>>> OPTIMIZERS["adam"].hyper_values({"lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0}, step=3)
[0.1, 0.9, 0.99, 1e-08, 0.0, 3.0]
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

__all__ = ["Slot", "OptimizerLayout", "OPTIMIZERS", "OPTIM_KINDS", "optimizer_of_code", "COMBINERS", "LOOKUP_MODES",
           "MISSING_MODES", "INIT_KINDS", "EVICT_POLICIES", "VocabularyMismatchError", "check_native"]


@dataclass(frozen=True)
class Slot:
    """One per-row optimizer state: `per_dim` floats wide (one per column) or one float, starting
    at `init`: a number, or the name of the optimizer option that holds it."""
    name: str
    per_dim: bool
    init: Union[float, str] = 0.0


@dataclass(frozen=True)
class OptimizerLayout:
    """A sparse optimizer kind as the kernels see it (csrc/optim/sparse_update.h)."""
    name: str
    code: int
    slots: Tuple[Slot, ...]
    hyper: Tuple[str, ...]

    def slot_width(self, dim: int) -> int:
        """Slot floats per row for embedding dim `dim`."""
        return sum(dim if s.per_dim else 1 for s in self.slots)

    def slot_init(self, dim: int, options: Mapping[str, Any]) -> List[float]:
        """A new row's slots, slot after slot; `options` gives the values named by `Slot.init`."""
        out: List[float] = []
        for s in self.slots:
            out += [float(options[s.init] if isinstance(s.init, str) else s.init)] * (dim if s.per_dim else 1)
        return out

    def hyper_values(self, options: Mapping[str, Any], step: int) -> List[float]:
        """The kernels' `hyper` list from an optimizer's options (a param group) at `step`
        (`beta1`, `beta2` are `betas[0]`, `betas[1]`)."""
        return [float(_HYPER_SOURCES[h](options, step) if h in _HYPER_SOURCES else options[h]) for h in self.hyper]


_HYPER_SOURCES = {"step": lambda o, step: step, "beta1": lambda o, step: o["betas"][0],
                  "beta2": lambda o, step: o["betas"][1]}
_ACCUMULATOR = Slot("sum", per_dim=True, init="initial_accumulator_value")
_ADAM = dict(slots=(Slot("exp_avg", True), Slot("exp_avg_sq", True)),
             hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "step"))

#: name -> layout of every sparse optimizer kind; the code is the kernels' `kind` argument.
OPTIMIZERS: Dict[str, OptimizerLayout] = {o.name: o for o in (
    OptimizerLayout("sgd", 0, slots=(), hyper=("lr", "weight_decay")),
    OptimizerLayout("adagrad", 1, slots=(_ACCUMULATOR,), hyper=("lr", "lr_decay", "weight_decay", "eps", "step")),
    OptimizerLayout("rowwise_adagrad", 2, slots=(Slot("sum", False, "initial_accumulator_value"),),
                    hyper=("lr", "weight_decay", "eps")),
    OptimizerLayout("adam", 3, **_ADAM),
    OptimizerLayout("adamw", 4, **_ADAM),
    OptimizerLayout("ftrl", 5, slots=(Slot("z", True), Slot("n", True, "initial_accumulator_value")),
                    hyper=("lr", "beta", "l1", "l2", "lr_power")),
)}
OPTIM_KINDS: Dict[str, int] = {name: o.code for name, o in OPTIMIZERS.items()}
_BY_CODE = {o.code: o for o in OPTIMIZERS.values()}

#: How a bag's rows combine: pooled by sum or mean, or None (one output row per value).
COMBINERS: Dict[Optional[str], int] = {"sum": 0, "mean": 1, None: 2}
#: A lookup's mode: eval (no inserts, no step), train, train keeping the forward's rows for backward.
LOOKUP_MODES: Dict[str, int] = {"eval": 0, "train": 1, "train_with_grad": 2}
#: What an id without a row reads: zeros, or its initial value (without inserting it).
MISSING_MODES: Dict[str, int] = {"zeros": 0, "init": 1}
#: How a new row is initialized (recis.nn.initializers).
INIT_KINDS: Dict[str, int] = {"constant": 0, "uniform": 1, "normal": 2, "truncated_normal": 3}
#: What a namespace at its capacity does: refuse new ids ("none"), or evict the least frequent ("lfu").
EVICT_POLICIES: Dict[str, int] = {"none": 0, "lfu": 1}
#: Reductions that the C++ and Triton kernels both run in this many lanes (element j into lane
#: j % lanes, then the lanes in order), so that the CPU sum vectorizes and both agree bit for bit.
REDUCTION_LANES: Dict[str, int] = {"rowwise_adagrad": 16}


def optimizer_of_code(code: int) -> OptimizerLayout:
    """The layout of the optimizer kind with `code`."""
    if code not in _BY_CODE:
        raise ValueError(f"unknown optimizer kind code {code}; known: {OPTIM_KINDS}")
    return _BY_CODE[code]


class VocabularyMismatchError(ImportError):
    """The C++ core (recis._C) was built with another vocabulary than this Python package."""


def _python_side() -> Dict[str, Any]:
    """This module's vocabulary in the shape of `recis._C.vocabulary()`."""
    from recis import hashing

    return {
        "optimizers": {o.name: {"code": o.code, "slots_per_dim": sum(s.per_dim for s in o.slots),
                                "slots_per_row": sum(not s.per_dim for s in o.slots), "hyper": o.hyper}
                       for o in OPTIMIZERS.values()},
        "combiners": {("none" if name is None else name): code for name, code in COMBINERS.items()},
        "lookup_modes": LOOKUP_MODES, "missing_modes": MISSING_MODES, "init_kinds": INIT_KINDS,
        "evict_policies": EVICT_POLICIES, "hashing": hashing.CONSTANTS, "reduction_lanes": REDUCTION_LANES,
    }


def _first_difference(path: str, ours, theirs) -> Optional[str]:
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        for key in list(ours) + [k for k in theirs if k not in ours]:
            where = f"{path}[{key!r}]"
            if key not in theirs:
                return f"{where} is {ours[key]!r} in Python but missing in C++"
            if key not in ours:
                return f"{where} is {theirs[key]!r} in C++ but missing in Python"
            found = _first_difference(where, ours[key], theirs[key])
            if found:
                return found
        return None
    if isinstance(ours, (tuple, list)) and isinstance(theirs, (tuple, list)):
        ours, theirs = tuple(ours), tuple(theirs)
    return None if ours == theirs else f"{path} is {ours!r} in Python but {theirs!r} in C++"


def check_native(native: Mapping[str, Any]) -> None:
    """Raises VocabularyMismatchError naming the first item where `native` (recis._C.vocabulary())
    differs from this module."""
    diff = _first_difference("vocabulary", _python_side(), native)
    if diff:
        raise VocabularyMismatchError(f"recis: the C++ core and recis.vocabulary disagree: {diff}; rebuild recis._C "
                                      "from the same checkout (make build)")
