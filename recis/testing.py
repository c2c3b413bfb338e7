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

from recis.train.hooks import Hook

__all__ = ["Killed", "KillAt", "StepLogs"]


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
