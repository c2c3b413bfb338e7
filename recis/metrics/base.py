"""The Metric base class: update / compute / reset, merging and reduction across ranks.

A metric's state is a dict of 1-D tensors. `sync()` gathers every rank's state, merges it in
rank order and keeps the local state aside (`unsync()` restores it), as torchmetrics does;
with no process group (one process) it changes nothing.
"""
import abc
import math
from typing import Dict, List

import torch

from recis.metrics.distributed import all_gather_state, check_same_config
from recis.metrics.inputs import Batch

UNDEFINED_MODES = ("nan", "raise")


class UndefinedMetricError(ValueError):
    """The metric has no value for the data seen (e.g. AUC with one class only)."""


class Metric(abc.ABC):
    """Subclasses implement `_check`, `_update`, `_value`, `_empty_state`, `_merge` and `config`."""

    #: True for metrics whose update needs per-example group ids (GAUC).
    needs_groups = False
    #: True for metrics of predicted classes (update(predicted, labels)), not of probabilities.
    multiclass = False

    def __init__(self, undefined: str = "nan"):
        if undefined not in UNDEFINED_MODES:
            raise ValueError(f"{type(self).__name__}: undefined must be 'nan' or 'raise', got {undefined!r}")
        self.undefined = undefined
        self._local = None  # the local state while synced
        self.reset()

    # ---- public API ----
    def update(self, preds, labels, weights=None) -> None:
        """Adds a batch: `preds` [N] (or [N, 1]), `labels` [N], optional non-negative `weights` [N]."""
        self.update_batch(Batch.of(preds, labels, weights, what=type(self).__name__))

    def update_batch(self, batch: Batch) -> None:
        """Adds an already validated `Batch` (what MetricCollection does once for all its metrics)."""
        if self._local is not None:
            raise RuntimeError(f"{type(self).__name__}: update() after sync(); call unsync() or reset() first")
        self._check(batch)
        if len(batch):
            self._update(batch)

    def compute(self) -> float:
        """The metric over everything seen (on every rank after `sync()`), as a Python float.
        Undefined values (no data, one class only, ...) are NaN, or raise UndefinedMetricError
        with `undefined="raise"`."""
        value, reason = self._value()
        if reason is not None:
            if self.undefined == "raise":
                raise UndefinedMetricError(f"{type(self).__name__} is undefined: {reason}")
            return math.nan
        return float(value)

    def reset(self) -> None:
        self._state: Dict[str, torch.Tensor] = self._empty_state()
        self._local = None

    def merge(self, other: "Metric") -> "Metric":
        """Adds `other`'s data to this metric (same type and configuration)."""
        if type(other) is not type(self) or other.config() != self.config():
            raise ValueError(f"cannot merge {type(other).__name__}{other.config()} into "
                             f"{type(self).__name__}{self.config()}")
        self._state = self._merge([self.state(), other.state()])
        return self

    def sync(self, process_group=None) -> "Metric":
        """Replaces the state by the merge of all ranks' states (a collective: every rank of
        `process_group`, default the world, must call it). A no-op in a single process."""
        if self._local is not None:
            raise RuntimeError(f"{type(self).__name__}: already synced; call unsync() first")
        check_same_config(self.config(), type(self).__name__, process_group)
        local = self.state()
        self._state = self._merge(all_gather_state(local, process_group))
        self._local = local
        return self

    def unsync(self) -> "Metric":
        """Restores the local state that `sync()` replaced."""
        if self._local is None:
            raise RuntimeError(f"{type(self).__name__}: unsync() without sync()")
        self._state, self._local = self._local, None
        return self

    def state(self) -> Dict[str, torch.Tensor]:
        """The state as 1-D tensors (compacted); what `sync()` gathers."""
        return dict(self._state)

    def load_state(self, state: Dict[str, torch.Tensor]) -> "Metric":
        """Replaces the state by `state`, a copy of what `state()` returned (e.g. from a
        checkpoint): the metric continues as if it had seen that data itself.

        >>> from recis.metrics import LogLoss
        >>> a, b = LogLoss(), LogLoss()
        >>> a.update(torch.tensor([0.9, 0.2]), torch.tensor([1, 0]))
        >>> b.load_state(a.state()).compute() == a.compute()
        True
        """
        if self._local is not None:
            raise RuntimeError(f"{type(self).__name__}: load_state() while synced; call unsync() first")
        expected = set(self._empty_state())
        if not isinstance(state, dict) or set(state) != expected:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{type(self).__name__}.load_state: expected the keys {sorted(expected)}, got {found}")
        self.reset()
        self._state = {k: torch.as_tensor(v).clone() for k, v in state.items()}
        return self

    def config(self) -> dict:
        """The settings that must agree for two metrics to be merged."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    # ---- subclass hooks ----
    def _check(self, batch: Batch) -> None:
        """Raises on inputs this metric does not accept (e.g. non-binary labels)."""

    @abc.abstractmethod
    def _update(self, batch: Batch) -> None: ...

    @abc.abstractmethod
    def _value(self):
        """(value, None), or (None, reason) when undefined."""

    @abc.abstractmethod
    def _empty_state(self) -> Dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def _merge(self, states: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]: ...


class SumMetric(Metric):
    """A metric whose state is a vector of float64 sums (`_SUMS` names them)."""

    _SUMS: tuple = ()

    def _empty_state(self):
        return {"sums": torch.zeros(len(self._SUMS), dtype=torch.float64)}

    def _add(self, *values: torch.Tensor) -> None:
        sums = self._state["sums"]
        self._state["sums"] = sums.to(values[0].device) + torch.stack([v.to(torch.float64) for v in values])

    def _merge(self, states):
        sums = [s["sums"] for s in states]
        return {"sums": torch.stack([s.to(sums[0].device) for s in sums]).sum(dim=0)}

    def sums(self) -> Dict[str, float]:
        return dict(zip(self._SUMS, self._state["sums"].tolist()))
