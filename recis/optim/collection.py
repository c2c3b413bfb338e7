"""OptimizerSet: several named optimizers acting as one, e.g. SGD on one layer and Adam on the
rest, given to a Trainer as its one dense optimizer.

`step()` and `zero_grad()` reach each optimizer (in order); `param_groups` lists all their groups
(the first one's LR is the Trainer's `lr_dense` log); `state_dict()` holds each optimizer's full
state under its name, and `load_state_dict` refuses a state whose names differ.

>>> import torch
>>> head, body = torch.nn.Linear(2, 1), torch.nn.Linear(2, 2)
>>> opts = OptimizerSet({"head": torch.optim.SGD(head.parameters(), lr=0.1),
...                      "body": torch.optim.Adam(body.parameters(), lr=0.01)})
>>> head(body(torch.ones(1, 2))).sum().backward()
>>> opts.step(); opts.zero_grad()
>>> list(opts.state_dict()), [g["lr"] for g in opts.param_groups]
(['head', 'body'], [0.1, 0.01])
>>> opts.load_state_dict({"head": opts["head"].state_dict()})
Traceback (most recent call last):
...
ValueError: OptimizerSet.load_state_dict: the state has optimizers ['head'], this set has ['body', 'head'] (missing: ['body'])
"""
from typing import Any, Dict, Iterator, List, Mapping, Tuple

__all__ = ["OptimizerSet"]


class OptimizerSet:
    """Named optimizers (name -> torch.optim.Optimizer, in stepping order) as one optimizer. No
    parameter may be in two of them."""

    def __init__(self, optimizers: Mapping[str, Any]):
        if not isinstance(optimizers, Mapping) or not optimizers:
            raise ValueError(f"OptimizerSet needs a non-empty mapping name -> optimizer, got {optimizers!r}")
        owner: Dict[int, str] = {}
        for name, opt in optimizers.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"OptimizerSet: optimizer names must be non-empty strings, got {name!r}")
            for method in ("step", "zero_grad", "state_dict", "load_state_dict"):
                if not callable(getattr(opt, method, None)):
                    raise TypeError(f"OptimizerSet: {name!r} ({type(opt).__name__}) has no {method}()")
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in owner and owner[id(p)] != name:
                        raise ValueError(f"OptimizerSet: a parameter of shape {tuple(p.shape)} is in both "
                                         f"{owner[id(p)]!r} and {name!r}")
                    owner[id(p)] = name
        self._optimizers: Dict[str, Any] = dict(optimizers)

    def __getitem__(self, name: str):
        return self._optimizers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._optimizers)

    def __len__(self) -> int:
        return len(self._optimizers)

    def items(self) -> List[Tuple[str, Any]]:
        return list(self._optimizers.items())

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        """Every optimizer's param groups, in order (the dicts themselves: setting a group's lr
        sets it in its optimizer)."""
        return [g for opt in self._optimizers.values() for g in opt.param_groups]

    def step(self, closure=None):
        """Steps each optimizer; a closure is evaluated once (by the first), its loss returned."""
        loss = None
        for i, opt in enumerate(self._optimizers.values()):
            out = opt.step(closure if i == 0 else None)
            loss = out if i == 0 else loss
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self._optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        """name -> that optimizer's state_dict() (its full state, as its own class saves it)."""
        return {name: opt.state_dict() for name, opt in self._optimizers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Loads each optimizer's state by name; the names must be exactly this set's."""
        if not isinstance(state, Mapping):
            raise TypeError(f"OptimizerSet.load_state_dict takes name -> state_dict, got {type(state).__name__}")
        if set(state) != set(self._optimizers):
            missing, extra = sorted(set(self._optimizers) - set(state)), sorted(set(state) - set(self._optimizers))
            detail = ", ".join(f"{what}: {names}" for what, names in (("missing", missing), ("unexpected", extra))
                               if names)
            raise ValueError(f"OptimizerSet.load_state_dict: the state has optimizers {sorted(state)}, this set has "
                             f"{sorted(self._optimizers)} ({detail})")
        for name, opt in self._optimizers.items():
            try:
                opt.load_state_dict(state[name])
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                raise type(e)(f"OptimizerSet: optimizer {name!r}: {e}") from None

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}: {type(opt).__name__}" for name, opt in self._optimizers.items())
        return f"OptimizerSet({inner})"
