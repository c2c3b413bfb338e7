"""The Trainer's log window: loss, throughput and training statistics since the last log line.

Statistics (`TowerOutput.stats`, `RolloutPhase.stats`) are averaged per name over the times
they were reported in the window, so a name that some steps do not report (a rollout's reward,
reported once per rollout) is the mean of the reports it has.

>>> w = LogWindow()
>>> w.add_loss(0.5, rows=4); w.add_loss(1.5, rows=4)
>>> w.add_stats({"kl": 0.25}, "TowerOutput.stats"); w.add_stats({"kl": 0.75, "reward": 1}, "RolloutPhase.stats")
>>> logs = w.read()
>>> logs["loss"], logs["kl"], logs["reward"], w.stat_names
(1.0, 0.5, 1.0, ('kl', 'reward'))
>>> w.add_stats({"loss": 1.0}, "TowerOutput.stats")
Traceback (most recent call last):
...
ValueError: TowerOutput.stats: 'loss' is a name the Trainer logs itself (['examples_per_s', 'loss', 'lr_dense', \
'lr_sparse', 'split', 'step']); rename the statistic
"""
import math
from typing import Any, Dict, List, Mapping, Tuple

import torch

from recis.train.hooks import Throughput
from recis.train.prequential import PREFIX as RESERVED_PREFIX  # the prequential metrics' names

#: Names in the Trainer's own log rows (and the CSV's columns); statistics may not reuse them.
RESERVED = ("examples_per_s", "loss", "lr_dense", "lr_sparse", "split", "step")


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where}: statistic {name!r} must be one number, got a tensor of shape "
                             f"{tuple(value.shape)}")
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.number) and not isinstance(value, np.bool_):
                return float(value)
        except ImportError:  # pragma: no cover
            pass
        raise TypeError(f"{where}: statistic {name!r} must be a number, got {type(value).__name__} ({value!r})")
    return float(value)


class LogWindow:
    """Sums since the last `read()`: loss (per micro-batch), examples (for examples/s), and each
    statistic's sum and count. `micro` counts the micro-batches accumulated for the next step."""

    def __init__(self):
        self._seen: Dict[str, None] = {}  # every statistic reported so far
        self.restart()

    def restart(self) -> None:
        """Drops what the window holds (the names seen stay known)."""
        self.meter = Throughput()
        self.micro = 0
        self._loss, self._losses = 0.0, 0
        self._stats: Dict[str, List[float]] = {}  # name -> [sum, count]

    def add_loss(self, loss: float, rows: int = 0) -> None:
        self._loss += loss
        self._losses += 1
        self.meter.add(rows)

    def add_stats(self, stats: Mapping[str, Any], where: str) -> None:
        """Adds one report of each statistic in `stats` (name -> number or one-element tensor)."""
        if not isinstance(stats, Mapping):
            raise TypeError(f"{where} must be a mapping name -> number, got {type(stats).__name__}")
        values = {}
        for name, value in stats.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"{where}: statistic names must be non-empty strings, got {name!r}")
            if name in RESERVED:
                raise ValueError(f"{where}: {name!r} is a name the Trainer logs itself ({sorted(RESERVED)}); "
                                 "rename the statistic")
            if name.startswith(RESERVED_PREFIX):
                raise ValueError(f"{where}: {name!r} starts with {RESERVED_PREFIX!r}, the prefix of the Trainer's "
                                 "prequential metrics; rename the statistic")
            values[name] = _number(value, name, where)
        for name, value in values.items():
            acc = self._stats.setdefault(name, [0.0, 0])
            acc[0] += value
            acc[1] += 1
            self._seen.setdefault(name, None)

    @property
    def stat_names(self) -> Tuple[str, ...]:
        """Every statistic reported so far (in this window or before), sorted."""
        return tuple(sorted(self._seen))

    def read(self, env=None) -> Dict[str, float]:
        """{loss, examples_per_s, statistic means} of the window, which starts afresh. Under
        torch.distributed (`env`), statistics are averaged over every rank's reports (a
        collective: all ranks read at the same step)."""
        stats = {k: tuple(v) for k, v in self._stats.items()}
        if env is not None and env.distributed:
            merged: Dict[str, List[float]] = {}
            for part in env.all_gather_object(stats, what="training statistics"):
                for name, (total, count) in part.items():
                    acc = merged.setdefault(name, [0.0, 0])
                    acc[0] += total
                    acc[1] += count
                    self._seen.setdefault(name, None)
            stats = {k: tuple(v) for k, v in merged.items()}
        out = {"loss": self._loss / self._losses if self._losses else math.nan, "examples_per_s": self.meter.read()}
        for name in sorted(stats):
            total, count = stats[name]
            out[name] = total / count
        self._loss, self._losses, self._stats = 0.0, 0, {}
        return out
