"""The online CTR experiment: one prequential job per head optimizer on the same MovieLens stream.

Every contestant is the same YAML-style job (`job_config`): the stream's window files in replay
order (an `ArrowDataset` without shuffling reads them front to back), the movielens features,
the `online_logistic` tower, row-wise Adagrad on the tables, and the contestant's optimizer on the
head through an `optim.params` rule (`match: "head.*"`); the Trainer scores every batch before
the update on it (`trainer.prequential`). Nothing here trains or scores by itself: the results
are the Trainer's prequential logs and `prequential_history` (one entry per window of
`window` examples).

"After the shift" means the prequential windows that start at or after the stream's shift row
(the window that straddles it is in neither part). Its logloss is the example-weighted mean of
those windows' loglosses (exact: log loss is a mean); its AUC is the mean of their windowed AUCs
(AUC does not add over windows; this is a mean of per-window AUCs, not one AUC over the span).
Recovery: the windowed AUC of each of the first `first` windows after the shift, against the
mean of the last `first` windows before it.

>>> h = [{"window": i + 1, "examples": 10 * (i + 1), "step": i, "logloss": 0.4 + 0.1 * i,
...       "auc": 0.5 if i >= 2 else 0.7} for i in range(5)]
>>> s = shift_summary(h, shift_row=15, window=10, first=2)   # window 2 (rows 10..19) straddles the shift
>>> s["auc_first_windows"], round(s["preq_logloss_after"], 4), s["auc_before"], s["windows_after"]
([0.5, 0.5], 0.7, 0.7, 3)
"""
import itertools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from recis.datasets import movielens
from recis.train.hooks import Hook

__all__ = ["HEAD_MATCH", "TOWER", "ensure_registered", "job_config", "HeadNorm", "OnlineRun", "run_online",
           "shift_summary", "grid", "select_on_validation", "mean_spread"]

TOWER = "online_logistic"
HEAD_MATCH = "head.*"


def ensure_registered() -> None:
    """Registers the `online_logistic` tower in this process when its entry point is not
    installed (a checkout whose plugin was installed before the tower existed). The online
    optimizers (bogd_ip, ...) are found through their entry points only: install the plugin
    (`make install`)."""
    from recis.towers import available_towers, register_tower
    from recis_online.ctr.model import OnlineLogisticTower

    if TOWER not in available_towers():
        register_tower(TOWER, OnlineLogisticTower)


def job_config(files: Sequence[str], head_optimizer: Mapping[str, Any], *, seed: int = 0, batch_size: int = 256,
               window: int = 5000, embedding_dim: int = 8, sparse_lr: float = 0.05,
               log_dir: Optional[str] = None, max_steps: Optional[int] = None, log_every: int = 50) -> Dict[str, Any]:
    """The job (a `recis.run.RunConfig` mapping) of one contestant: `head_optimizer` is an
    optimizer spec ({name: ..., options...}) for the head's parameters."""
    return {
        "data": {"train": list(files), "batch_size": batch_size, "shuffle_buffer": 0},
        "features": movielens.feature_config(),
        "model": {"name": TOWER, "embedding_dim": embedding_dim, "seed": seed},
        "optim": {"sparse": {"name": "rowwise_adagrad", "lr": sparse_lr},
                  "params": [{"match": HEAD_MATCH, "optimizer": dict(head_optimizer)}]},
        "trainer": {"prequential": True, "prequential_window": window, "seed": seed, "progress": False,
                    "log_every": log_every, "log_dir": log_dir, "max_steps": max_steps},
        "metrics": {"auc": {}, "logloss": {}},
    }


class HeadNorm(Hook):
    """Records the largest l1 norm of each head parameter (by name) over the steps: the online
    optimizers constrain each parameter to its own copy of the set (recis_online.oco.optim)."""

    def __init__(self, named_params: Mapping[str, torch.nn.Parameter]):
        self.params = dict(named_params)
        self.max_l1 = self.l1()

    def l1(self) -> Dict[str, float]:
        return {n: float(p.detach().double().abs().sum()) for n, p in self.params.items()}

    def on_step_end(self, trainer, step, logs):
        self.max_l1 = {n: max(self.max_l1[n], v) for n, v in self.l1().items()}


