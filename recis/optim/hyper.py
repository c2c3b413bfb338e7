"""What an optimizer hyperparameter may be, by name: one table for the sparse optimizers of
recis.optim and for the dense torch.optim options of a job.

>>> check_options("optim.dense", {"lr": "fast"})
Traceback (most recent call last):
...
TypeError: optim.dense.lr must be a finite number >= 0, got str ('fast')
>>> check_options("SparseAdam", {"betas": (0.9, 1.0)})
Traceback (most recent call last):
...
ValueError: SparseAdam.betas[1] must be a finite number in [0, 1), got 1.0
"""
import inspect
from typing import Any, Dict, Mapping, Optional, Tuple

from recis.config_utils import Range, check_value, is_real

__all__ = ["HYPERPARAMETERS", "check_options"]

_NONNEG = Range(ge=0)
#: name -> (type, rule) of the hyperparameters that recis knows.
HYPERPARAMETERS: Dict[str, Tuple[Any, Range]] = {
    "lr": (float, _NONNEG),
    "lr_decay": (float, _NONNEG),
    "weight_decay": (float, _NONNEG),
    "eps": (float, _NONNEG),
    "initial_accumulator_value": (float, _NONNEG),
    "betas": (Tuple[float, float], Range(ge=0, lt=1)),
    "momentum": (float, _NONNEG),
    "dampening": (float, Range(ge=0, le=1)),
    "beta": (float, _NONNEG),
    "l1": (float, _NONNEG),
    "l2": (float, _NONNEG),
    "lr_power": (float, Range(le=0)),
}


def _from_default(default) -> Optional[Any]:
    """The type an option must have, judged from its constructor default (None: unknown)."""
    if isinstance(default, bool):
        return bool
    if is_real(default):
        return float
    if isinstance(default, tuple) and default and all(is_real(x) for x in default):
        return Tuple[(float,) * len(default)]
    return None


def check_options(where: str, options: Mapping[str, Any], rules: Optional[Mapping[str, Range]] = None,
                  constructor=None) -> None:
    """Checks each option by name, naming `where.name`: a known hyperparameter against its type
    and rule (`rules` overrides a rule for one optimizer); any other option of `constructor`
    against the type of its default (a number default: a finite number; a bool: a bool). With
    `constructor`, a name it does not take is an error."""
    params = None
    if constructor is not None:
        params = {n: p for n, p in inspect.signature(constructor).parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name, value in options.items():
        if params is not None and name not in params:
            known = sorted(n for n in params if n not in ("self", "params", "tables"))
            raise ValueError(f"{where}.{name} is not an option of {getattr(constructor, '__name__', constructor)} "
                             f"(options: {known})")
        if name in HYPERPARAMETERS:
            tp, rule = HYPERPARAMETERS[name]
            check_value(f"{where}.{name}", value, tp, (rules or {}).get(name, rule))
        elif params is not None:
            tp = _from_default(params[name].default)
            if tp is not None:
                check_value(f"{where}.{name}", value, tp)
