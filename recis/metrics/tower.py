"""The `tower` metric: per-example numbers a tower reports (`TowerOutput.values`, e.g. a patch
defect rate, a video reward, whether the category was right), averaged over an evaluation.

Each name's mean is example-weighted: sum of its values / number of examples (or the sum of
`weights`) that reported it. The state holds, per name, the float64 sum of weight * value and
the sum of weights, plus the names themselves (UTF-8 bytes), so ranks that saw different names
still merge: `sync()` adds each name's sums over all ranks, which gives the mean of all the
examples of all ranks.

>>> m = TowerValues()
>>> m.update({"reward": torch.tensor([1.0, 0.0, 0.5]), "correct": torch.tensor([1.0, 1.0, 0.0])})
>>> m.update({"reward": torch.tensor([0.5])})
>>> m.results()
{'correct': 0.6666666666666666, 'reward': 0.5}
>>> TowerValues(names=["reward"]).names
['reward']
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from recis.metrics.base import Metric, UndefinedMetricError
from recis.metrics.inputs import _check_finite, _flat

_SEP = b"\n"


def _encode(names: Sequence[str]) -> torch.Tensor:
    data = _SEP.join(n.encode() for n in names)
    return torch.tensor(list(data), dtype=torch.uint8)


def _decode(tensor: torch.Tensor) -> List[str]:
    data = bytes(tensor.cpu().tolist())
    return [n.decode() for n in data.split(_SEP)] if data else []


class TowerValues(Metric):
    """The mean of each of a tower's per-example values (`TowerOutput.values`) over what it has
    seen. `names`: the names to report (all of them must be reported by the tower in every
    batch); None: every name the tower reports, sorted. `update(values, weights=None)` takes
    name -> [N] numbers (finite) and optional non-negative weights [N].

    `results()` is name -> mean; `compute()` the mean of the one name (an error with several).
    A name with no examples (weight 0) is undefined (NaN, or an error with undefined="raise")."""

    #: the Trainer hands this metric TowerOutput.values, not probabilities or classes.
    tower_values = True

    def __init__(self, names: Optional[Sequence[str]] = None, undefined: str = "nan"):
        if names is not None:
            if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not names:
                raise ValueError(f"TowerValues: names must be a non-empty list of value names (e.g. "
                                 f"['video_reward']), or null for all of them, got {names!r}")
            for n in names:
                if not isinstance(n, str) or not n or "\n" in n:
                    raise ValueError(f"TowerValues: each name must be a non-empty string without a newline, got {n!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"TowerValues: names lists a name twice: {list(names)}")
        self._names: Optional[List[str]] = None if names is None else list(names)
        super().__init__(undefined)

    @property
    def names(self) -> List[str]:
        """The names reported: the configured ones, else those seen so far (sorted)."""
        return list(self._names) if self._names is not None else _decode(self._state["names"])

    def config(self) -> dict:
        return {"names": self._names}

    # ---- updates ----
    def update(self, values: Mapping[str, torch.Tensor], weights=None) -> None:  # type: ignore[override]
        """Adds a batch: name -> values [N] (all of the same N), optional weights [N]."""
        if self._local is not None:
            raise RuntimeError("TowerValues: update() after sync(); call unsync() or reset() first")
        if not isinstance(values, Mapping):
            raise TypeError(f"TowerValues.update takes a mapping name -> [N] values (TowerOutput.values), got "
                            f"{type(values).__name__}")
        if self._names is not None:
            missing = [n for n in self._names if n not in values]
            if missing:
                raise ValueError(f"TowerValues: names {missing} are not among the values reported "
                                 f"({sorted(values)})")
            values = {n: values[n] for n in self._names}
        checked: Dict[str, torch.Tensor] = {}
        n = None
        for name, v in values.items():
            if not isinstance(name, str) or not name or "\n" in name:
                raise ValueError(f"TowerValues: value names must be non-empty strings without a newline, got {name!r}")
            v = _flat(v, f"values[{name!r}]", "TowerValues")
            if v.dtype == torch.bool:
                v = v.to(torch.float64)
            if v.is_complex():
                raise TypeError(f"TowerValues: values[{name!r}] must be real numbers, got dtype {v.dtype}")
            v = v.to(torch.float64)
            _check_finite(v, f"values[{name!r}]", "TowerValues")
            if n is not None and v.numel() != n:
                raise ValueError(f"TowerValues: values[{name!r}] has {v.numel()} values but "
                                 f"values[{next(iter(checked))!r}] has {n}")
            n = v.numel()
            checked[name] = v
        if not checked:
            return
        if weights is None:
            w = None
        else:
            w = _flat(weights, "weights", "TowerValues").to(torch.float64)
            if w.numel() != n:
                raise ValueError(f"TowerValues: weights has {w.numel()} values but the values have {n}")
            _check_finite(w, "weights", "TowerValues")
            if bool((w < 0).any()):
                raise ValueError("TowerValues: weights must be >= 0")
        batch_names = sorted(checked)
        sums = torch.stack([(checked[k] * w.to(checked[k].device)).sum() if w is not None else checked[k].sum()
                            for k in batch_names]).cpu()
        total = float(w.sum()) if w is not None else float(n)
        counts = torch.full((len(batch_names),), total, dtype=torch.float64)
        self._state = self._merge([self._state, {"names": _encode(batch_names), "sums": sums, "weights": counts}])

    def update_batch(self, batch) -> None:
        raise TypeError("TowerValues averages a tower's values: call update(TowerOutput.values), not "
                        "update(preds, labels)")

    def _update(self, batch) -> None:  # pragma: no cover - update() is overridden
        raise TypeError("TowerValues takes update(values)")

    # ---- results ----
    def _means(self) -> Dict[str, Optional[float]]:
        seen = _decode(self._state["names"])
        sums = dict(zip(seen, self._state["sums"].tolist()))
        weights = dict(zip(seen, self._state["weights"].tolist()))
        return {n: (sums[n] / weights[n] if weights.get(n, 0.0) > 0 else None) for n in self.names}

    def results(self) -> Dict[str, float]:
        """name -> mean over the examples seen (NaN, or an error with undefined="raise", for a
        name with none)."""
        out = {}
        for name, mean in self._means().items():
            if mean is None:
                if self.undefined == "raise":
                    raise UndefinedMetricError(f"TowerValues: {name!r} is undefined: no examples reported it")
                mean = math.nan
            out[name] = mean
        return out

    def _value(self):
        means = self._means()
        if len(means) != 1:
            if not means:
                return None, "no tower values seen"
            raise ValueError(f"TowerValues.compute: the tower reports several values {sorted(means)}; use results()")
        mean = next(iter(means.values()))
        return (mean, None) if mean is not None else (None, "no examples")

    # ---- state ----
    def _empty_state(self):
        return {"names": torch.zeros(0, dtype=torch.uint8), "sums": torch.zeros(0, dtype=torch.float64),
                "weights": torch.zeros(0, dtype=torch.float64)}

    def _merge(self, states):
        sums: Dict[str, float] = {}
        weights: Dict[str, float] = {}
        for s in states:
            names = _decode(s["names"])
            for name, total, w in zip(names, s["sums"].cpu().tolist(), s["weights"].cpu().tolist()):
                sums[name] = sums.get(name, 0.0) + total
                weights[name] = weights.get(name, 0.0) + w
        names = sorted(sums)
        return {"names": _encode(names), "sums": torch.tensor([sums[n] for n in names], dtype=torch.float64),
                "weights": torch.tensor([weights[n] for n in names], dtype=torch.float64)}
