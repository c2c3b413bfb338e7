"""Hooks for testing that a job resumes exactly: stop it at a step as a crash would, and record
what it logged.

A resumability test runs a job uninterrupted, runs it again with `KillAt(n)` in its hooks (the
process "dies" at the end of optimizer step n: nothing after it is saved), resumes the second
from its last checkpoint, and compares the two (parameters, logs, metrics).

>>> from types import SimpleNamespace
>>> kill, logs = KillAt(2), StepLogs()
>>> for step in (1, 2):
...     logs.on_step_end(None, step, {"loss": 0.5 / step})
...     try:
...         kill.on_step_end(None, step, {})
...     except Killed as e:
...         print("killed at step", e.step)
killed at step 2
>>> logs.logs
[{'loss': 0.5}, {'loss': 0.25}]
"""
from typing import Dict, List

import torch

from recis.train.hooks import Hook

__all__ = ["Killed", "KillAt", "StepLogs", "assert_bitwise_equal", "sorted_export"]


class Killed(Exception):
    """Raised by `KillAt`: stands for a process that died; `step` is where."""

    def __init__(self, step: int):
        super().__init__(f"killed at the end of optimizer step {step}")
        self.step = step


class KillAt(Hook):
    """Raises `Killed` at the end of optimizer step `step` (before anything later is saved)."""

    def __init__(self, step: int):
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"KillAt step must be an integer >= 1, got {step!r}")
        self.step = step

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            raise Killed(step)


class StepLogs(Hook):
    """Keeps a copy of every step's logs, in order (`logs`)."""

    def __init__(self):
        self.logs: List[Dict] = []

    def on_step_end(self, trainer, step, logs):
        self.logs.append(dict(logs))


def assert_bitwise_equal(x, y, path: str = "state") -> None:
    """Asserts that two nested states (dicts, lists and tuples of tensors and plain values, such as
    state_dicts) are equal bit for bit: same keys, same lengths, tensors of the same dtype and
    shape with equal elements. The assertion names the first path that differs.

    >>> assert_bitwise_equal({"w": torch.ones(2), "step": 3}, {"w": torch.ones(2), "step": 3})
    >>> assert_bitwise_equal({"w": [torch.ones(2)]}, {"w": [torch.zeros(2)]})
    Traceback (most recent call last):
    ...
    AssertionError: state.w[0]...
    """
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape, path
        assert torch.equal(x, y), path
    elif isinstance(x, dict):
        assert isinstance(y, dict) and set(x) == set(y), (path, set(x) ^ set(y) if isinstance(y, dict) else y)
        for k in x:
            assert_bitwise_equal(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            assert_bitwise_equal(u, v, f"{path}[{i}]")
    else:
        assert x == y, (path, x, y)


def sorted_export(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A table's `export()` with its entries sorted by id, so that two exports (of two backends,
    or of a table before and after a reload) compare tensor by tensor.

    >>> sorted_export({"ids": torch.tensor([3, 1]), "rows": torch.tensor([[3.0], [1.0]])})["rows"].flatten()
    tensor([1., 3.])
    """
    order = torch.argsort(state["ids"])
    return {k: v[order] for k, v in state.items()}