@dataclass
class OnlineRun:
    """What one prequential job gave: its cumulative prequential logs (`preq_*`), the windows,
    its throughput and the head's largest l1 norm."""

    logs: Dict[str, float]
    history: List[Dict[str, float]]
    examples: int
    seconds: float
    head_max_l1: Dict[str, float]
    summary: Dict[str, Any] = field(default_factory=dict)

    @property
    def examples_per_s(self) -> float:
        return self.examples / max(self.seconds, 1e-9)


def run_online(files: Sequence[str], head_optimizer: Mapping[str, Any], *, shift_row: Optional[int] = None,
               first: int = 5, **options) -> OnlineRun:
    """Builds and trains the job of `job_config(files, head_optimizer, **options)`; summarizes
    the shift (`shift_summary`) when `shift_row` is given."""
    from recis.run import Job, RunConfig

    job = Job(RunConfig.from_dict(job_config(files, head_optimizer, **options)))
    norm = HeadNorm({f"head.{n}": p for n, p in job.model.head.named_parameters()})
    job.trainer.hooks.append(norm)
    t0 = time.perf_counter()
    job.trainer.fit(job.train_data)
    seconds = time.perf_counter() - t0
    trainer = job.trainer
    logs = {k: float(v) for k, v in trainer.prequential.logs().items()}
    run = OnlineRun(logs, [dict(h) for h in trainer.prequential_history], trainer.examples, seconds, norm.max_l1)
    if shift_row is not None:
        run.summary = shift_summary(run.history, shift_row, options.get("window", 5000), first)
    return run


def shift_summary(history: Sequence[Mapping[str, float]], shift_row: int, window: int, first: int = 5
                  ) -> Dict[str, Any]:
    """Metrics of the windows before and after `shift_row` (see the module docstring). Each entry
    of `history` is a complete window of `window` examples; its `examples` counts the examples
    scored up to its end (the Trainer's `prequential_history`)."""
    ends = [int(h["examples"]) for h in history]
    after = [h for h, end in zip(history, ends) if end - window >= shift_row]
    before = [h for h, end in zip(history, ends) if end <= shift_row]
    if not after or not before:
        raise ValueError(f"shift_summary: the shift at row {shift_row} leaves {len(before)} complete windows "
                         f"before and {len(after)} after it (window {window}); use a longer stream or smaller windows")

    def mean(xs):
        xs = [x for x in xs if not math.isnan(x)]
        return sum(xs) / len(xs) if xs else float("nan")

    return {
        "preq_auc_after": mean([h["auc"] for h in after]),
        "preq_logloss_after": mean([h["logloss"] for h in after]),  # equal windows: the mean over their examples
        "auc_first_windows": [h["auc"] for h in after[:first]],
        "auc_first_mean": mean([h["auc"] for h in after[:first]]),
        "auc_before": mean([h["auc"] for h in before[-first:]]),
        "windows_after": len(after),
    }


def grid(base: Mapping[str, Any], values: Mapping[str, Sequence[Any]]) -> List[Dict[str, Any]]:
    """Every optimizer spec of `base` with one value per option of `values` (their product, in order).

    >>> grid({"name": "sgd"}, {"lr": [0.1, 1.0]})
    [{'name': 'sgd', 'lr': 0.1}, {'name': 'sgd', 'lr': 1.0}]
    """
    keys = list(values)
    return [{**base, **dict(zip(keys, combo))} for combo in itertools.product(*(values[k] for k in keys))]


def select_on_validation(files: Sequence[str], specs: Sequence[Mapping[str, Any]], *, criterion: str = "preq_logloss",
                         report: Optional[Callable[[Mapping[str, Any], "OnlineRun"], None]] = None,
                         **options) -> tuple:
    """(the spec with the lowest cumulative prequential `criterion` on `files`, [(spec, logs) of every
    spec]): each spec is a head optimizer, trained by `run_online(files, spec, **options)`;
    `report(spec, run)` is called after each."""
    tried = []
    for spec in specs:
        run = run_online(files, spec, **options)
        if report is not None:
            report(spec, run)
        if criterion not in run.logs:
            raise ValueError(f"select_on_validation: criterion {criterion!r} is not a prequential log "
                             f"({sorted(run.logs)})")
        tried.append((dict(spec), run.logs))
    best = min(tried, key=lambda t: (math.isnan(t[1][criterion]), t[1][criterion]))
    return best[0], tried


def mean_spread(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and range of `values`.

    >>> mean_spread([1.0, 2.0, 3.0])
    {'mean': 2.0, 'std': 1.0, 'min': 1.0, 'max': 3.0}
    """
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}
