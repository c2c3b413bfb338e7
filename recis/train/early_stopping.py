"""Early stopping: the number of training steps chosen on validation data.

`EarlyStopping` watches a score that is higher (mode 'max') or lower ('min') when better: an
evaluation metric of the Trainer (`on_eval_end`, every `trainer.eval_every` steps on its eval
data), or its own `score(model)` measured every `every` optimizer steps (e.g. accuracy on
held-out validation items). After `patience` evaluations without an improvement by more than
`min_delta` it asks the Trainer to stop. With `restore_best`, it keeps a copy of the model's
whole state at the best evaluation (its `state_dict`: parameters, buffers such as batch-norm
statistics, and the hash tables' ids, rows, optimizer slots and statistics) and loads it back
when fit ends, so what is evaluated or saved afterwards is the chosen model, not the last. The
copy costs one model's worth of memory (tables included) and is taken at every improvement: for
large tables, select by checkpoint instead (`Trainer.save` at the best step). `curve` lists
(step, value) of every evaluation; `best`, `best_step` and `stopped` (why training ended) the
outcome.

>>> import torch
>>> from types import SimpleNamespace
>>> model = torch.nn.Linear(1, 1)
>>> scores = iter([0.2, 0.5, 0.4, 0.45])
>>> stop = EarlyStopping(score=lambda m: next(scores), every=10, patience=2, restore_best=True)
>>> trainer = SimpleNamespace(model=model, step=40, request_stop=lambda reason: None)
>>> for step in range(1, 41):
...     stop.on_step_end(trainer, step, {})
>>> stop.curve, stop.best_step, stop.best, stop.stopped
([(10, 0.2), (20, 0.5), (30, 0.4), (40, 0.45)], 20, 0.5, 'early stopping: score did not improve for 2 evaluations')
"""
import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from recis.train.hooks import Hook

__all__ = ["EarlyStopping"]


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class EarlyStopping(Hook):
    """Stops fit when the watched value has not improved by `min_delta` for `patience`
    evaluations (see the module docstring). `metric`: the eval metric watched when no `score` is
    given; `score(model) -> float` with `every`: measured by the hook itself every `every`
    optimizer steps, and once more at fit end for the steps after the last multiple."""

    def __init__(self, metric: str = "auc", patience: int = 3, mode: str = "max", min_delta: float = 0.0, *,
                 score: Optional[Callable[[torch.nn.Module], float]] = None, every: Optional[int] = None,
                 restore_best: bool = False, log: Optional[Callable[[str], None]] = None):
        if mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping mode must be 'max' or 'min', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping patience must be an integer >= 1, got {patience!r}")
        if (score is None) != (every is None):
            raise ValueError("EarlyStopping: give score and every together (a score measured every `every` steps), or "
                             "neither (an eval metric of the Trainer)")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"EarlyStopping every must be an integer >= 1, got {every!r}")
        self.metric = metric if score is None else "score"
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.score, self.every, self.restore_best, self.log = score, every, restore_best, log
        self.best: Optional[float] = None
        self.best_step = 0
        self.bad = 0
        self.curve: List[Tuple[int, float]] = []
        self.stopped: Optional[str] = None
        self._best_state: Optional[Dict[str, Any]] = None

    def _observe(self, trainer, step: int, value: float) -> None:
        self.curve.append((step, value))
        better = self.best is None or (value > self.best + self.min_delta if self.mode == "max"
                                       else value < self.best - self.min_delta)
        if better:
            self.best, self.best_step, self.bad = value, step, 0
            if self.restore_best:
                self._best_state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                                    for k, v in _plain(trainer.model).state_dict().items()}
        else:
            self.bad += 1
            if self.bad >= self.patience and self.stopped is None:
                self.stopped = f"early stopping: {self.metric} did not improve for {self.patience} evaluations"
                trainer.request_stop(self.stopped)
        if self.log is not None:
            self.log(f"step {step}: {self.metric} {value:.4f} (best {self.best:.4f} at step {self.best_step})")

    def on_eval_end(self, trainer, step, metrics):
        if self.score is not None:
            return
        if self.metric not in metrics:
            raise KeyError(f"EarlyStopping watches {self.metric!r}, but evaluation gave {sorted(metrics)}")
        self._observe(trainer, step, float(metrics[self.metric]))

    def on_step_end(self, trainer, step, logs):
        if self.score is not None and step % self.every == 0:
            self._observe(trainer, step, float(self.score(_plain(trainer.model))))

    def on_fit_end(self, trainer):
        step = getattr(trainer, "step", 0)
        if self.score is not None and step and (not self.curve or self.curve[-1][0] != step):
            self._observe(trainer, step, float(self.score(_plain(trainer.model))))
        if self.stopped is None:
            self.stopped = "step budget"
        if self.restore_best:
            self.restore(trainer.model)

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> None:
        """Loads the best evaluation's state back into `model` (tables: exactly the rows they held
        then; rows inserted later are gone)."""
        if self._best_state is None:
            return
        _plain(model).load_state_dict(self._best_state)
